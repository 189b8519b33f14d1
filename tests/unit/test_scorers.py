"""Scorer adapters (``CatalogScorer``, ``LenientScorer``) and the random baseline's chance level.

The adapters are checked against a small test model whose scores are a known function of the
history (``TableModel``) and against one that yields a NaN (``NaNModel``). Both are real
``Recommender`` subclasses, so the contract's input and output checks apply to them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import pytest

from lmrec.evaluation.protocol import evaluate
from lmrec.evaluation.scorers import CatalogScorer, LenientScorer
from lmrec.features.dataset import SplitData
from lmrec.models.base import Params, Recommender
from lmrec.models.random import RandomParams, RandomRecommender

N_ITEMS = 8
MODEL_IDS = [f"i{i}" for i in range(N_ITEMS)]
EMPTY = np.zeros(0, dtype=np.int64)


@dataclasses.dataclass(frozen=True)
class TableParams(Params):
    seed: int = 0
    scale: float = 1.0


class TableModel(Recommender):
    """Scores ``base + table[history].sum(0)``: a known function of the history's items.

    Records the histories it was asked to score, so tests can see what an adapter passed on.
    """

    name = "table"
    params_cls = TableParams

    def __init__(self, params: TableParams | None = None, n_items: int = N_ITEMS) -> None:
        super().__init__(params)
        rng = np.random.default_rng(self.params.seed)
        self.n_items = n_items
        self.base = (self.params.scale * rng.normal(size=n_items)).astype(np.float32)
        self.table = rng.normal(size=(n_items, n_items)).astype(np.float32)
        self.received: list[list[int]] = []

    def _fit(self, split: SplitData) -> None:
        """Nothing to learn: the scores are fixed at construction."""

    def _score(self, histories: list[np.ndarray]) -> np.ndarray:
        self.received.extend(h.tolist() for h in histories)
        return np.stack([self.base + self.table[h].sum(axis=0) for h in histories])

    def _state(self) -> dict[str, np.ndarray]:
        return {"base": self.base, "table": self.table}

    def _restore(self, state: Mapping[str, np.ndarray], config: Mapping[str, Any]) -> None:
        self.base, self.table = state["base"], state["table"]


class NaNModel(TableModel):
    """A ``TableModel`` whose scores for one item are NaN, and for another +inf."""

    name = "nan"

    def _score(self, histories: list[np.ndarray]) -> np.ndarray:
        scores = super()._score(histories)
        scores[:, 2] = np.nan
        scores[:, 5] = np.inf
        return scores


HISTORIES = [EMPTY, np.array([3]), np.array([0, 7, 7]), np.array([6, 1, 4, 2])]


def make_split(train: list[np.ndarray], test: np.ndarray, n_items: int) -> SplitData:
    """A split whose users all have a test item and no validation item or cold slice."""
    flat = np.concatenate(train)
    items = pd.DataFrame(
        {
            "item_idx": np.arange(n_items),
            "item_id": [f"i{i}" for i in range(n_items)],
            "is_cold": np.zeros(n_items, dtype=bool),
            "n_train": np.bincount(flat, minlength=n_items),
        }
    )
    return SplitData(
        train=train,
        val_items=np.full(len(train), -1, dtype=np.int64),
        test_items=np.asarray(test, dtype=np.int64),
        train_times=[np.arange(len(t), dtype=np.int64) for t in train],
        user_ids=np.array([f"u{u}" for u in range(len(train))], dtype=object),
        items=items,
        cold=pd.DataFrame({"user_idx": EMPTY, "item_idx": EMPTY}),
    )


def random_split(n_users: int, n_items: int, history: int, seed: int = 0) -> SplitData:
    """Each user: ``history`` distinct random items, then a test item not among them."""
    rng = np.random.default_rng(seed)
    picks = [rng.choice(n_items, history + 1, replace=False) for _ in range(n_users)]
    return make_split([p[:-1] for p in picks], np.array([p[-1] for p in picks]), n_items)


# --------------------------------------------------------------------------- CatalogScorer


def test_identical_catalog_scores_exactly_like_the_model():
    model = TableModel()
    scorer = CatalogScorer(model, MODEL_IDS, list(MODEL_IDS))
    assert scorer.identical
    assert scorer.n_unknown == 0
    np.testing.assert_array_equal(scorer.score(HISTORIES), model.score(HISTORIES))


def test_identical_catalog_given_as_a_pandas_series():
    model = TableModel()
    scorer = CatalogScorer(model, MODEL_IDS, pd.Series(MODEL_IDS))
    assert scorer.identical
    np.testing.assert_array_equal(scorer.score(HISTORIES), model.score(HISTORIES))


def test_permuted_catalog_maps_histories_and_scores():
    model = TableModel()
    perm = np.random.default_rng(1).permutation(N_ITEMS)  # catalog index c holds model item perm[c]
    catalog = [MODEL_IDS[p] for p in perm]
    scorer = CatalogScorer(model, MODEL_IDS, catalog)
    assert not scorer.identical
    assert scorer.n_unknown == 0
    got = scorer.score(HISTORIES)
    assert got.shape == (len(HISTORIES), N_ITEMS)
    for row, history in enumerate(HISTORIES):
        expected = model.score([perm[history]])[0]
        np.testing.assert_array_equal(got[row], expected[perm])


def test_extended_catalog_ranks_unknown_items_last_and_finite():
    model = TableModel(TableParams(scale=5.0))
    # two items the model never saw, interleaved with the known ones
    catalog = ["i3", "new-a", "i0", "i1", "i7", "new-b", "i2", "i4", "i5", "i6"]
    scorer = CatalogScorer(model, MODEL_IDS, catalog)
    assert scorer.n_unknown == 2
    unknown = np.array([c.startswith("new") for c in catalog])
    to_model = np.array([MODEL_IDS.index(c) if c in MODEL_IDS else -1 for c in catalog])
    histories = [EMPTY, np.array([0, 2]), np.array([6, 8, 9])]
    got = scorer.score(histories)
    assert got.shape == (3, len(catalog))
    assert np.isfinite(got).all()
    for row, history in enumerate(histories):
        expected = model.score([to_model[history]])[0]
        np.testing.assert_array_equal(got[row, ~unknown], expected[to_model[~unknown]])
        assert got[row, unknown].max() < got[row, ~unknown].min()


def test_history_items_unknown_to_the_model_are_dropped():
    model = TableModel()
    catalog = ["new-a", *MODEL_IDS, "new-b"]  # catalog index c holds model item c - 1
    scorer = CatalogScorer(model, MODEL_IDS, catalog)
    got = scorer.score([np.array([0, 3, 9, 5]), np.array([0, 9])])
    assert model.received == [[2, 4], []]
    np.testing.assert_array_equal(got[0, 1:-1], model.score([np.array([2, 4])])[0])
    np.testing.assert_array_equal(got[1, 1:-1], model.score([EMPTY])[0])


def test_reduced_catalog_scores_only_its_items():
    model = TableModel()
    catalog = ["i6", "i1", "i4"]
    scorer = CatalogScorer(model, MODEL_IDS, catalog)
    assert scorer.n_unknown == 0
    assert not scorer.identical
    got = scorer.score([EMPTY, np.array([2, 0])])  # catalog indices: i4, i6
    assert got.shape == (2, 3)
    np.testing.assert_array_equal(got[0], model.score([EMPTY])[0][[6, 1, 4]])
    np.testing.assert_array_equal(got[1], model.score([np.array([4, 6])])[0][[6, 1, 4]])


def test_a_catalog_prefix_of_the_model_is_not_treated_as_identical():
    model = TableModel()
    scorer = CatalogScorer(model, MODEL_IDS, MODEL_IDS[:5])
    assert not scorer.identical
    got = scorer.score([np.array([1])])
    assert got.shape == (1, 5)
    np.testing.assert_array_equal(got[0], model.score([np.array([1])])[0][:5])


def test_unknown_items_stay_below_known_ones_when_some_known_scores_are_not_finite():
    model = NaNModel()
    scorer = CatalogScorer(model, MODEL_IDS, [*MODEL_IDS, "new"])
    got = scorer.score([np.array([1])])[0]
    finite_known = np.isfinite(got[:N_ITEMS])
    assert finite_known.sum() == N_ITEMS - 2
    assert np.isnan(got[2]) and np.isinf(got[5])  # passed through, not hidden
    assert np.isfinite(got[-1])
    assert got[-1] < got[:N_ITEMS][finite_known].min()


def test_unknown_items_rank_strictly_below_known_items_with_large_scores():
    model = TableModel(TableParams(scale=0.0))
    model.base = np.array([3e7, 5e7, 4e7, 6e7, 7e7, 8e7, 9e7, 1e8], dtype=np.float32)
    model.table[:] = 0.0
    got = CatalogScorer(model, MODEL_IDS, [*MODEL_IDS, "new"]).score([EMPTY])[0]
    assert got[-1] < got[:N_ITEMS].min()


def test_catalog_scorer_rejects_a_mismatched_id_count():
    model = TableModel()
    with pytest.raises(ValueError, match=f"7 item ids for {N_ITEMS} items"):
        CatalogScorer(model, MODEL_IDS[:7], MODEL_IDS)


def test_unknown_items_count_as_misses_not_as_non_finite_under_the_protocol():
    model = TableModel(n_items=6)
    split = random_split(n_users=30, n_items=8, history=3, seed=2)
    scorer = CatalogScorer(model, [f"i{i}" for i in range(6)], split.items["item_id"])
    result = evaluate(scorer, split, "test", k=2, recall_k=2)
    assert result["n_users"] == 30
    assert result["n_nonfinite"] == 0
    # 5 candidates per user, at most 2 unknown: an unknown test item ranks after at least
    # 3 known candidates, so it is never a hit
    unknown_targets = split.test_items >= 6
    assert unknown_targets.any()
    assert result["hr@2"] <= 1 - unknown_targets.mean()


# --------------------------------------------------------------------------- LenientScorer


def test_lenient_scorer_passes_non_finite_scores_through():
    model = NaNModel()
    with pytest.raises(ValueError, match="non-finite scores"):
        model.score(HISTORIES)
    got = LenientScorer(model).score(HISTORIES)
    assert got.shape == (len(HISTORIES), N_ITEMS)
    assert got.dtype == np.float32
    assert np.isnan(got[:, 2]).all()
    assert np.isposinf(got[:, 5]).all()
    finite = np.ones(N_ITEMS, dtype=bool)
    finite[[2, 5]] = False
    reference = TableModel().score(HISTORIES)
    np.testing.assert_array_equal(got[:, finite], reference[:, finite])


def test_lenient_scorer_keeps_the_models_input_checks():
    with pytest.raises(ValueError, match="outside"):
        LenientScorer(NaNModel()).score([np.array([N_ITEMS])])


def test_lenient_scorer_lets_the_protocol_count_non_finite_users():
    split = random_split(n_users=20, n_items=N_ITEMS, history=2, seed=3)
    result = evaluate(LenientScorer(NaNModel()), split, "test", k=3, recall_k=3)
    # a user is counted when item 2 (NaN) or 5 (inf) is among its candidates
    expected = sum(not {2, 5} <= set(h.tolist()) for h in split.train)
    assert expected > 0
    assert result["n_users"] == 20
    assert result["n_nonfinite"] == expected


# ----------------------------------------------------------------------- RandomRecommender


def test_random_recommender_is_near_chance():
    n_items, history = 100, 5
    split = random_split(n_users=600, n_items=n_items, history=history, seed=0)
    chance = 10 / (n_items - history)  # the history is excluded, the target never is
    for seed in (0, 1):
        model = RandomRecommender(RandomParams(seed=seed)).fit(split)
        hr = evaluate(model, split, "test", k=10)["hr@10"]
        assert 0.5 * chance < hr < 1.6 * chance, (seed, hr, chance)


def test_random_scores_are_deterministic_per_history_and_differ_between_histories():
    split = random_split(n_users=10, n_items=50, history=4, seed=1)
    model = RandomRecommender(RandomParams(seed=0)).fit(split)
    a, b = np.array([3, 1, 4]), np.array([1, 3, 4])  # same items, another order
    batch = model.score([a, b, EMPTY, a])
    np.testing.assert_array_equal(batch[0], batch[3])
    np.testing.assert_array_equal(batch[0], model.score([a])[0])  # batch-independent
    np.testing.assert_array_equal(batch[2], model.score([EMPTY])[0])
    assert not np.array_equal(batch[0], batch[1])
    assert not np.array_equal(batch[0], batch[2])
    assert ((batch >= 0) & (batch < 1)).all()
    other_seed = RandomRecommender(RandomParams(seed=1)).fit(split)
    assert not np.array_equal(other_seed.score([a])[0], batch[0])
