"""Baseline-specific behaviour, checked against slow, obviously-correct references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp

from lmrec.models.itemknn import (
    ItemKNNParams,
    ItemKNNRecommender,
    item_blocks,
    keep_top_neighbors,
    top_neighbors,
)
from lmrec.models.mf import MFParams, MFRecommender
from lmrec.models.popularity import PopularityRecommender

from .conftest import Planted, make_split

# 5 users, 7 items; item 6 is cold, item 0 is seen twice by user 0 (counts once in KNN).
TINY_TRAIN = [[0, 1, 2, 0], [1, 2, 3], [0, 3, 4], [2, 4, 5, 1], [5, 0]]


def tiny_split():
    return make_split(TINY_TRAIN, n_items=7, cold_items=[6])


def slow_cosine(train: list[list[int]], n_items: int) -> np.ndarray:
    """Cosine of item user-sets, pair by pair, zero diagonal."""
    users_of = [{u for u, seq in enumerate(train) if i in seq} for i in range(n_items)]
    sim = np.zeros((n_items, n_items))
    for i in range(n_items):
        for j in range(n_items):
            if i != j and users_of[i] and users_of[j]:
                both = len(users_of[i] & users_of[j])
                sim[i, j] = both / math.sqrt(len(users_of[i]) * len(users_of[j]))
    return sim


def test_itemknn_similarity_matches_slow_reference() -> None:
    model = ItemKNNRecommender(ItemKNNParams(neighbors=100)).fit(tiny_split())
    expected = slow_cosine(TINY_TRAIN, 7)
    np.testing.assert_allclose(model.similarity.toarray(), expected, rtol=1e-6)
    assert not expected[6].any() and not expected[:, 6].any(), "cold item has no neighbours"


def test_itemknn_scores_sum_similarities_of_distinct_history_items() -> None:
    model = ItemKNNRecommender(ItemKNNParams(neighbors=100)).fit(tiny_split())
    sim = slow_cosine(TINY_TRAIN, 7)
    history = np.array([0, 3, 0])
    np.testing.assert_allclose(model.score([history])[0], sim[0] + sim[3], rtol=1e-6)
    assert model.score([np.array([], dtype=np.int64)])[0].tolist() == [0.0] * 7


@pytest.mark.parametrize("neighbors", [1, 2, 3])
def test_itemknn_keeps_each_rows_largest_similarities(neighbors: int) -> None:
    full = ItemKNNRecommender(ItemKNNParams(neighbors=100)).fit(tiny_split()).similarity
    kept = ItemKNNRecommender(ItemKNNParams(neighbors=neighbors)).fit(tiny_split()).similarity
    full, kept = full.toarray(), kept.toarray()
    for row in range(7):
        nonzero = np.flatnonzero(full[row])
        kept_cols = np.flatnonzero(kept[row])
        assert len(kept_cols) == min(neighbors, len(nonzero))
        np.testing.assert_array_equal(kept[row, kept_cols], full[row, kept_cols])
        dropped = np.setdiff1d(nonzero, kept_cols)
        if len(dropped):
            assert full[row, kept_cols].min() >= full[row, dropped].max()


def test_keep_top_neighbors_breaks_ties_by_lower_index() -> None:
    sim = sp.csr_matrix(np.array([[0.0, 0.5, 0.5, 0.5], [0.2, 0.0, 0.9, 0.2], [0] * 4, [0] * 4]))
    kept = keep_top_neighbors(sim, 2).toarray()
    np.testing.assert_array_equal(kept[0], [0, 0.5, 0.5, 0])
    np.testing.assert_array_equal(kept[1], np.array([0.2, 0, 0.9, 0], dtype=np.float32))


def test_itemknn_rejects_bad_neighbors() -> None:
    with pytest.raises(ValueError, match="neighbors"):
        ItemKNNParams(neighbors=0)


def test_popularity_counts_equal_training_counts() -> None:
    split = tiny_split()
    model = PopularityRecommender().fit(split)
    np.testing.assert_array_equal(model.counts, split.items["n_train"].to_numpy())


def test_mf_same_seed_same_model_other_seed_differs(planted: Planted) -> None:
    params = MFParams(factors=8, iterations=3, seed=11)
    a = MFRecommender(params).fit(planted.split)
    b = MFRecommender(params).fit(planted.split)
    c = MFRecommender(MFParams(factors=8, iterations=3, seed=12)).fit(planted.split)
    np.testing.assert_array_equal(a.item_factors, b.item_factors)
    assert not np.allclose(a.item_factors, c.item_factors)


def test_mf_cold_items_have_zero_factors(planted: Planted) -> None:
    model = MFRecommender(MFParams(factors=8, iterations=3)).fit(planted.split)
    assert not model.item_factors[planted.cold_items].any()
    scores = model.score([planted.groups[0][:3]])[0]
    assert np.isfinite(scores).all() and not scores[planted.cold_items].any()


def test_mf_fold_in_matches_dense_least_squares(planted: Planted) -> None:
    params = MFParams(factors=8, iterations=3, regularization=0.3, alpha=5.0)
    model = MFRecommender(params).fit(planted.split)
    history = np.array([*planted.groups[1][:4], planted.groups[1][0]])
    y = model.item_factors.astype(np.float64)
    counts = np.bincount(history, minlength=len(y)).astype(np.float64)
    confidence = 1.0 + params.alpha * counts
    preference = (counts > 0).astype(np.float64)
    lhs = y.T @ (confidence[:, None] * y) + params.regularization * np.eye(params.factors)
    user = np.linalg.solve(lhs, y.T @ (confidence * preference))
    np.testing.assert_allclose(model.user_factors([history])[0], user, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(model.score([history])[0], y @ user, rtol=1e-5, atol=1e-6)


def test_mf_empty_history_scores_zero(planted: Planted) -> None:
    model = MFRecommender(MFParams(factors=8, iterations=2)).fit(planted.split)
    assert not model.score([np.zeros(0, dtype=np.int64)]).any()


@pytest.mark.parametrize(
    "bad", [{"factors": 0}, {"iterations": 0}, {"regularization": 0.0}, {"alpha": -1.0}]
)
def test_mf_rejects_bad_params(bad: dict) -> None:
    with pytest.raises(ValueError, match="mf"):
        MFParams(**bad)


def dense_itemknn(user_items: np.ndarray, neighbors: int) -> np.ndarray:
    """The dense items x items reference: exact cosine, zero diagonal, top-k per row."""
    binary = (user_items > 0).astype(np.float64)
    both = binary.T @ binary
    n_users_of = binary.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        sim = np.where(both > 0, both / np.sqrt(np.outer(n_users_of, n_users_of)), 0.0)
    np.fill_diagonal(sim, 0.0)
    kept = np.zeros_like(sim)
    for row in range(len(sim)):
        nonzero = np.flatnonzero(sim[row])
        best = nonzero[np.argsort(-sim[row, nonzero], kind="stable")[:neighbors]]
        kept[row, best] = sim[row, best]
    return kept.astype(np.float32)


@pytest.mark.parametrize(("neighbors", "block_entries"), [(5, 1), (5, 500), (40, 1 << 23)])
def test_sparse_itemknn_equals_the_dense_one(neighbors: int, block_entries: int) -> None:
    rng = np.random.default_rng(3)
    n_users, n_items = 300, 80
    train = [
        rng.choice(n_items - 5, size=rng.integers(1, 15)).tolist()  # last 5 cold
        for _ in range(n_users)
    ]
    split = make_split(train, n_items=n_items, cold_items=list(range(n_items - 5, n_items)))
    users, items = split.train_pairs()
    matrix = sp.csr_matrix((np.ones(len(items)), (users, items)), shape=(n_users, n_items))
    blocks = item_blocks(matrix.T @ np.diff(matrix.astype(bool).tocsr().indptr), block_entries)
    assert (len(blocks) > 1) == (block_entries < 1 << 23), blocks[:3]
    sparse = top_neighbors(matrix, neighbors, block_entries)
    dense = dense_itemknn(matrix.toarray(), neighbors)
    np.testing.assert_array_equal(sparse.toarray() != 0, dense != 0)  # the same neighbours
    np.testing.assert_allclose(sparse.toarray(), dense, rtol=1e-6)
    model = ItemKNNRecommender(ItemKNNParams(neighbors=neighbors)).fit(split)
    np.testing.assert_array_equal(model.similarity.toarray(), sparse.toarray())
    histories = [np.asarray(h, dtype=np.int64) for h in train[:50]]
    scores = model.score(histories)
    reference = np.stack([dense[np.unique(h)].sum(axis=0) for h in histories])
    np.testing.assert_allclose(scores, reference, rtol=1e-5, atol=1e-6)
    for got, want in zip(scores, reference, strict=True):  # the same ranking, up to ties
        top = np.argsort(-got, kind="stable")[:10]
        np.testing.assert_allclose(want[top], np.sort(want)[::-1][:10], rtol=1e-5, atol=1e-6)
