"""``score_shift`` with a saved model: the scoring pass behind the drift check's model metric.

``lmrec.monitoring.drift`` holds the statistic (``rank_percentiles``, ``score_shift``) and
stays free of models; this module loads the model named by ``monitor.score_model``, checks
it scores the monitored split's catalog, and ranks two samples with it:

- the reference: each user's held-out test item given the user's test-time history;
- the live sample: each window event's item, for events by split users on catalog items,
  given that user's full history in the split (test-time history plus the test item).

``monitor.score_model`` is ``champion`` (the served champion, downloaded by the caller and
passed in as a directory), a model directory trained on the monitored split, or null (the
metric is off). Torch is imported only when a model is loaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from lmrec.artifacts import ITEM_IDS_FILE, read_item_ids
from lmrec.config import MonitorParams
from lmrec.features.dataset import SplitData
from lmrec.io import DataError
from lmrec.monitoring.drift import rank_percentiles, score_shift

if TYPE_CHECKING:
    from lmrec.models.base import Recommender

#: ``monitor.score_model`` naming the served champion.
CHAMPION_MODEL = "champion"
#: Histories scored per model call (bounds memory to [SCORE_BATCH, n_items] scores).
SCORE_BATCH = 256


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


def measure(
    cfg: MonitorParams, split: SplitData, window: pd.DataFrame, model: Recommender
) -> tuple[dict[str, float], list[str]]:
    """({"score_shift": value} or {}, notes): ``model`` ranking the window against the split.

    Left out, with a note, when fewer than ``cfg.min_events`` window events are by split
    users on catalog items, or when the split has no test items.
    """
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
        cfg: the ``monitor`` params block (``score_model`` names the model).
        split: the monitored split, loaded from ``split_dir`` (named in errors).
        window: the window's events (pseudonymised ``user_id``, ``item_id``).
        champion_dir: with ``monitor.score_model: champion``, the champion's downloaded
            model, scored through the split's catalog (it may have been trained on an
            earlier one); None: ``champion_label`` says why not.
        champion_label: what the champion is, or why there is none.

    Raises:
        DataError: a ``score_model`` path scores another catalog than the split's.
        ModelLoadError: the model directory is not a saved model.
    """
    if cfg.score_model is None:
        return {}, ["score_shift: off (monitor.score_model is null)"]
    from lmrec.models.registry import load_model  # torch: only when a model is scored

    if cfg.score_model == CHAMPION_MODEL:
        if champion_dir is None:
            return {}, [f"score_shift: skipped, {champion_label or 'no champion'}"]
        from lmrec.evaluation.scorers import CatalogScorer

        model = load_model(champion_dir)
        model_ids = read_item_ids(champion_dir)
        model = CatalogScorer(model, model_ids, split.items["item_id"].astype(str))
        return measure(cfg, split, window, model)
    path = Path(cfg.score_model).resolve()
    if not path.is_dir():
        return {}, [f"score_shift: skipped, no model at {path} (train first)"]
    model = load_model(path)
    require_split_catalog(model, path, split, split_dir)
    return measure(cfg, split, window, model)


def require_split_catalog(
    model: Recommender, model_dir: Path, split: SplitData, split_dir: Path
) -> None:
    """Raise unless the model at ``model_dir`` scores the split's items, in its order.

    The order is checked when the directory has its item ids (as the train stage writes
    them: the split's item ids by index).

    Raises:
        DataError: another number of items, or other ids or order.
    """
    if model.n_items != split.n_items:
        raise DataError(
            f"{model_dir}: the model scores {model.n_items} items but the split {split_dir} "
            f"has {split.n_items}; monitor.score_model must be trained on the monitored split"
        )
    ids_file = model_dir / ITEM_IDS_FILE
    split_ids = split.items["item_id"].astype(str).tolist()
    if ids_file.is_file() and read_item_ids(model_dir) != split_ids:
        raise DataError(
            f"{ids_file}: the model's catalog differs from the split {split_dir}'s "
            "(same size, other items or order); monitor.score_model must be trained "
            "on the monitored split"
        )
