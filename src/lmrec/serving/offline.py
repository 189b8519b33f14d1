"""The served path, offline: the lists users get (the model's ranking after the exposure
policy of ``lmrec.serving.exposure``), judged on the evaluation protocol's rows.

The protocol (``lmrec.evaluation.protocol``) judges a model's raw ranking; users see what
the service sends, and with ``serve.exposure`` on, some slots of every list go to fresh
items. ``served_metrics`` scores the protocol's warm rows (every user's held-out item) and
its ``new_items`` rows (items without training interactions, against the whole catalog)
through the same list surgery the engine applies, so the evaluate stage, the gate and the
benchmarks measure what a user would get from ``POST /recommend``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from lmrec.evaluation import metrics as M
from lmrec.evaluation.item_slices import new_item_rows
from lmrec.evaluation.ranking import batches, exclusion_mask, train_counts
from lmrec.features.dataset import SplitData
from lmrec.serving.exposure import (
    ExposurePolicy,
    apply_to_scores,
    best_fresh_scores,
    list_ranks,
    score_threshold,
)

_BATCH = 256


def _score(model: Any, split: SplitData, stage: str, users: np.ndarray, histories) -> np.ndarray:
    """Score rows for these histories, as the protocol scores them (``ranking.batches``);
    scorers of fixed per-user rows (``score_rows``: benchmark peers) give their rows."""
    if hasattr(model, "score_rows"):
        return np.asarray(model.score_rows(users), dtype=np.float64)
    rows = [s for _, _, s in batches(model, split, users, stage, _BATCH, histories)]
    return np.concatenate(rows).astype(np.float64) if rows else np.zeros((0, split.n_items))


def _list_metrics(
    scores: np.ndarray,
    targets: np.ndarray,
    histories: Sequence[np.ndarray],
    fresh: np.ndarray,
    policy: ExposurePolicy,
    k: int,
    threshold: float,
) -> dict[str, float]:
    """HR/NDCG@k of ``targets`` in the lists the policy serves, and fresh items per list."""
    if len(targets) == 0:
        return {f"hr@{k}": float("nan"), f"ndcg@{k}": float("nan"), "fresh_per_list": 0.0}
    excluded = exclusion_mask(histories, scores.shape[1], keep=targets)
    lists = apply_to_scores(scores, excluded, fresh, k, policy, threshold)
    ranks = list_ranks(lists, targets, miss=k)
    per_list = float(np.isin(lists, np.flatnonzero(fresh)).sum(axis=1).mean())
    return {
        f"hr@{k}": M.hit_rate(ranks, k),
        f"ndcg@{k}": M.ndcg(ranks, k),
        "fresh_per_list": per_list,
    }


def served_metrics(
    model: Any,
    split: SplitData,
    policies: Sequence[ExposurePolicy],
    stage: str = "test",
    k: int = 10,
) -> list[dict[str, Any]]:
    """Per policy: warm rows' and new-item rows' HR/NDCG@k in the served lists.

    Every row is scored once; each policy only re-cuts the lists. Fresh items are those
    with fewer than the policy's ``max_interactions`` training interactions (the split has
    no addition times, so the age cut-off does not apply offline). A policy's score
    threshold comes from the warm rows (every user's best fresh-item score), as the
    service takes it from its known users.

    Returns:
        One dict per policy: ``slots``, ``max_interactions``, ``overall`` and ``new_items``
        (each ``hr@k``, ``ndcg@k``, ``fresh_per_list``, ``n_users``).
    """
    targets_all = split.test_items if stage == "test" else split.val_items
    warm_users = np.flatnonzero(targets_all >= 0)
    warm_hist = [split.history_for(int(u), stage) for u in warm_users]
    new_users, new_targets, new_hist = new_item_rows(split, stage)
    warm_scores = _score(model, split, stage, warm_users, warm_hist)
    new_scores = _score(model, split, stage, new_users, new_hist)
    counts = train_counts(split)
    out = []
    for policy in policies:
        fresh = policy.fresh_mask(counts)
        threshold = score_threshold(best_fresh_scores(warm_scores, fresh), policy)
        args = (fresh, policy, k, threshold)
        warm = _list_metrics(warm_scores, targets_all[warm_users], warm_hist, *args)
        new = _list_metrics(new_scores, new_targets, new_hist, *args)
        out.append(
            {
                "slots": policy.slots,
                "max_interactions": policy.max_interactions,
                "min_score_quantile": policy.min_score_quantile,
                "overall": {**warm, "n_users": len(warm_users)},
                "new_items": {**new, "n_users": len(new_users)},
            }
        )
    return out
