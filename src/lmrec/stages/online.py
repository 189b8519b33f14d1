"""Online report: CTR per model version and variant from the service's logs; writes
``online.json`` and ``online.png``.

Not a DVC stage (the logs grow all the time); ``lmrec online-report`` runs it and the
``lmrec_monitor`` DAG runs that daily beside the drift check. It reads the impression log
and the feedback log (one SQLite file, ``serve.feedback_db``) read-only while the service
writes to them, and each served version's offline NDCG@10 from the MLflow registry (the
version's ``metric.<stage>.overall.ndcg_at_10`` tag, the gated candidate's test metric).
The command holds the workspace's pipeline lock, as ``lmrec drift`` does. ``online.json``::

    {"window": {...}, "positive_events": [...], "confidence": 0.95,
     "impressions": int, "clicks": int, "feedback": {...},
     "arms": [{"model_version", "variant", "impressions", "answers", "clicks", "ctr",
               "ci_low", "ci_high", "first_served", "last_served", "offline_ndcg@10"}],
     "test": {"champion", "challenger", "z", "p_value", "verdict", "reason", ...},
     "agreement": {"versions": [...], "by_ctr": [...], "by_offline_ndcg@10": [...],
                   "same_order": bool | null, "alpha", "min_impressions",
                   "judged_versions": [...], "disagreements": [{"better_offline",
                   "better_online", "offline_ndcg@10", "ctr", "z", "p_value"}],
                   "alarm": bool},
     "notes": [...], "feedback_db": str, "registry": str | null}
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from lmrec.artifacts import ONLINE_FILE, ONLINE_PLOT
from lmrec.config import OnlineParams
from lmrec.data.feedback import IMPRESSIONS_TABLE, TABLE
from lmrec.io import DataError, atomic_path, json_safe, write_json
from lmrec.monitoring.online import EVENT_COLUMNS, IMPRESSION_COLUMNS, online_report

OFFLINE_METRIC = "overall.ndcg@10"


def read_logs(db: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(impressions, feedback events) of the log at ``db``, read-only.

    Raises:
        DataError: the file is missing, empty, not SQLite, or lacks either table.
    """
    if not db.is_file():
        raise DataError(f"{db}: feedback database not found (serve.feedback_db / --feedback)")
    if db.stat().st_size == 0:
        raise DataError(f"{db}: feedback database is empty (0 bytes)")
    queries = {
        IMPRESSIONS_TABLE: f"SELECT {', '.join(IMPRESSION_COLUMNS)} FROM {IMPRESSIONS_TABLE}",
        TABLE: f"SELECT {', '.join(EVENT_COLUMNS)} FROM {TABLE}",
    }
    frames = {}
    try:
        conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
        try:
            for table, sql in queries.items():
                found = conn.execute(
                    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)
                ).fetchone()
                if not found:
                    raise DataError(f"{db}: no {table} table (not a feedback log of this lmrec)")
                frames[table] = pd.read_sql_query(sql, conn)
        finally:
            conn.close()
    except (sqlite3.Error, pd.errors.DatabaseError) as err:
        raise DataError(f"{db}: cannot be read as a feedback log: {err}") from err
    impressions = frames[IMPRESSIONS_TABLE].astype({"timestamp": "float64"})
    return impressions.astype({"model_version": str, "variant": str}), frames[TABLE]


def offline_ndcg(uri: str, model_name: str, stage: str) -> tuple[dict[str, float], list[str]]:
    """Registered version number (as the service names it) -> its offline NDCG@10, and
    notes on what could not be read. A SQLite registry that does not exist is not created.

    Raises:
        LmrecError: the registry cannot be read.
    """
    from lmrec.registry.store import Registry, store_exists

    if not store_exists(uri):
        return {}, [f"offline NDCG@10: no registry at {uri}"]

    out, notes = {}, []
    for version in Registry(uri, model_name).versions():
        value = version.metric(OFFLINE_METRIC, stage)
        if value is None:
            notes.append(f"offline NDCG@10: version {version.number} has no {stage} metric")
            continue
        out[str(version.number)] = value
    return out, notes


def draw(report: Mapping[str, Any], path: Path) -> None:
    """Two panels: CTR per (version, variant) with its interval; online CTR against
    offline NDCG@10 per version. Written atomically."""
    from matplotlib.figure import Figure  # heavy: only when a report is drawn

    fig = Figure(figsize=(11.0, 4.5), dpi=100, layout="constrained")
    ax_ctr, ax_agree = fig.subplots(1, 2)
    arms = report["arms"]
    labels = [f"v{a['model_version']}\n{a['variant']}" for a in arms]
    ctr = [a["ctr"] for a in arms]
    errors = [[a["ctr"] - a["ci_low"] for a in arms], [a["ci_high"] - a["ctr"] for a in arms]]
    colors = ["C1" if a["variant"] == "challenger" else "C0" for a in arms]
    ax_ctr.bar(range(len(arms)), ctr, yerr=errors, color=colors, capsize=4)
    ax_ctr.set_xticks(range(len(arms)), labels)
    pct = round(100 * report["confidence"])
    ax_ctr.set(ylabel="CTR (clicked impressions)", title=f"online CTR, {pct}% Wilson interval")
    if arms:  # headroom for the test's line above the highest interval
        ax_ctr.set_ylim(0, 1.2 * max(a["ci_high"] for a in arms) or 1.0)
    else:
        ax_ctr.text(
            0.5, 0.5, "no impressions in the window", ha="center", transform=ax_ctr.transAxes
        )
    ax_ctr.text(
        0.01,
        0.98,
        f"test: {report['test']['reason']}",
        va="top",
        fontsize=8,
        transform=ax_ctr.transAxes,
        wrap=True,
    )
    both = [v for v in report["agreement"]["versions"] if v["offline_ndcg@10"] is not None]
    ax_agree.scatter([v["offline_ndcg@10"] for v in both], [v["ctr"] for v in both])
    for v in both:
        ax_agree.annotate(f"v{v['model_version']}", (v["offline_ndcg@10"], v["ctr"]))
    same = report["agreement"]["same_order"]
    ax_agree.set(
        xlabel="offline NDCG@10 (registry)",
        ylabel="online CTR",
        title=f"offline vs online (same order: {same})",
    )
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


@dataclass(frozen=True)
class RegistrySource:
    """Read the served versions' offline NDCG@10 from this MLflow registry (``offline_ndcg``)."""

    uri: str
    model_name: str
    stage: str = "test"


def run(
    cfg: OnlineParams,
    feedback_db: Path,
    out_dir: Path,
    offline: Mapping[str, float] | RegistrySource | None = None,
    now: float | None = None,
) -> dict[str, Any]:
    """Report the window's online metrics; write ``out_dir/online.json`` and ``online.png``.

    Args:
        cfg: the ``monitor.online`` params.
        feedback_db: the service's log (impressions and feedback events).
        out_dir: where the two files go.
        offline: model version -> offline NDCG@10, or the registry to read it from (after
            the logs, so a bad log fails before MLflow is loaded); none known by default.
        now: the window's end (default: now).

    Raises:
        DataError: the log is missing or unreadable.
        LmrecError: the registry cannot be read.
    """
    impressions, events = read_logs(feedback_db)
    now = time.time() if now is None else now
    notes, registry = [], None
    if isinstance(offline, RegistrySource):
        registry = offline.uri
        offline, notes = offline_ndcg(offline.uri, offline.model_name, offline.stage)
    report = online_report(impressions, events, cfg, offline or {}, now)
    p_value = report["test"].get("p_value")  # json_safe's rounding would turn 1e-9 into 0
    pair_p = [pair["p_value"] for pair in report["agreement"]["disagreements"]]
    where = {"notes": notes, "feedback_db": str(feedback_db), "registry": registry}
    report = json_safe({**report, **where})
    if p_value is not None:
        report["test"]["p_value"] = p_value
    for pair, p in zip(report["agreement"]["disagreements"], pair_p, strict=True):
        pair["p_value"] = p
    draw(report, out_dir / ONLINE_PLOT)
    write_json(out_dir / ONLINE_FILE, report)
    return report
