"""The ``new_items`` slice: items without training interactions, ranked over the whole catalog."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import pytest

from lmrec.evaluation import protocol as P
from lmrec.features.dataset import SplitData

N_ITEMS = 30
COLD = (27, 28, 29)


def make_split(train, cold_rows) -> SplitData:
    """Users' training sequences at times 10, 20, 30...; cold rows (user, item, timestamp)."""
    counts = np.bincount(np.concatenate([np.asarray(t) for t in train]), minlength=N_ITEMS)
    items = pd.DataFrame(
        {
            "item_idx": np.arange(N_ITEMS),
            "item_id": [f"i{i}" for i in range(N_ITEMS)],
            "is_cold": np.isin(np.arange(N_ITEMS), COLD),
            "n_train": counts,
        }
    )
    n = len(train)
    return SplitData(
        train=[np.asarray(t, dtype=np.int64) for t in train],
        val_items=np.full(n, -1, dtype=np.int64),
        test_items=np.zeros(n, dtype=np.int64),
        train_times=[10 * np.arange(1, len(t) + 1, dtype=np.int64) for t in train],
        user_ids=np.array([f"u{u}" for u in range(n)], dtype=object),
        items=items,
        cold=pd.DataFrame(cold_rows, columns=["user_idx", "item_idx", "timestamp"]),
    )


@pytest.fixture
def split() -> SplitData:
    # u0 met cold 27 at t=15 (after one training event) and 28 at t=35 (after three);
    # u1 met cold 29 once, before any training event; u2 has no cold interaction.
    return make_split(
        train=[[0, 1, 2, 3], [4, 5], [6, 7, 8]],
        cold_rows=[(0, 28, 35), (0, 27, 15), (1, 29, 5)],
    )


class Fixed:
    """Scores every item by a fixed vector (the same for every history)."""

    def __init__(self, scores: np.ndarray) -> None:
        self.scores = np.asarray(scores, dtype=np.float64)
        self.seen: list[list[int]] = []

    def score(self, histories: Sequence[np.ndarray]) -> np.ndarray:
        self.seen += [h.tolist() for h in histories]
        return np.tile(self.scores, (len(histories), 1))


def test_rows_are_latest_for_test_and_earliest_for_val(split: SplitData) -> None:
    users, targets, histories = P.new_item_rows(split, "test")
    assert users.tolist() == [0, 1] and targets.tolist() == [28, 29]
    assert [h.tolist() for h in histories] == [[0, 1, 2], []]  # events up to the target's time
    users, targets, histories = P.new_item_rows(split, "val")
    assert users.tolist() == [0] and targets.tolist() == [27]  # users with two or more only
    assert [h.tolist() for h in histories] == [[0]]


def test_new_items_compete_with_the_whole_catalog(split: SplitData) -> None:
    """A new item ranked first among new items but 11th overall is a miss at 10."""
    scores = np.linspace(2.0, 1.0, N_ITEMS)  # warm items 0..26 ahead of every cold item
    scores[list(COLD)] = [0.5, 0.4, 0.3]
    result = P.new_item_slice(Fixed(scores), split, "test", k=10)
    assert result["hr@10"] == 0.0 and result["n_users"] == 2
    assert result["n_items"] == N_ITEMS - 9  # items 0-8 have training events
    # The cold-only diagnostic ranks 28 second and 29 third among cold items: hits at 10.
    assert P.cold_item_slice(Fixed(scores), split, "test", k=10)["hr@10"] == 1.0
    scores[[28, 29]] = [5.0, 4.0]  # now both targets top the whole catalog
    result = P.new_item_slice(Fixed(scores), split, "test", k=10)
    assert result["hr@10"] == 1.0 and result["mrr@10"] == pytest.approx(0.75)  # ranks 1, 2


def test_history_items_are_excluded_not_the_target(split: SplitData) -> None:
    scores = np.zeros(N_ITEMS)
    scores[[0, 1, 2]] = 9.0  # u0's history: excluded, so 28 (next best) is first
    scores[28] = 1.0
    model = Fixed(scores)
    result = P.new_item_slice(model, split, "test", k=1)
    assert model.seen == [[0, 1, 2], []]
    assert result["hr@1"] == 0.5  # u0 hits; u1's 29 scores 0 like 26 other items


def test_protocol_reports_the_slice_and_a_split_without_times(split: SplitData) -> None:
    out = P.evaluate_protocol(Fixed(np.arange(N_ITEMS, dtype=float)), split, "test")
    assert {"new_items", "cold_items", "short_history", "long_tail"} <= set(out["slices"])
    untimed = SplitData(**{**split.__dict__, "cold": split.cold[["user_idx", "item_idx"]]})
    users, _, histories = P.new_item_rows(untimed, "test")
    assert users.tolist() == [0, 1] and [len(h) for h in histories] == [4, 2]
