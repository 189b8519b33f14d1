"""The serving benchmark's run order and pooling (benchmarks/serving.py; the benchmark itself
is run on demand, not in the suite)."""

from __future__ import annotations

import numpy as np
import pytest

from .conftest import load_benchmark

pytest.importorskip("aiohttp")


@pytest.fixture(scope="module")
def bench():
    yield from load_benchmark("serving")


def test_each_service_goes_first_as_often_as_last(bench):
    assert bench.run_order(1) == ["lmrec", "noop"]
    assert bench.run_order(2) == ["lmrec", "noop", "noop", "lmrec"]
    order = bench.run_order(4)
    assert order.count("lmrec") == order.count("noop") == 4
    # position-weighted: neither service sits earlier on average
    assert sum(i for i, s in enumerate(order) if s == "lmrec") == sum(
        i for i, s in enumerate(order) if s == "noop"
    )


def run(ms: list[float], seconds: float, errors: int = 0, cpu: float = 1.0) -> dict:
    ms_array = np.asarray(ms)
    return {
        "service": "lmrec",
        "mode": "saturation",
        "requests": len(ms) + errors,
        "throughput_rps": len(ms) / seconds,
        "p99_ms": float(np.percentile(ms_array, 99)),
        "errors": errors,
        "error_samples": ["HTTP 500"] * errors,
        "seconds": seconds,
        "client_cpu": 0.2,
        "server_cpu": cpu,
        "other_cpu": 0.0,
        "_ms": ms_array,
    }


def test_runs_are_pooled_by_request_and_second(bench):
    fast = run([1.0] * 300, seconds=1.0, cpu=1.0)
    slow = run([10.0] * 100, seconds=2.0, errors=1, cpu=0.5)
    merged = bench.merge_rounds([fast, slow])
    assert merged["throughput_rps"] == pytest.approx(400 / 3.0)  # not the mean of 300 and 50
    assert merged["requests"] == 401 and merged["errors"] == 1
    assert merged["p50_ms"] == 1.0 and merged["p99_ms"] == 10.0
    assert merged["server_cpu"] == pytest.approx((1.0 * 1 + 0.5 * 2) / 3)
    assert merged["runs"] == [(300.0, 1.0), (50.0, 10.0)]


def test_a_given_bundle_without_bundle_json_is_refused_by_name(bench, tmp_path):
    with pytest.raises(SystemExit, match=r"--bundle .*no bundle\.json"):
        bench.given_bundle(tmp_path, tmp_path / "missing", print)
