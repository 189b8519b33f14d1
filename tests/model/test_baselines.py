"""Baseline-specific behaviour, checked against slow, obviously-correct references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp

from lmrec.models.itemknn import ItemKNNParams, ItemKNNRecommender, keep_top_neighbors
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
