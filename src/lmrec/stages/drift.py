"""Drift stage: compare recent feedback with the training split; write ``drift.json``.

Not a DVC stage (the feedback log changes all the time); the ``lmrec_monitor`` Airflow
DAG runs it daily through ``lmrec drift`` and triggers a retrain when it reports drift:

    {"drifted": bool, "judged": bool, "reasons": [...], "metrics": {...},
     "thresholds": {...}, "n_events": ..., "window": {...}, "exit_code": 0 | 5}
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pandas as pd

from lmrec.config import MonitorParams
from lmrec.data.contract import pseudonymise
from lmrec.features.dataset import load_split
from lmrec.io import DataError, write_json
from lmrec.monitoring.drift import DRIFTED_EXIT_CODE, check_drift
from lmrec.serving.feedback import FeedbackStore

DRIFT_FILE = "drift.json"


def read_feedback(db: Path) -> pd.DataFrame:
    """Every event of the feedback log at ``db`` (raw user ids).

    Raises:
        DataError: the file is missing or is not a feedback log.
    """
    if not db.is_file():
        raise DataError(f"{db}: feedback database not found (serve.feedback_db / --feedback)")
    try:
        with FeedbackStore(db) as store:
            return store.to_frame()
    except sqlite3.Error as err:
        raise DataError(f"{db}: cannot be read as a feedback log: {err}") from err


def run(
    cfg: MonitorParams,
    split_dir: Path,
    feedback_db: Path,
    out_dir: Path,
    now: float | None = None,
) -> dict:
    """Check drift; write ``out_dir/drift.json``; return the report.

    Raises:
        DataError: the split or the feedback log is missing or unreadable.
    """
    if not (split_dir / "summary.json").is_file():
        raise DataError(f"{split_dir}: not a preprocess split (run `lmrec preprocess` first)")
    split = load_split(split_dir)
    events = read_feedback(feedback_db)
    events = events.assign(user_id=pseudonymise(events["user_id"]))
    report = check_drift(
        cfg, split.user_ids, split.items, events, time.time() if now is None else now
    )
    report = {
        **report,
        "split": str(split_dir),
        "feedback": str(feedback_db),
        "exit_code": DRIFTED_EXIT_CODE if report["drifted"] else 0,
    }
    write_json(out_dir / DRIFT_FILE, report)
    return report
