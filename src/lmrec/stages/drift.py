"""Drift stage: compare recent feedback with the training split; write ``drift.json``.

Not a DVC stage (the feedback log changes all the time); the ``lmrec_monitor`` Airflow
DAG runs it daily through ``lmrec drift`` and triggers a retrain when it reports drift:

    {"drifted": bool, "judged": bool, "reasons": [...], "metrics": {...},
     "thresholds": {...}, "notes": [...], "n_events": ..., "window": {...},
     "score_model": str | null, "model_age": {...}, "stale": bool, "exit_code": 0 | 5 | 6}

``score_shift`` (see ``lmrec.monitoring.drift``) scores histories with the model at
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

import numpy as np
import pandas as pd

from lmrec.config import MonitorParams
from lmrec.exit_codes import ExitCode
from lmrec.features.dataset import SplitData, load_split
from lmrec.io import DataError, write_json
from lmrec.models.base import Recommender
from lmrec.monitoring.drift import (
    check_drift,
    model_age,
    rank_percentiles,
    recent_events,
    score_shift,
)
from lmrec.serving.feedback import FeedbackStore

DRIFT_FILE = "drift.json"
#: ``monitor.score_model`` naming the served champion (``champion_model``).
CHAMPION_MODEL = "champion"
#: Histories scored per model call (bounds memory to [SCORE_BATCH, n_items] scores).
SCORE_BATCH = 256


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


def percentiles(
    model: Recommender, histories: list[np.ndarray], rows: np.ndarray, items: np.ndarray
) -> np.ndarray:
    """Rank percentile of ``items[k]`` given ``histories[rows[k]]``, each history scored once.

    Args:
        model: a fitted recommender.
        histories: item-index histories, scored ``SCORE_BATCH`` at a time.
        rows: per event, the index of its history in ``histories``.
        items: per event, the item index whose rank is wanted.
    """
    out = np.empty(len(items), dtype=np.float64)
    for start in range(0, len(histories), SCORE_BATCH):
        scores = model.score(histories[start : start + SCORE_BATCH], allow_nonfinite=True)
        mine = np.flatnonzero((rows >= start) & (rows < start + SCORE_BATCH))
        for lo in range(0, len(mine), SCORE_BATCH):
            chunk = mine[lo : lo + SCORE_BATCH]
            out[chunk] = rank_percentiles(scores[rows[chunk] - start], items[chunk])
    return out


def live_events(split: SplitData, window: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(user index, item index) of the window's events by split users on catalog items.

    Args:
        split: the monitored split.
        window: the window's events (pseudonymised ``user_id``, ``item_id``).
    """
    user_index = pd.Series(np.arange(split.n_users), index=split.user_ids)
    item_index = pd.Series(split.items["item_idx"].to_numpy(), index=split.items["item_id"])
    users = window["user_id"].map(user_index).to_numpy(dtype=np.float64)
    items = window["item_id"].map(item_index).to_numpy(dtype=np.float64)
    known = ~np.isnan(users) & ~np.isnan(items)
    return users[known].astype(np.int64), items[known].astype(np.int64)


def reference_sample(model: Recommender, split: SplitData) -> np.ndarray:
    """Rank percentile of each user's test item given the user's test-time history."""
    tested = np.flatnonzero(split.test_items >= 0)
    histories = [split.history_for(int(u), "test") for u in tested]
    return percentiles(model, histories, np.arange(len(tested)), split.test_items[tested])


def live_sample(
    model: Recommender, split: SplitData, users: np.ndarray, items: np.ndarray
) -> np.ndarray:
    """Rank percentile of each event's item given everything the split knows about its
    user: the test-time history followed by the test item (when the user has one)."""
    distinct, rows = np.unique(users, return_inverse=True)
    histories = []
    for u in distinct:
        hist, test = split.history_for(int(u), "test"), split.test_items[u]
        histories.append(np.append(hist, test) if test >= 0 else hist)
    return percentiles(model, histories, rows, items)


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
    from lmrec.stages.package import PACKAGE_FILE

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


def model_score_shift(
    cfg: MonitorParams,
    split: SplitData,
    split_dir: Path,
    window: pd.DataFrame,
    champion_dir: Path | None = None,
    champion_label: str = "",
) -> tuple[dict[str, float], list[str]]:
    """({"score_shift": value} or {}, notes saying why it was left out).

    Args:
        champion_dir: with ``monitor.score_model: champion``, the champion's downloaded
            model (``champion_model``), scored through the split's catalog (it may have
            been trained on an earlier one); None: ``champion_label`` says why not.

    Raises:
        DataError: a ``score_model`` path scores another catalog than the split's.
        ModelLoadError: the model directory is not a saved model.
    """
    if cfg.score_model is None:
        return {}, ["score_shift: off (monitor.score_model is null)"]
    from lmrec.models.registry import load_model  # torch: only when a model is scored
    from lmrec.stages.train import ITEM_IDS_FILE

    if cfg.score_model == CHAMPION_MODEL:
        if champion_dir is None:
            return {}, [f"score_shift: skipped, {champion_label or 'no champion'}"]
        from lmrec.evaluation.scorers import CatalogScorer

        model = load_model(champion_dir)
        model_ids = [str(i) for i in json.loads((champion_dir / ITEM_IDS_FILE).read_text())]
        model = CatalogScorer(model, model_ids, split.items["item_id"].astype(str))
        return _shift(cfg, split, window, model)
    path = Path(cfg.score_model).resolve()
    if not path.is_dir():
        return {}, [f"score_shift: skipped, no model at {path} (train first)"]
    model = load_model(path)
    if model.n_items != split.n_items:
        raise DataError(
            f"{path}: the model scores {model.n_items} items but the split {split_dir} has "
            f"{split.n_items}; monitor.score_model must be trained on the monitored split"
        )
    ids_file = path / ITEM_IDS_FILE
    if ids_file.is_file():  # as the train stage writes it: the split's item ids by index
        split_ids = split.items["item_id"].astype(str).tolist()
        model_ids = [str(i) for i in json.loads(ids_file.read_text())]
        if model_ids != split_ids:
            raise DataError(
                f"{ids_file}: the model's catalog differs from the split {split_dir}'s "
                "(same size, other items or order); monitor.score_model must be trained "
                "on the monitored split"
            )
    return _shift(cfg, split, window, model)


def _shift(cfg: MonitorParams, split: SplitData, window: pd.DataFrame, model) -> tuple:
    users, items = live_events(split, window)
    if len(users) < cfg.min_events:
        return {}, [
            f"score_shift: skipped, only {len(users)} window event(s) by split users on "
            f"catalog items (min_events {cfg.min_events})"
        ]
    reference = reference_sample(model, split)
    if not len(reference):
        return {}, ["score_shift: skipped, the split has no test items"]
    live = live_sample(model, split, users, items)
    return {"score_shift": score_shift(reference, live, cfg.score_bins)}, []


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
    if not (split_dir / "summary.json").is_file():
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
