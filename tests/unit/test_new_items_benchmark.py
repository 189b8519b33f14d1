"""The served path offline (lmrec.serving.offline, through benchmarks/new_items.py, which runs
on demand): with no reserved slot it gives the protocol's own numbers, and each slot puts
fresh items in every list without moving the warm head."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lmrec.evaluation.protocol import evaluate_protocol
from lmrec.features.dataset import SplitData

from .conftest import load_benchmark

N_USERS, N_ITEMS, N_COLD = 60, 40, 6


@pytest.fixture(scope="module")
def bench():
    yield from load_benchmark("new_items")


@pytest.fixture(scope="module")
def split() -> SplitData:
    rng = np.random.default_rng(3)
    warm = N_ITEMS - N_COLD
    train = [rng.choice(warm, size=rng.integers(3, 8), replace=False) for _ in range(N_USERS)]
    val = np.array([rng.choice(np.setdiff1d(np.arange(warm), t)) for t in train])
    test = np.array([rng.choice(np.setdiff1d(np.arange(warm), t)) for t in train])
    counts = np.bincount(np.concatenate(train), minlength=N_ITEMS)
    cold = [
        (u, warm + int(rng.integers(N_COLD)), int(rng.integers(1, 10)))
        for u in range(0, N_USERS, 2)
    ]
    items = pd.DataFrame(
        {
            "item_idx": np.arange(N_ITEMS),
            "item_id": [f"i{i}" for i in range(N_ITEMS)],
            "is_cold": np.arange(N_ITEMS) >= warm,
            "n_train": counts,
        }
    )
    return SplitData(
        train=[t.astype(np.int64) for t in train],
        val_items=val.astype(np.int64),
        test_items=test.astype(np.int64),
        train_times=[np.arange(1, len(t) + 1, dtype=np.int64) for t in train],
        user_ids=np.array([f"u{u}" for u in range(N_USERS)], dtype=object),
        items=items,
        cold=pd.DataFrame(cold, columns=["user_idx", "item_idx", "timestamp"]),
    )


class Hashed:
    """Distinct pseudo-random scores per (history, item): no ties, history-dependent."""

    def score(self, histories):
        rows = []
        for h in histories:
            seed = int(np.sum(np.asarray(h) * 31 + 7)) % (2**32)
            rows.append(np.random.default_rng(seed).permutation(N_ITEMS).astype(np.float64))
        return np.array(rows)


def test_no_slot_is_the_protocol(bench, split):
    curve = bench.tradeoff(Hashed(), split, "test", settings=((0, 0.0, 0.0, 0.0),))
    protocol = evaluate_protocol(Hashed(), split, "test")
    assert curve[0]["warm_ndcg@10"] == pytest.approx(protocol["overall"]["ndcg@10"])
    assert curve[0]["new_hr@10"] == pytest.approx(protocol["slices"]["new_items"]["hr@10"])
    assert curve[0]["n_new"] == protocol["slices"]["new_items"]["n_users"]


def test_slots_expose_fresh_items_and_cost_only_the_tail(bench, split):
    curve = {
        r["slots"]: r
        for r in bench.tradeoff(
            Hashed(),
            split,
            "test",
            settings=((0, 0.0, 0.0, 0.0), (1, 0.0, 0.0, 0.0), (3, 0.0, 0.0, 0.0)),
        )
    }
    assert curve[1]["fresh_per_list"] >= 1.0 and curve[3]["fresh_per_list"] >= 3.0
    assert curve[0]["new_hr@10"] <= curve[1]["new_hr@10"] <= curve[3]["new_hr@10"]
    assert curve[3]["new_hr@10"] > curve[0]["new_hr@10"]
    assert curve[3]["warm_ndcg@10"] <= curve[1]["warm_ndcg@10"] <= curve[0]["warm_ndcg@10"]
