"""The promotion gate: value and change thresholds, non-finite scores, a latency budget.

Pure logic over metric dicts (the evaluate stage's ``evaluate_protocol`` results), so every
rule is unit-tested without a model or a registry. One ``CheckResult`` per check, each with
a readable reason; the candidate passes only when no check fails. Checks against the
champion are skipped (not failed) when there is no champion yet, or when the candidate *is*
the champion (re-running the gate on the promoted model changes nothing).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from lmrec.config import GateCheck, GateParams
from lmrec.exit_codes import ExitCode
from lmrec.io import DataError, LmrecError

Status = Literal["pass", "fail", "skip"]


@dataclass(frozen=True)
class CheckResult:
    """One check's outcome and the sentence that explains it."""

    check: str
    status: Status
    reason: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass(frozen=True)
class Reference:
    """A model the candidate is compared with: a label and its metrics."""

    label: str
    metrics: Mapping[str, Any]


def metric_value(metrics: Mapping[str, Any], path: str) -> float:
    """``"overall.ndcg@10"`` / ``"slices.cold_items.recall@10"`` /
    ``"served.new_items.hr@10"`` -> the number (NaN if None).

    Raises:
        LmrecError: the path names a metric the evaluation did not compute.
    """
    node: Any = metrics
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            known = sorted(node) if isinstance(node, Mapping) else []
            raise LmrecError(
                f"params.yaml: gate check metric {path!r}: {part!r} was not computed "
                f"(known here: {', '.join(map(str, known))})"
            )
        node = node[part]
    return float("nan") if node is None else float(node)


def _fmt(value: float) -> str:
    return "nan" if math.isnan(value) else f"{value:.4f}"


def _ratio(candidate: float, reference: float) -> float:
    if reference == 0:
        return 1.0 if candidate == 0 else math.copysign(math.inf, candidate)
    return candidate / reference


def _value_check(check: GateCheck, value: float) -> CheckResult:
    name = f"{check.metric} value"
    if math.isnan(value):
        return CheckResult(name, "fail", f"{check.metric} is NaN (no users in the slice?)")
    bounds = []
    ok = True
    if check.min is not None:
        ok &= value >= check.min
        bounds.append(f">= {check.min:g}")
    if check.max is not None:
        ok &= value <= check.max
        bounds.append(f"<= {check.max:g}")
    verdict = "meets" if ok else "misses"
    reason = f"{check.metric} {_fmt(value)} {verdict} the bound {' and '.join(bounds)}"
    return CheckResult(name, "pass" if ok else "fail", reason)


def _change_parts(check: GateCheck, value: float, ref: float) -> list[tuple[bool, str]]:
    """Each configured change threshold: (holds, "0.81 >= 0.9 x 0.86 = 0.77")."""
    parts = []
    delta, ratio = value - ref, _ratio(value, ref)
    if check.min_delta is not None:
        parts.append((delta >= check.min_delta, f"change {delta:+.4f} >= {check.min_delta:+g}"))
    if check.max_delta is not None:
        parts.append((delta <= check.max_delta, f"change {delta:+.4f} <= {check.max_delta:+g}"))
    if check.min_ratio is not None:
        parts.append((ratio >= check.min_ratio, f"ratio {ratio:.3f} >= {check.min_ratio:g}"))
    if check.max_ratio is not None:
        parts.append((ratio <= check.max_ratio, f"ratio {ratio:.3f} <= {check.max_ratio:g}"))
    return parts


def _reference_value(ref: Reference, path: str) -> float:
    """A reference's value of ``path``; NaN when it was never computed for it (a champion
    evaluated before the metric existed): the candidate's own value raised on a typo."""
    try:
        return metric_value(ref.metrics, path)
    except LmrecError:
        return float("nan")


def _change_check(check: GateCheck, value: float, refs: list[Reference]) -> CheckResult:
    name = f"{check.metric} vs {check.against}"
    if math.isnan(value):
        ref_values = [_reference_value(ref, check.metric) for ref in refs]
        if all(math.isnan(v) for v in ref_values):
            reason = f"{check.metric}: no users in this slice for any model, not compared"
            return CheckResult(name, "skip", reason)
        return CheckResult(name, "fail", f"{check.metric} is NaN (no users in the slice?)")
    failures, passes = [], []
    for ref in refs:
        ref_value = _reference_value(ref, check.metric)
        if math.isnan(ref_value):
            passes.append(f"{ref.label} has no value to compare (not computed for it)")
            continue
        for holds, text in _change_parts(check, value, ref_value):
            line = f"{_fmt(value)} vs {ref.label} {_fmt(ref_value)}: {text}"
            (passes if holds else failures).append(line)
    if failures:
        return CheckResult(name, "fail", f"{check.metric}: " + "; ".join(failures))
    return CheckResult(name, "pass", f"{check.metric}: " + "; ".join(passes))


def run_checks(
    params: GateParams,
    candidate: Mapping[str, Any],
    baselines: Mapping[str, Mapping[str, Any]],
    champion: Reference | None,
    *,
    champion_is_candidate: bool = False,
    latency_p95_ms: float | None = None,
) -> list[CheckResult]:
    """Every configured check, the non-finite-score check and the latency check.

    Args:
        params: the ``gate`` params block.
        candidate: the candidate's ``evaluate_protocol`` result.
        baselines: baseline name -> its ``evaluate_protocol`` result.
        champion: the current champion's label and metrics on the same split, or None.
        champion_is_candidate: the champion is this very model (same digest).
        latency_p95_ms: measured p95 scoring time of one request (None: not measured).

    Raises:
        LmrecError: a check names a baseline that was not trained or a metric not computed.
    """
    results = []
    for check in params.checks:
        value = metric_value(candidate, check.metric)
        if check.against == "value":
            results.append(_value_check(check, value))
        elif check.against == "baselines":
            names = check.baselines or sorted(baselines)
            missing = sorted(set(names) - set(baselines))
            if missing:
                raise LmrecError(
                    f"params.yaml: gate check {check.metric}: baselines {missing} were not "
                    f"trained (trained: {', '.join(sorted(baselines)) or 'none'})"
                )
            if not names:
                raise LmrecError(f"params.yaml: gate check {check.metric}: no baselines trained")
            refs = [Reference(f"baseline {n}", baselines[n]) for n in names]
            results.append(_change_check(check, value, refs))
        else:
            name = f"{check.metric} vs champion"
            if champion is None:
                reason = f"{check.metric}: no champion yet (first registration), not compared"
                results.append(CheckResult(name, "skip", reason))
            elif champion_is_candidate:
                reason = f"{check.metric}: the candidate is the {champion.label} already"
                results.append(CheckResult(name, "skip", reason))
            else:
                results.append(_change_check(check, value, [champion]))
    results.append(_nonfinite_check(params, candidate))
    if latency_p95_ms is not None:
        budget = params.latency.p95_ms
        ok = latency_p95_ms <= budget
        reason = (
            f"p95 scoring time per request {latency_p95_ms:.2f} ms "
            f"{'<=' if ok else '>'} the budget {budget:g} ms"
        )
        results.append(CheckResult("latency p95", "pass" if ok else "fail", reason))
    return results


def _nonfinite_check(params: GateParams, candidate: Mapping[str, Any]) -> CheckResult:
    overall = candidate["overall"]
    n_users, bad = int(overall.get("n_users", 0)), int(overall.get("n_nonfinite", 0))
    share = bad / n_users if n_users else 0.0
    ok = share <= params.max_nonfinite_share
    reason = (
        f"{bad} of {n_users} users got non-finite scores (share {share:.4f}, "
        f"allowed {params.max_nonfinite_share:g}); they count as misses"
    )
    return CheckResult("non-finite scores", "pass" if ok else "fail", reason)


def passed(results: list[CheckResult]) -> bool:
    return not any(r.status == "fail" for r in results)


class GateRefused(LmrecError):
    """The gate refused the candidate: nothing after the gate runs (exit code 4)."""

    exit_code = ExitCode.REFUSED


def require_pass(
    verdict: Mapping[str, Any], digest: str, source: str | Path, model: str | Path
) -> None:
    """Go on only when ``verdict`` (a ``gate.json``) passed the model with ``digest``.

    Args:
        verdict: the gate stage's report.
        digest: ``model_digest`` of the candidate about to be refit or registered.
        source: the verdict's file, named in the errors.
        model: the candidate's directory, named in the errors.

    Raises:
        DataError: the verdict judged another model (it is stale: re-run the gate).
        GateRefused: the gate refused this candidate; the message lists why.
    """
    if verdict.get("candidate_digest") != digest:
        raise DataError(f"{source}: judged another model than {model}; re-run the gate")
    if not verdict.get("passed"):
        failed = [c["reason"] for c in verdict.get("checks", []) if c["status"] == "fail"]
        raise GateRefused("the gate refused this candidate:\n  " + "\n  ".join(failed))
