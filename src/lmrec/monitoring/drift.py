"""Drift between the training snapshot and recent feedback events: pure functions.

The training side is the preprocess split (pseudonymised user ids; the item table with
``item_id`` and ``n_train``, the training interactions per item). The live side is the
feedback log the service appends to (raw user ids, float unix-second timestamps), of which
only the last ``window_days`` count. Four metrics, each in [0, 1] with a ``max_*``
threshold in the ``monitor`` params block:

- ``unseen_user_rate``: share of the window's distinct users absent from training;
- ``unseen_item_rate``: share of the window's events on items not in the catalog;
- ``popularity_shift``: Jensen-Shannon distance (base 2) between the training and the
  feedback distributions over popularity bins (the catalog ranked by training
  interactions, cut into ``popularity_bins`` equal-size bins). Bins, not single items:
  a few hundred events spread over thousands of items look far from any distribution
  by sampling noise alone (a 400-event sample of MovieLens' own training distribution is
  0.64 away item by item, under 0.1 over 10 bins);
- ``catalog_churn``: share of the window's catalog events on items with no training
  interaction (the cold items, or items added since).

No score-distribution check: it would need the model (torch) and a scoring pass, and the
four data metrics already say when the model is stale. The verdict is ``drifted`` when any
metric exceeds its threshold; with fewer than ``min_events`` events nothing is judged.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import pandas as pd

from lmrec.config import MonitorParams

#: Exit code of ``lmrec drift`` when drift is detected (0: no drift).
DRIFTED_EXIT_CODE = 5

#: metric name -> the ``monitor`` params field holding its threshold.
THRESHOLDS = {
    "unseen_user_rate": "max_unseen_user_rate",
    "unseen_item_rate": "max_unseen_item_rate",
    "popularity_shift": "max_popularity_shift",
    "catalog_churn": "max_catalog_churn",
}


def recent_events(events: pd.DataFrame, window_days: float, now: float) -> pd.DataFrame:
    """The events with ``now - window_days`` <= timestamp <= ``now``."""
    start = now - window_days * 86_400
    ts = events["timestamp"].astype("float64")
    return events[(ts >= start) & (ts <= now)]


def js_distance(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon distance (base 2: 0 identical, 1 disjoint) of two count vectors."""
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    if p.sum() <= 0 or q.sum() <= 0:
        return 0.0 if p.sum() == q.sum() else 1.0
    p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2

    def kl(a: np.ndarray) -> float:
        nz = a > 0
        return float(np.sum(a[nz] * np.log2(a[nz] / m[nz])))

    return math.sqrt(max(0.0, (kl(p) + kl(q)) / 2))


def popularity_bins(n_train: np.ndarray, n_bins: int) -> np.ndarray:
    """Each item's bin: 0 holds the most-trained items; equal-size bins by rank."""
    order = np.argsort(-np.asarray(n_train), kind="stable")
    bins = np.empty(len(order), dtype=np.int64)
    bins[order] = np.arange(len(order)) * n_bins // max(len(order), 1)
    return bins


def drift_metrics(
    train_users: Iterable[str], catalog: pd.DataFrame, events: pd.DataFrame, n_bins: int = 10
) -> dict[str, float]:
    """The four drift metrics of ``events`` against the training snapshot.

    Args:
        train_users: pseudonymised ids of the users in the training split.
        catalog: the split's item table (``item_id``, ``n_train``).
        events: feedback events with pseudonymised ``user_id`` and ``item_id``; not empty.
        n_bins: popularity bins of ``popularity_shift``.
    """
    users = pd.unique(events["user_id"])
    known_users = set(train_users)
    unseen_users = sum(u not in known_users for u in users)
    n_train = catalog.set_index("item_id")["n_train"].astype("float64")
    in_catalog = events["item_id"].isin(n_train.index)
    counts = events.loc[in_catalog, "item_id"].value_counts().reindex(n_train.index, fill_value=0)
    on_catalog = int(in_catalog.sum())
    cold = int(counts[n_train == 0].sum())
    bins = popularity_bins(n_train.to_numpy(), n_bins)
    train_mass = np.bincount(bins, weights=n_train.to_numpy(), minlength=n_bins)
    feedback_mass = np.bincount(bins, weights=counts.to_numpy(), minlength=n_bins)
    return {
        "unseen_user_rate": unseen_users / len(users),
        "unseen_item_rate": 1.0 - on_catalog / len(events),
        "popularity_shift": js_distance(train_mass, feedback_mass),
        "catalog_churn": cold / on_catalog if on_catalog else 0.0,
    }


def verdict(metrics: dict[str, float], cfg: MonitorParams) -> tuple[bool, list[str]]:
    """(drifted, one reason per metric over its threshold)."""
    reasons = []
    for name, field in THRESHOLDS.items():
        limit = getattr(cfg, field)
        if metrics[name] > limit:
            reasons.append(f"{name} {metrics[name]:.4f} > {field} {limit:g}")
    return bool(reasons), reasons


def check_drift(
    cfg: MonitorParams,
    train_users: Iterable[str],
    catalog: pd.DataFrame,
    events: pd.DataFrame,
    now: float,
) -> dict:
    """The drift report: metrics, thresholds, ``drifted`` and the reasons.

    Args:
        cfg: the ``monitor`` params block.
        train_users: pseudonymised ids of the training users.
        catalog: the split's item table (``item_id``, ``n_train``).
        events: feedback events (``user_id`` already pseudonymised, ``item_id``,
            ``timestamp`` in unix seconds); only the last ``cfg.window_days`` count.
        now: the end of the window, unix seconds.
    """
    window = recent_events(events, cfg.window_days, now)
    report = {
        "n_events": len(window),
        "n_events_total": len(events),
        "window": {"start": now - cfg.window_days * 86_400, "end": now, "days": cfg.window_days},
        "thresholds": {name: getattr(cfg, field) for name, field in THRESHOLDS.items()},
    }
    if len(window) < cfg.min_events:
        reason = (
            f"only {len(window)} feedback event(s) in the last {cfg.window_days:g} days "
            f"(min_events {cfg.min_events}): not judged"
        )
        return {**report, "metrics": {}, "drifted": False, "judged": False, "reasons": [reason]}
    metrics = drift_metrics(train_users, catalog, window, cfg.popularity_bins)
    drifted, reasons = verdict(metrics, cfg)
    if not drifted:
        reasons = ["every metric is within its threshold"]
    return {**report, "metrics": metrics, "drifted": drifted, "judged": True, "reasons": reasons}
