"""benchmarks/tune_baselines.py (run on demand): the choice is made on validation rows only,
over the grid and the defaults, and the seeded re-runs are what the choice is averaged on."""

from __future__ import annotations

import numpy as np
import pytest

from lmrec.features.dataset import load_split

from .conftest import load_benchmark


@pytest.fixture(scope="module")
def bench():
    yield from load_benchmark("tune_baselines")


def test_the_choice_is_the_best_validation_mean_and_the_defaults_are_compared(
    bench, tiny_split_dir, monkeypatch
):
    split = load_split(tiny_split_dir)
    monkeypatch.setitem(bench.GRIDS, "itemknn", {"neighbors": [2, 5, 30]})
    monkeypatch.setitem(
        bench.GRIDS, "mf", {"factors": [8], "regularization": [0.1, 10.0], "alpha": [1.0],
                            "iterations": [3]}
    )  # fmt: skip
    knn = bench.tune("itemknn", split, [0, 1], top=2, log=lambda _: None)
    assert len(knn["searched"]) == 3
    # the two best by validation, plus the default (100 neighbours) to compare against
    assert [f["params"]["neighbors"] for f in knn["finals"]][-1] == 100
    assert knn["finals"][-1]["default"] and len(knn["finals"]) == 3
    best = max(knn["finals"], key=lambda f: f["val"])
    assert knn["chosen"] == best["params"]
    assert all(len(f["runs"]) == 1 for f in knn["finals"])  # deterministic: one run
    mf = bench.tune("mf", split, [0, 1], top=1, log=lambda _: None)
    assert all(len(f["runs"]) == 2 for f in mf["finals"])  # seeded: every seed
    for final in mf["finals"]:
        runs = final["runs"]
        assert final["val"] == pytest.approx(np.mean([r["val"]["ndcg@10"] for r in runs]))
        assert [r["params"]["seed"] for r in runs] == [0, 1]
    table = bench.markdown({"itemknn": knn, "mf": mf}, {
        "users": split.n_users, "items": split.n_items, "split": "x", "seeds": [0, 1],
        "date": "today"})  # fmt: skip
    assert "**yes**" in table and "| itemknn | neighbors 100 | yes |" in table
