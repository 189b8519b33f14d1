"""Online metrics per variant: the served answers joined to what users did with them.

Pure functions over two frames (the stage ``lmrec.stages.online`` reads them from the
service's SQLite log and writes the report):

- ``impressions``: one row per item of a served ``/recommend`` answer (``request_id``,
  ``model_version``, ``variant``, ``item_id``, ``position``, ``timestamp``);
- ``events``: the feedback log (``request_id``, ``item_id``, ``event``, ``timestamp``).

An impression is *clicked* when the feedback log holds one of the positive events for its
``(request_id, item_id)``; a click and a purchase of the same impression count once. The
model version and variant come from the impression (what served the answer), never from
the feedback row, which names the model that was loaded when the feedback arrived.
Feedback without a ``request_id``, or on an item its answer did not hold, is counted
(``unmatched_events``) but joins nothing.

Per (model version, variant): impressions, answers, clicks, CTR = clicks / impressions with
a Wilson score interval. The challenger is tested against the champion with a two-sided
two-proportion z-test (pooled variance): ``better`` / ``worse`` when p < alpha, else
``no difference``; ``None`` (not judged) without a challenger or with fewer than
``min_impressions`` in either arm. Each arm is its variant's most recently served version.
The test treats impressions as independent; items of one answer, and answers of one user,
are not quite, so p-values near alpha are optimistic.

Offline against online: each version's CTR (its variants pooled) beside its offline
NDCG@10. A pair of versions where NDCG@10 ranks one above the other but the other's CTR is
significantly higher (the same z-test, at ``alpha``, both with ``min_impressions``) is a
disagreement; any disagreement is an alarm (``lmrec online-report`` exits
``ExitCode.DISAGREEMENT`` unless ``alarm_on_disagreement`` is off): the offline protocol
that gates every candidate no longer predicts what users do. An insignificant inversion
only shows in ``same_order``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from statistics import NormalDist
from typing import Any

import pandas as pd

from lmrec.config import OnlineParams

CHAMPION, CHALLENGER = "champion", "challenger"
IMPRESSION_COLUMNS = ("request_id", "model_version", "variant", "item_id", "timestamp")
EVENT_COLUMNS = ("request_id", "item_id", "event")


def wilson_interval(clicks: int, trials: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion; (nan, nan) for no trials."""
    if trials == 0:
        return math.nan, math.nan
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = clicks / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def two_proportion_test(x1: int, n1: int, x2: int, n2: int) -> tuple[float, float]:
    """(z, two-sided p) of H0: rate 1 == rate 2, pooled variance; z > 0 when 1 is higher.

    With no click (or only clicks) in both samples the rates cannot differ: (0.0, 1.0).
    """
    if n1 == 0 or n2 == 0:
        raise ValueError(f"a proportion test needs trials in both samples (got {n1}, {n2})")
    pooled = (x1 + x2) / (n1 + n2)
    variance = pooled * (1 - pooled) * (1 / n1 + 1 / n2)
    if variance == 0:
        return 0.0, 1.0
    z = (x1 / n1 - x2 / n2) / math.sqrt(variance)
    return z, math.erfc(abs(z) / math.sqrt(2))


def join_clicks(
    impressions: pd.DataFrame, events: pd.DataFrame, positive_events: list[str]
) -> tuple[pd.DataFrame, dict[str, int]]:
    """``impressions`` with a ``clicked`` column, and counts of the feedback joined.

    Raises:
        ValueError: a frame lacks a column the join needs.
    """
    _require(impressions, IMPRESSION_COLUMNS, "impressions")
    _require(events, EVENT_COLUMNS, "feedback events")
    positive = events[events["event"].isin(positive_events) & events["request_id"].notna()]
    keys = positive[["request_id", "item_id"]].drop_duplicates()
    served = impressions[["request_id", "item_id"]].drop_duplicates()
    matched = keys.merge(served, on=["request_id", "item_id"])
    keyed = pd.MultiIndex.from_frame(impressions[["request_id", "item_id"]])
    clicked = keyed.isin(pd.MultiIndex.from_frame(matched)) if len(matched) else False
    joined = impressions.assign(clicked=clicked)
    counts = {
        "positive_events": int(events["event"].isin(positive_events).sum()),
        "without_request_id": int(events["request_id"].isna().sum()),
        "unmatched_events": len(keys) - len(matched),
    }
    return joined, counts


def _require(frame: pd.DataFrame, columns: tuple[str, ...], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{what}: missing column(s) {missing}")


def arm_table(joined: pd.DataFrame, confidence: float) -> list[dict[str, Any]]:
    """One row per (model version, variant), most recently served first."""
    rows = []
    for (version, variant), group in joined.groupby(["model_version", "variant"], sort=False):
        clicks, shown = int(group["clicked"].sum()), len(group)
        low, high = wilson_interval(clicks, shown, confidence)
        rows.append(
            {
                "model_version": str(version),
                "variant": str(variant),
                "impressions": shown,
                "answers": int(group["request_id"].nunique()),
                "clicks": clicks,
                "ctr": clicks / shown,
                "ci_low": low,
                "ci_high": high,
                "first_served": float(group["timestamp"].min()),
                "last_served": float(group["timestamp"].max()),
            }
        )
    return sorted(rows, key=lambda r: -r["last_served"])


def compare(arms: list[dict[str, Any]], cfg: OnlineParams) -> dict[str, Any]:
    """The challenger's latest version against the champion's: the z-test and a verdict."""
    latest = {}
    for row in arms:  # most recent first: the first row of a variant is its current version
        latest.setdefault(row["variant"], row)
    out: dict[str, Any] = {"alpha": cfg.alpha, "verdict": None}
    if CHAMPION not in latest or CHALLENGER not in latest:
        missing = [v for v in (CHAMPION, CHALLENGER) if v not in latest]
        return {**out, "reason": f"not judged: no impression served by the {missing[0]}"}
    champ, chall = latest[CHAMPION], latest[CHALLENGER]
    out.update(champion=champ["model_version"], challenger=chall["model_version"])
    few = min(champ["impressions"], chall["impressions"])
    if few < cfg.min_impressions:
        reason = f"not judged: {few} impressions in an arm (min_impressions {cfg.min_impressions})"
        return {**out, "reason": reason}
    z, p = two_proportion_test(
        chall["clicks"], chall["impressions"], champ["clicks"], champ["impressions"]
    )
    verdict = "no difference" if p >= cfg.alpha else ("better" if z > 0 else "worse")
    lift = chall["ctr"] - champ["ctr"]
    reason = f"challenger CTR {chall['ctr']:.4f} vs champion {champ['ctr']:.4f}: p = {p:.3g}"
    return {
        **out,
        "z": z,
        "p_value": p,
        "ctr_difference": lift,
        "verdict": verdict,
        "reason": reason,
    }


def agreement(
    joined: pd.DataFrame, offline: Mapping[str, float | None], cfg: OnlineParams
) -> dict[str, Any]:
    """Each version's online CTR (every variant pooled) beside its offline NDCG@10, whether
    the two order the versions that have both the same way, and the pairs where they
    disagree significantly: offline NDCG@10 ranks version a above b, yet b's CTR is higher
    with p < ``cfg.alpha`` (two-proportion z-test; both with ``cfg.min_impressions``).
    Any such pair sets ``alarm``: offline evaluation no longer predicts what users do."""
    by_version = joined.groupby("model_version")["clicked"].agg(["sum", "count"])
    versions = []
    for version, row in by_version.iterrows():
        ndcg = offline.get(str(version))
        shown = int(row["count"])
        versions.append(
            {
                "model_version": str(version),
                "impressions": shown,
                "clicks": int(row["sum"]),
                "ctr": float(row["sum"]) / shown,
                "offline_ndcg@10": ndcg,
            }
        )
    both = [v for v in versions if v["offline_ndcg@10"] is not None]
    by_ctr = [v["model_version"] for v in sorted(both, key=lambda v: -v["ctr"])]
    by_ndcg = [v["model_version"] for v in sorted(both, key=lambda v: -v["offline_ndcg@10"])]
    alpha, min_impressions = cfg.alpha, cfg.min_impressions
    judged = [v for v in both if v["impressions"] >= min_impressions]
    disagreements = []
    for a in judged:  # a: better offline; b: better online
        for b in judged:
            if not (a["offline_ndcg@10"] > b["offline_ndcg@10"] and b["ctr"] > a["ctr"]):
                continue
            z, p = two_proportion_test(b["clicks"], b["impressions"], a["clicks"], a["impressions"])
            if p < alpha:
                disagreements.append(
                    {
                        "better_offline": a["model_version"],
                        "better_online": b["model_version"],
                        "offline_ndcg@10": [a["offline_ndcg@10"], b["offline_ndcg@10"]],
                        "ctr": [a["ctr"], b["ctr"]],
                        "z": z,
                        "p_value": p,
                    }
                )
    return {
        "versions": versions,
        "by_ctr": by_ctr,
        "by_offline_ndcg@10": by_ndcg,
        "same_order": by_ctr == by_ndcg if len(both) >= 2 else None,
        "alpha": alpha,
        "min_impressions": min_impressions,
        "judged_versions": [v["model_version"] for v in judged],
        "disagreements": disagreements,
        "alarm": bool(disagreements),
    }


def online_report(
    impressions: pd.DataFrame,
    events: pd.DataFrame,
    cfg: OnlineParams,
    offline: Mapping[str, float | None],
    now: float,
) -> dict[str, Any]:
    """The whole report: the window's impressions, arms, the test and the agreement.

    Args:
        impressions: the impression log (columns ``IMPRESSION_COLUMNS``).
        events: the feedback log (columns ``EVENT_COLUMNS``).
        cfg: the ``monitor.online`` params.
        offline: model version -> offline NDCG@10 (None: unknown).
        now: the window's end, unix seconds.
    """
    if cfg.window_days is not None:
        impressions = impressions[impressions["timestamp"] >= now - cfg.window_days * 86400]
    joined, counts = join_clicks(impressions, events, cfg.positive_events)
    arms = arm_table(joined, cfg.confidence)
    for row in arms:
        row["offline_ndcg@10"] = offline.get(row["model_version"])
    return {
        "window": {"days": cfg.window_days, "end": now},
        "positive_events": list(cfg.positive_events),
        "confidence": cfg.confidence,
        "impressions": len(joined),
        "clicks": int(joined["clicked"].sum()),
        "feedback": counts,
        "arms": arms,
        "test": compare(arms, cfg),
        "agreement": agreement(joined, offline, cfg),
    }
