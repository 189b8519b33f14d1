"""Drift stage: compare recent feedback with the training split; write ``drift.json``.

Not a DVC stage (the feedback log changes all the time); the ``lmrec_monitor`` Airflow
DAG runs it daily through ``lmrec drift`` and triggers a retrain when it reports drift:

    {"drifted": bool, "judged": bool, "reasons": [...], "metrics": {...},
     "thresholds": {...}, "notes": [...], "n_events": ..., "window": {...},
     "score_model": str | null, "model_age": {...}, "stale": bool, "exit_code": 0 | 5 | 6}

``score_shift`` (``lmrec.monitoring.score_shift``) scores histories with the model at
``monitor.score_model``; ``notes`` says why it is missing from ``metrics`` when it is. Its
default, ``champion``, is the model users get: the packaged champion's version
(``artifacts/package/package.json``; the registry's champion before anything is packaged),
in the form its version was evaluated in (``champion_model``): after a gate refusal
``artifacts/train/model`` is the refused candidate, which nobody is served.
``model_age`` is the registry champion's age (``monitoring.drift.model_age``): older than
``monitor.max_model_age_days`` it is stale, exit 6 unless the data drifted (exit 5).
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import pandas as pd

from lmrec.artifacts import DRIFT_FILE, PACKAGE_FILE, SPLIT_SUMMARY_FILE
from lmrec.config import MonitorParams
from lmrec.exit_codes import ExitCode
from lmrec.features.dataset import load_split
from lmrec.io import DataError, write_json
from lmrec.monitoring.drift import check_drift, model_age, recent_events
from lmrec.monitoring.score_shift import CHAMPION_MODEL, model_score_shift
from lmrec.serving.feedback import FeedbackStore


def read_feedback(db: Path) -> pd.DataFrame:
    """Every event of the feedback log at ``db`` (pseudonymised user ids).

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


def champion_model(
    registry_uri: str, model_name: str, package_dir: Path, dst: Path
) -> tuple[Path | None, str]:
    """The served champion's model, downloaded into ``dst``: (its directory or None, what
    it is / why there is none).

    The version is the packaged champion's (``package_dir/package.json``), else the
    registry's ``champion`` alias. It comes in its evaluated form (the candidate the
    version's metrics describe, trained without the split's test rows), so the reference
    sample of ``score_shift`` stays out of sample; a refit's served weights learned those
    rows. An unreadable registry is a reason, not an error: the other drift metrics go on.
    """
    from lmrec.io import LmrecError
    from lmrec.registry.store import CHAMPION, Registry, store_exists

    if not store_exists(registry_uri):
        return None, f"no registry at {registry_uri}"

    record = package_dir / PACKAGE_FILE
    number = None
    if record.is_file():
        number = json.loads(record.read_text()).get("models", {}).get(CHAMPION, {}).get("version")
    try:
        registry = Registry(registry_uri, model_name)
        if number is None:
            found = registry.alias(CHAMPION)
            number = None if found is None else found.number
        if number is None:
            return None, f"no champion in the registry at {registry_uri}"
        return registry.download(int(number), dst), f"champion v{number}"
    except LmrecError as err:
        return None, f"the champion could not be read from the registry: {err}"


def run(
    cfg: MonitorParams,
    split_dir: Path,
    feedback_db: Path,
    out_dir: Path,
    now: float | None = None,
    champion: tuple[int, float | None] | None = None,
    champion_dir: Path | None = None,
    champion_label: str = "",
) -> dict:
    """Check drift and the champion's age; write ``out_dir/drift.json``; return the report.

    Args:
        champion: (version, unix seconds it was registered) of the registry's champion;
            None when there is none (its age is then not judged).
        champion_dir, champion_label: the served champion's model for ``score_shift``
            under ``monitor.score_model: champion`` (``champion_model``).

    Raises:
        DataError: the split or the feedback log is missing or unreadable, or the
            ``score_model`` does not match the split's catalog.
        ModelLoadError: ``score_model`` exists but is not a saved model.
    """
    if not (split_dir / SPLIT_SUMMARY_FILE).is_file():
        raise DataError(f"{split_dir}: not a preprocess split (run `lmrec preprocess` first)")
    split = load_split(split_dir)
    events = read_feedback(feedback_db)  # user ids as the split has them: pseudonymised
    now = time.time() if now is None else now
    scored, notes = {}, []
    window = recent_events(events, cfg.window_days, now)
    if len(window) >= cfg.min_events:  # else nothing is judged: skip the scoring pass
        scored, notes = model_score_shift(
            cfg, split, split_dir, window, champion_dir, champion_label
        )
    report = check_drift(cfg, split.user_ids, split.items, events, now, scored, notes)
    age = model_age(*(champion or (None, None)), now, cfg.max_model_age_days)
    exit_code = (
        ExitCode.DRIFTED if report["drifted"] else ExitCode.STALE if age["stale"] else ExitCode.OK
    )
    report = {
        **report,
        "split": str(split_dir),
        "feedback": str(feedback_db),
        "score_model": _score_model_name(cfg, champion_label),
        "model_age": age,
        "stale": age["stale"],
        "exit_code": int(exit_code),
    }
    write_json(out_dir / DRIFT_FILE, report)
    return report


def _score_model_name(cfg: MonitorParams, champion_label: str) -> str | None:
    if cfg.score_model is None:
        return None
    if cfg.score_model == CHAMPION_MODEL:
        return f"champion ({champion_label})" if champion_label else CHAMPION_MODEL
    return str(Path(cfg.score_model).resolve())
