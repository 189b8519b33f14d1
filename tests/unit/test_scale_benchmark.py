"""benchmarks/scale.py's bookkeeping: exponents, budgets, and never a silent shrink."""

from __future__ import annotations

import sys

import pytest
import yaml

from .conftest import load_benchmark


@pytest.fixture(scope="module")
def scale():
    yield from load_benchmark("scale")


def _size(interactions: int, seconds: dict[str, float], unfinished: str | None = None) -> dict:
    stages = {n: {"seconds": s, "peak_rss_gb": 1.0, "status": "ok"} for n, s in seconds.items()}
    out = {"n_interactions": interactions, "n_users": 1, "n_items": 1, "stages": stages}
    if unfinished:
        stages[unfinished].update(status="not finished", reason="ran past its time budget")
        out["unfinished"] = {"stage": unfinished, "reason": "ran past its time budget"}
    return out


def test_sizes_grow_users_and_items_with_the_log(scale):
    assert scale.shape(10_000_000) == {
        "n_interactions": 10_000_000,
        "n_users": 500_000,
        "n_items": 200_000,
    }


def test_exponent_is_the_log_log_slope_over_finished_sizes(scale):
    sizes = {
        "1M": _size(1_000_000, {"a": 10.0, "b": 10.0}),
        "3M": _size(3_000_000, {"a": 30.0, "b": 90.0}),
        "10M": _size(10_000_000, {"a": 100.0, "b": 1.0}, unfinished="b"),
    }
    assert scale.exponents(sizes) == {"a": 1.0, "b": 2.0}  # b at 10M did not finish
    # sizes below 1M are end-to-end checks, not points of the fit
    sizes["100k"] = _size(100_000, {"a": 50.0, "b": 50.0})
    assert scale.exponents(sizes) == {"a": 1.0, "b": 2.0}


def test_an_unfinished_size_says_which_stage_and_why(scale):
    payload = {
        "machine": "m",
        "command": "c",
        "profile": "p",
        "sizes": {"1M": _size(1_000_000, {"embed": 5.0, "train": 9.0}, unfinished="train")},
        "exponents": {},
    }
    md = scale.markdown(payload)
    assert "NOT finished: train: ran past its time budget" in md
    assert "10M: not run." in md


def test_a_stage_past_its_budget_is_stopped(scale, tmp_path):
    env = {"PATH": "/usr/bin:/bin"}
    stage = scale.Stage("sleepy", "sleep 30", tmp_path, env).run(budget_s=1.0, memory_gb=12)
    assert stage["status"] == "not finished" and "time budget" in stage["reason"]
    assert stage["seconds"] < 10
    done = scale.Stage("quick", f"{sys.executable} -c 'x = 1'", tmp_path, env).run(60, 12)
    assert done["status"] == "ok" and done["peak_rss_gb"] >= 0


def test_the_gate_is_relaxed_and_epochs_overridden(scale, tmp_path):
    scale._params(tmp_path, scale.REPO / "profiles/large.yaml", epochs=2)
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    assert params["train"]["sequential"]["epochs"] == 2
    assert all(c == {"metric": c["metric"], "against": "value", "min": 0.0}
               for c in params["gate"]["checks"])  # fmt: skip


def test_the_size_table_shortens_a_full_commit_and_keeps_its_dirty_mark(scale):
    full = "0123456789abcdef0123456789abcdef01234567"
    assert scale._short(full) == "0123456"
    assert scale._short(full + "+dirty") == "0123456+dirty"
    assert scale._short("64a446a") == "64a446a"  # recorded short already
    assert scale._short("unknown") == "unknown"
