"""benchmarks/staleness.py (run on demand): the window's events and their histories, and the
scoring of them over the whole catalog with the history excluded."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from .conftest import load_benchmark


@pytest.fixture(scope="module")
def bench():
    yield from load_benchmark("staleness")


def test_window_events_carry_everything_their_user_did_before(bench):
    events = pd.DataFrame(
        {
            "user_id": ["a", "a", "b", "a", "b", "c"],
            "item_id": ["i1", "i2", "i1", "i3", "i4", "i2"],
            "timestamp": [1.0, 2.0, 3.0, 5.0, 6.0, 9.0],
        }
    )
    rows = bench.window_rows(events, start=4.0, end=8.0)  # (4, 8]: a's i3 and b's i4
    assert [(u, i, list(h)) for u, i, h in rows] == [("a", "i3", ["i1", "i2"]), ("b", "i4", ["i1"])]


class Fixed:
    """Scores items by a fixed vector (every history alike)."""

    def __init__(self, scores):
        self.scores = np.asarray(scores, dtype=np.float32)

    def score(self, histories, allow_nonfinite=False):
        return np.tile(self.scores, (len(histories), 1))


def test_window_scoring_excludes_the_history_and_counts_unseen_items(bench):
    items = pd.DataFrame({"item_id": ["i0", "i1", "i2"], "n_train": [5, 3, 0]})
    split = type("Split", (), {"items": items})()
    rows = [("a", "i1", np.array(["i0"])), ("b", "i2", np.array([], dtype=object))]
    # i0 scores highest but is a's history: a's target i1 is first; b's i2 is last of three
    result = bench.score_window(Fixed([3.0, 2.0, 1.0]), split, rows)
    assert result["events"] == 2 and result["hr@10"] == 1.0  # both in a top-10 of 3 items
    assert result["ndcg@10"] == pytest.approx((1.0 + 1.0 / np.log2(4)) / 2)
    assert result["unseen_item_share"] == 0.5 and result["hr@10_unseen_items"] == 1.0
