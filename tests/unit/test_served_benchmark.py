"""The served-model benchmark's hold-out (benchmarks/served.py; the benchmark itself runs on
demand): the held-out event of each user is the test item the protocol's split would pick,
so the peer fitted on that split's test stage sees exactly the events the pipeline ingests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lmrec.config import load_params
from lmrec.features import split as splitting

from .conftest import load_benchmark

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench():
    yield from load_benchmark("served")


def test_the_held_out_event_is_the_splits_test_item(bench):
    rng = np.random.default_rng(0)
    rows = [
        (f"u{u}", f"i{i}", int(t) // 3 * 3, "rate", 4.0)  # same-second ties on purpose
        for u in range(30)
        for i, t in zip(rng.choice(40, 8, replace=False), rng.integers(0, 60, 8), strict=True)
    ]
    log = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "event", "value"])
    items = pd.DataFrame({"item_id": [f"i{i}" for i in range(40)], "title": "t", "text": ""})
    last = bench.held_out(log, items, REPO / "params.yaml")
    cfg = load_params(REPO / "params.yaml").preprocess.model_copy(update={"cold_item_share": 0.0})
    events, _, _, _ = splitting.split(log, items, cfg)
    expected = events[events["role"] == "test"].set_index("user_id")["item_id"]
    assert len(last) == 30
    assert last.set_index("user_id")["item_id"].sort_index().equals(expected.sort_index())
    ordered = splitting.order_events(log, cfg.tiebreak_seed)
    final = ordered.groupby("user_id")["item_id"].last()
    assert last.set_index("user_id")["item_id"].sort_index().equals(final.sort_index())
