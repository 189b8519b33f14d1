"""The promotion gate's pure logic on small hand-built metric dicts (no model, no registry).

Covers value checks, checks against every (or some) baseline and against the champion,
ratios against a zero reference, NaN handling, the non-finite-score and latency checks,
``passed``, unknown metrics and baselines, and ``GateCheck`` validation.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest
from pydantic import ValidationError

from lmrec.config import GateCheck, GateParams, LatencyParams
from lmrec.exit_codes import ExitCode
from lmrec.io import LmrecError
from lmrec.registry.gate import (
    CheckResult,
    Reference,
    metric_value,
    passed,
    run_checks,
)

NAN = float("nan")
NDCG = "overall.ndcg@10"
POP_BIAS = "overall.popularity_bias@10"


def metrics(overall: dict[str, Any] | None = None, **slices: dict[str, Any]) -> dict[str, Any]:
    """An ``evaluate_protocol``-shaped result with round numbers, parts overridden."""
    base_overall = {
        "hr@10": 0.5,
        "ndcg@10": 0.3,
        "mrr@10": 0.25,
        "recall@20": 0.6,
        "coverage@10": 0.4,
        "novelty@10": 5.0,
        "popularity_bias@10": 0.5,
        "n_users": 100,
        "n_nonfinite": 0,
    }
    base_slices = {
        "cold_items": {
            "hr@10": 0.2,
            "ndcg@10": 0.1,
            "recall@10": 0.15,
            "n_users": 10,
            "n_items": 5,
            "n_nonfinite": 0,
        },
        "short_history": copy.deepcopy(base_overall),
        "long_tail": copy.deepcopy(base_overall),
    }
    out = {"overall": {**base_overall, **(overall or {})}, "slices": base_slices}
    for name, values in slices.items():
        out["slices"][name] = {**base_slices[name], **values}
    return out


def gate(*checks: GateCheck, **params: Any) -> GateParams:
    return GateParams(checks=list(checks), **params)


def only(results: list[CheckResult], check: str) -> CheckResult:
    """The one result named ``check``."""
    found = [r for r in results if r.check == check]
    assert len(found) == 1, [r.check for r in results]
    return found[0]


def first(params: GateParams, candidate, baselines=None, champion=None, **kw) -> CheckResult:
    """The result of the first configured check."""
    return run_checks(params, candidate, baselines or {}, champion, **kw)[0]


# ------------------------------------------------------------------------- value checks


@pytest.mark.parametrize(
    ("bounds", "value", "status"),
    [
        ({"min": 0.1}, 0.3, "pass"),
        ({"min": 0.3}, 0.3, "pass"),  # boundary equality passes
        ({"min": 0.31}, 0.3, "fail"),
        ({"max": 0.3}, 0.3, "pass"),
        ({"max": 0.29}, 0.3, "fail"),
        ({"min": 0.2, "max": 0.4}, 0.3, "pass"),
        ({"min": 0.3, "max": 0.3}, 0.3, "pass"),
        ({"min": 0.35, "max": 0.4}, 0.3, "fail"),
        ({"min": 0.1, "max": 0.25}, 0.3, "fail"),
    ],
)
def test_value_check_bounds(bounds, value, status):
    check = GateCheck(metric=NDCG, **bounds)
    result = first(gate(check), metrics({"ndcg@10": value}))
    assert result.status == status
    assert result.check == f"{NDCG} value"
    assert f"{NDCG} 0.3000" in result.reason
    assert ("meets" if status == "pass" else "misses") in result.reason
    for key, symbol in (("min", ">="), ("max", "<=")):
        if key in bounds:
            assert f"{symbol} {bounds[key]:g}" in result.reason


def test_value_check_reads_a_slice_metric():
    check = GateCheck(metric="slices.cold_items.recall@10", min=0.2)
    result = first(gate(check), metrics(cold_items={"recall@10": 0.15}))
    assert result.status == "fail"
    assert "slices.cold_items.recall@10 0.1500 misses the bound >= 0.2" in result.reason


@pytest.mark.parametrize("missing", [None, NAN])
def test_value_check_fails_on_a_nan_candidate(missing):
    check = GateCheck(metric="slices.long_tail.hr@10", min=0.0)
    result = first(gate(check), metrics(long_tail={"hr@10": missing}))
    assert result.status == "fail"
    assert "slices.long_tail.hr@10 is NaN" in result.reason


# ---------------------------------------------------------------------- baseline checks

BASELINES = {
    "popularity": metrics({"ndcg@10": 0.2}),
    "itemknn": metrics({"ndcg@10": 0.28}),
}


def test_baselines_check_passes_when_it_holds_against_every_baseline():
    check = GateCheck(metric=NDCG, against="baselines", min_ratio=1.05)
    result = first(gate(check), metrics({"ndcg@10": 0.3}), BASELINES)
    assert result.status == "pass"
    assert result.check == f"{NDCG} vs baselines"
    assert "baseline itemknn 0.2800" in result.reason
    assert "baseline popularity 0.2000" in result.reason


def test_baselines_check_fails_naming_the_baseline_it_misses_and_the_numbers():
    check = GateCheck(metric=NDCG, against="baselines", min_ratio=1.1)
    result = first(gate(check), metrics({"ndcg@10": 0.3}), BASELINES)
    assert result.status == "fail"
    # 0.30 / 0.28 = 1.071 < 1.1 against itemknn; 0.30 / 0.20 = 1.5 against popularity
    assert "0.3000 vs baseline itemknn 0.2800: ratio 1.071 >= 1.1" in result.reason
    assert "popularity" not in result.reason


def test_baselines_check_min_delta_against_every_baseline():
    check = GateCheck(metric=NDCG, against="baselines", min_delta=0.05)
    result = first(gate(check), metrics({"ndcg@10": 0.3}), BASELINES)
    assert result.status == "fail"
    assert "itemknn 0.2800: change +0.0200 >= +0.05" in result.reason


def test_baselines_check_on_a_named_subset_ignores_the_others():
    check = GateCheck(metric=NDCG, against="baselines", min_ratio=1.1, baselines=["popularity"])
    result = first(gate(check), metrics({"ndcg@10": 0.3}), BASELINES)
    assert result.status == "pass"
    assert "baseline popularity 0.2000" in result.reason
    assert "itemknn" not in result.reason


def test_unknown_baseline_name_is_an_error_naming_it():
    check = GateCheck(metric=NDCG, against="baselines", min_ratio=1.0, baselines=["mf", "itemknn"])
    with pytest.raises(LmrecError, match=r"\['mf'\] were not trained") as err:
        run_checks(gate(check), metrics(), BASELINES, None)
    assert "trained: itemknn, popularity" in str(err.value)


def test_named_baseline_with_none_trained_is_an_error():
    check = GateCheck(metric=NDCG, against="baselines", min_ratio=1.0, baselines=["mf"])
    with pytest.raises(LmrecError, match=r"\['mf'\] were not trained \(trained: none\)"):
        run_checks(gate(check), metrics(), {}, None)


def test_baselines_check_with_no_baselines_trained_is_an_error():
    check = GateCheck(metric=NDCG, against="baselines", min_ratio=1.0)
    with pytest.raises(LmrecError, match="no baselines trained"):
        run_checks(gate(check), metrics(), {}, None)


# ---------------------------------------------------------------------- champion checks

CHAMPION = Reference("champion v3", metrics({"ndcg@10": 0.3, "popularity_bias@10": 0.5}))


def test_champion_check_is_skipped_without_a_champion():
    check = GateCheck(metric=NDCG, against="champion", min_ratio=0.95)
    result = first(gate(check), metrics({"ndcg@10": 0.01}), champion=None)
    assert result.status == "skip"
    assert result.check == f"{NDCG} vs champion"
    assert "no champion yet" in result.reason


def test_champion_check_is_skipped_when_the_candidate_is_the_champion():
    check = GateCheck(metric=NDCG, against="champion", min_ratio=0.95)
    result = first(
        gate(check), metrics({"ndcg@10": 0.01}), champion=CHAMPION, champion_is_candidate=True
    )
    assert result.status == "skip"
    assert "the candidate is the champion v3 already" in result.reason


@pytest.mark.parametrize(
    ("threshold", "value", "status", "text"),
    [
        ({"min_ratio": 0.95}, 0.27, "fail", "0.2700 vs champion v3 0.3000: ratio 0.900 >= 0.95"),
        ({"min_ratio": 0.9}, 0.27, "pass", "ratio 0.900 >= 0.9"),
        ({"min_delta": -0.01}, 0.27, "fail", "change -0.0300 >= -0.01"),
        ({"min_delta": -0.05}, 0.27, "pass", "change -0.0300 >= -0.05"),
        ({"min_delta": 0.0}, 0.31, "pass", "change +0.0100 >= +0"),
    ],
)
def test_champion_check_higher_is_better(threshold, value, status, text):
    check = GateCheck(metric=NDCG, against="champion", **threshold)
    result = first(gate(check), metrics({"ndcg@10": value}), champion=CHAMPION)
    assert result.status == status
    assert result.reason.startswith(f"{NDCG}: ")
    assert text in result.reason


@pytest.mark.parametrize(
    ("threshold", "value", "status", "text"),
    [
        ({"max_delta": 0.05}, 0.6, "fail", "change +0.1000 <= +0.05"),
        ({"max_delta": 0.05}, 0.54, "pass", "change +0.0400 <= +0.05"),
        ({"max_delta": 0.05}, 0.2, "pass", "change -0.3000 <= +0.05"),
        ({"max_ratio": 1.1}, 0.6, "fail", "ratio 1.200 <= 1.1"),
        ({"max_ratio": 1.1}, 0.5, "pass", "ratio 1.000 <= 1.1"),
    ],
)
def test_champion_check_lower_is_better_popularity_bias(threshold, value, status, text):
    check = GateCheck(metric=POP_BIAS, against="champion", **threshold)
    result = first(gate(check), metrics({"popularity_bias@10": value}), champion=CHAMPION)
    assert result.status == status
    assert text in result.reason


def test_champion_check_with_several_thresholds_fails_on_any():
    check = GateCheck(metric=NDCG, against="champion", min_ratio=0.5, min_delta=0.0)
    result = first(gate(check), metrics({"ndcg@10": 0.29}), champion=CHAMPION)
    assert result.status == "fail"
    assert "change -0.0100 >= +0" in result.reason
    assert "ratio" not in result.reason  # only the failing part is reported


# ---------------------------------------------------------------- zero reference, NaN


@pytest.mark.parametrize(
    ("threshold", "value", "status", "ratio"),
    [
        ({"min_ratio": 1.0}, 0.1, "pass", "ratio inf"),
        ({"min_ratio": 1.0}, 0.0, "pass", "ratio 1.000"),
        ({"min_ratio": 1.01}, 0.0, "fail", "ratio 1.000"),
        ({"max_ratio": 2.0}, 0.1, "fail", "ratio inf"),
        ({"max_ratio": 1.0}, 0.0, "pass", "ratio 1.000"),
    ],
)
def test_ratio_against_a_zero_reference(threshold, value, status, ratio):
    check = GateCheck(metric="overall.coverage@10", against="champion", **threshold)
    champion = Reference("champion v1", metrics({"coverage@10": 0.0}))
    result = first(gate(check), metrics({"coverage@10": value}), champion=champion)
    assert result.status == status
    assert ratio in result.reason


def test_nan_candidate_and_all_references_nan_is_skipped():
    check = GateCheck(metric="slices.cold_items.hr@10", against="baselines", min_ratio=1.0)
    empty = {"hr@10": None, "n_users": 0}
    baselines = {"popularity": metrics(cold_items=empty), "mf": metrics(cold_items=empty)}
    result = first(gate(check), metrics(cold_items=empty), baselines)
    assert result.status == "skip"
    assert "slices.cold_items.hr@10: no users in this slice for any model" in result.reason


def test_nan_candidate_and_nan_champion_is_skipped():
    check = GateCheck(metric="slices.long_tail.ndcg@10", against="champion", min_delta=0.0)
    champion = Reference("champion v1", metrics(long_tail={"ndcg@10": NAN}))
    result = first(gate(check), metrics(long_tail={"ndcg@10": NAN}), champion=champion)
    assert result.status == "skip"


def test_nan_candidate_with_a_finite_reference_fails():
    check = GateCheck(metric="slices.cold_items.hr@10", against="baselines", min_ratio=1.0)
    baselines = {
        "popularity": metrics(cold_items={"hr@10": None}),
        "mf": metrics(cold_items={"hr@10": 0.1}),
    }
    result = first(gate(check), metrics(cold_items={"hr@10": None}), baselines)
    assert result.status == "fail"
    assert "slices.cold_items.hr@10 is NaN" in result.reason


def test_nan_reference_passes_noting_it():
    check = GateCheck(metric=NDCG, against="champion", min_ratio=1.0)
    champion = Reference("champion v2", metrics({"ndcg@10": None}))
    result = first(gate(check), metrics({"ndcg@10": 0.1}), champion=champion)
    assert result.status == "pass"
    assert "champion v2 has no value to compare" in result.reason


def test_nan_baseline_does_not_hide_a_failure_against_another():
    check = GateCheck(metric=NDCG, against="baselines", min_ratio=1.0)
    baselines = {"popularity": metrics({"ndcg@10": None}), "mf": metrics({"ndcg@10": 0.5})}
    result = first(gate(check), metrics({"ndcg@10": 0.3}), baselines)
    assert result.status == "fail"
    assert "baseline mf 0.5000" in result.reason


# ------------------------------------------------------------ non-finite and latency


@pytest.mark.parametrize(
    ("n_users", "bad", "allowed", "status"),
    [
        (100, 0, 0.0, "pass"),
        (100, 1, 0.0, "fail"),
        (100, 5, 0.05, "pass"),  # share equal to the allowance passes
        (100, 6, 0.05, "fail"),
        (0, 0, 0.0, "pass"),  # no users: share 0
        (4, 4, 1.0, "pass"),
    ],
)
def test_nonfinite_share_against_the_allowance(n_users, bad, allowed, status):
    candidate = metrics({"n_users": n_users, "n_nonfinite": bad})
    results = run_checks(gate(max_nonfinite_share=allowed), candidate, {}, None)
    assert [r.check for r in results] == ["non-finite scores"]  # always checked
    assert results[0].status == status
    assert f"{bad} of {n_users} users got non-finite scores" in results[0].reason


@pytest.mark.parametrize(("p95", "status"), [(12.5, "pass"), (50.0, "pass"), (50.01, "fail")])
def test_latency_against_the_budget(p95, status):
    params = gate(latency=LatencyParams(p95_ms=50.0))
    result = only(run_checks(params, metrics(), {}, None, latency_p95_ms=p95), "latency p95")
    assert result.status == status
    assert f"{p95:.2f} ms" in result.reason
    assert "budget 50 ms" in result.reason


def test_latency_not_measured_adds_no_check():
    results = run_checks(gate(), metrics(), {}, None, latency_p95_ms=None)
    assert "latency p95" not in [r.check for r in results]


# ------------------------------------------------------------------------------ passed


@pytest.mark.parametrize(
    ("statuses", "expected"),
    [
        ([], True),
        (["pass"], True),
        (["pass", "skip", "skip"], True),
        (["skip"], True),
        (["pass", "fail"], False),
        (["fail", "skip"], False),
    ],
)
def test_passed_means_no_check_failed(statuses, expected):
    results = [CheckResult(f"c{i}", s, "because") for i, s in enumerate(statuses)]
    assert passed(results) is expected


def test_a_worse_candidate_is_refused_end_to_end():
    params = gate(
        GateCheck(metric=NDCG, min=0.05),
        GateCheck(metric=NDCG, against="baselines", min_ratio=1.0),
        GateCheck(metric=NDCG, against="champion", min_ratio=0.95),
    )
    good, bad = metrics({"ndcg@10": 0.35}), metrics({"ndcg@10": 0.25})
    assert passed(run_checks(params, good, BASELINES, CHAMPION, latency_p95_ms=1.0))
    results = run_checks(params, bad, BASELINES, CHAMPION, latency_p95_ms=1.0)
    assert not passed(results)
    assert [r.status for r in results] == ["pass", "fail", "fail", "pass", "pass"]
    assert ExitCode.REFUSED == 4
    assert results[1].to_dict() == {
        "check": results[1].check,
        "status": "fail",
        "reason": results[1].reason,
    }


# ---------------------------------------------------------------------- unknown metrics


@pytest.mark.parametrize(
    ("path", "part"),
    [
        ("overall.hr@5", "hr@5"),
        ("slices.cold_items.mrr@10", "mrr@10"),
        ("overall.diversity@10", "diversity@10"),
    ],
)
def test_unknown_metric_path_names_what_was_not_computed(path, part):
    with pytest.raises(LmrecError, match=f"'{part}' was not computed") as err:
        run_checks(gate(GateCheck(metric=path, min=0.0)), metrics(), {}, None)
    assert path in str(err.value)
    assert "hr@10" in str(err.value)  # lists what is known at that level


def test_metric_missing_from_a_reference_is_not_compared_and_says_so():
    """A champion evaluated before a metric existed (e.g. ``slices.worst_user_group``)
    cannot be compared on it: the check says so instead of blocking every promotion; a
    typo in the candidate's own path still raises (above)."""
    check = GateCheck(metric=NDCG, against="champion", min_ratio=1.0)
    old = Reference("champion v1", {"overall": {"hr@10": 0.4}, "slices": {}})
    result = next(r for r in run_checks(gate(check), metrics(), {}, old) if "champion" in r.check)
    assert result.status == "pass"
    assert "champion v1 has no value to compare (not computed for it)" in result.reason


def test_metric_missing_slice_is_an_error():
    with pytest.raises(LmrecError, match="'long_tail' was not computed"):
        metric_value({"overall": {}, "slices": {"cold_items": {}}}, "slices.long_tail.hr@10")


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("overall.ndcg@10", 0.3),
        ("overall.n_users", 100.0),
        ("slices.cold_items.recall@10", 0.15),
        ("slices.short_history.mrr@10", 0.25),
    ],
)
def test_metric_value_reads_nested_paths(path, expected):
    assert metric_value(metrics(), path) == expected


def test_metric_value_of_none_is_nan():
    assert math.isnan(
        metric_value(metrics(cold_items={"ndcg@10": None}), "slices.cold_items.ndcg@10")
    )


# ------------------------------------------------------------------ GateCheck validation


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"metric": NDCG}, r"set one of \['max', 'min'\]"),
        ({"metric": NDCG, "min_ratio": 1.0}, r"set one of \['max', 'min'\]"),
        ({"metric": NDCG, "min": 0.1, "min_delta": 0.0}, r"\['min_delta'\] do not apply"),
        ({"metric": NDCG, "against": "baselines"}, "set one of"),
        ({"metric": NDCG, "against": "baselines", "min": 0.1}, "set one of"),
        (
            {"metric": NDCG, "against": "champion", "min_ratio": 0.9, "max": 1.0},
            r"\['max'\] do not apply",
        ),
        (
            {"metric": NDCG, "against": "champion", "min_ratio": 0.9, "baselines": ["mf"]},
            "'baselines' only applies against baselines",
        ),
        (
            {"metric": NDCG, "min": 0.1, "baselines": ["mf"]},
            "'baselines' only applies against baselines",
        ),
        ({"metric": NDCG, "against": "latest", "min": 0.1}, "against"),
        ({"metric": NDCG, "min": 0.1, "threshold": 0.2}, "threshold"),
    ],
)
def test_gate_check_rejects_bad_threshold_combinations(fields, message):
    with pytest.raises(ValidationError, match=message):
        GateCheck(**fields)


@pytest.mark.parametrize(
    "path",
    [
        "ndcg@10",
        "overall",
        "overall.",
        "overall.NDCG@10",
        "overall.ndcg@",
        "overall.ndcg@10.x",
        "slices.hr@10",
        "slices.cold.hr@10",
        "slices.cold_items",
        "candidate.overall.ndcg@10",
    ],
)
def test_gate_check_rejects_bad_metric_paths(path):
    with pytest.raises(ValidationError, match="metric"):
        GateCheck(metric=path, min=0.0)


@pytest.mark.parametrize(
    "fields",
    [
        {"metric": NDCG, "min": 0.1},
        {"metric": "slices.cold_items.recall@10", "max": 1.0},
        {"metric": "overall.n_users", "min": 1},
        {"metric": NDCG, "against": "baselines", "min_ratio": 1.0, "baselines": ["mf"]},
        {"metric": POP_BIAS, "against": "champion", "max_delta": 0.05, "max_ratio": 1.2},
    ],
)
def test_gate_check_accepts_good_checks(fields):
    assert GateCheck(**fields).metric == fields["metric"]


def test_gate_check_rejects_inverted_value_bounds():
    with pytest.raises(ValidationError):
        GateCheck(metric=NDCG, min=0.5, max=0.1)


@pytest.mark.parametrize(
    "fields", [{"max_nonfinite_share": 1.5}, {"max_nonfinite_share": -0.1}, {"unknown": 1}]
)
def test_gate_params_reject_bad_values(fields):
    with pytest.raises(ValidationError):
        GateParams(**fields)


# -------------------------------------------------------------------------- reasons


def test_every_result_has_a_reason_naming_its_metric():
    checks = [
        GateCheck(metric=NDCG, min=0.1),
        GateCheck(metric="slices.cold_items.hr@10", min=0.1),
        GateCheck(metric="slices.long_tail.hr@10", min=0.1),
        GateCheck(metric="overall.hr@10", against="baselines", min_ratio=1.0),
        GateCheck(metric="overall.mrr@10", against="baselines", min_delta=0.5),
        GateCheck(metric="slices.short_history.ndcg@10", against="baselines", min_ratio=1.0),
        GateCheck(metric=POP_BIAS, against="champion", max_delta=0.0),
        GateCheck(metric="overall.recall@20", against="champion", min_ratio=0.9),
    ]
    candidate = metrics(
        {"popularity_bias@10": 0.7, "n_nonfinite": 3},
        cold_items={"hr@10": None},
        long_tail={"hr@10": 0.05},
        short_history={"ndcg@10": None},
    )
    no_short = {"ndcg@10": None}
    baselines = {
        "popularity": metrics(short_history=no_short),
        "mf": metrics(short_history=no_short),
    }
    champion = Reference("champion v7", metrics())
    results = run_checks(gate(*checks), candidate, baselines, champion, latency_p95_ms=99.0)
    assert len(results) == len(checks) + 2
    for check, result in zip(checks, results[: len(checks)], strict=True):
        assert result.check.startswith(check.metric)
        assert check.metric in result.reason
        assert result.status in ("pass", "fail", "skip")
    assert {r.status for r in results} == {"pass", "fail", "skip"}
    for result in results:
        assert result.reason.strip()
    assert "non-finite" in results[-2].reason
    assert "p95" in results[-1].reason
