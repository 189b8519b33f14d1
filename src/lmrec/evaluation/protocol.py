"""The project's evaluation protocol (DESIGN.md, "Evaluation protocol") on a ``SplitData``.

Leave-one-out with full ranking: each user with a target for the stage is scored over the
whole catalog from the history ``split.history_for(user, stage)``; the history's items are
excluded from ranking, the target never is (a re-consumed item stays rankable). Metrics are
computed once per user and then averaged overall and over slices:

* ``new_items``: the headline for items without training interactions, ranked the way users
  meet them: against the WHOLE catalog. One row per user with cold-slice interactions: the
  target is the user's latest cold interaction (test stage) or, for users with two or more,
  their earliest (validation stage: disjoint rows, so model selection never sees the test
  rows); the history is the user's training events up to the target's timestamp.
* ``cold_items``: a diagnostic: users with cold-slice interactions; only the cold items are
  ranked (recall among cold items) and the user's cold items are the relevant set.
* ``short_history``: users with at most ``short_history_max`` training interactions.
* ``long_tail``: users whose target is not a head item (``metrics.head_items``).

The two item slices live in ``item_slices``; what every pass shares (the ``Scorer``
protocol, history exclusion, batched scoring) in ``ranking``. ``aggregate_seeds`` turns one
result per seed into mean, spread and count.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lmrec.evaluation import metrics as M
from lmrec.evaluation.item_slices import cold_item_slice, new_item_rows, new_item_slice
from lmrec.evaluation.ranking import (
    STAGES,
    Scorer,
    batches,
    exclusion_mask,
    stage_targets,
    train_counts,
)
from lmrec.features.dataset import SplitData

__all__ = [
    "STAGES",
    "Scorer",
    "aggregate_seeds",
    "cold_item_slice",
    "evaluate",
    "evaluate_protocol",
    "exclusion_mask",
    "new_item_rows",
    "new_item_slice",
]


@dataclass(frozen=True)
class _Ranked:
    """Per-user results of one pass over the users that have a target."""

    users: np.ndarray
    targets: np.ndarray
    ranks: np.ndarray
    nonfinite: np.ndarray
    top: np.ndarray


def _rank_users(model: Scorer, split: SplitData, stage: str, k: int, batch_size: int) -> _Ranked:
    """Score every user with a target for ``stage``; keep ranks and top-k lists."""
    all_targets = np.asarray(stage_targets(split, stage), dtype=np.int64)
    users = np.flatnonzero(all_targets >= 0)
    ranks, nonfinite, tops = [], [], []
    for batch, histories, scores in batches(model, split, users, stage, batch_size):
        targets = all_targets[batch]
        excluded = exclusion_mask(histories, split.n_items, keep=targets)
        result = M.target_ranks(scores, targets, excluded)
        ranks.append(result.ranks)
        nonfinite.append(result.nonfinite)
        tops.append(M.top_k(scores, k, excluded))
    return _Ranked(
        users=users,
        targets=all_targets[users],
        ranks=np.concatenate(ranks) if ranks else np.zeros(0, dtype=np.int64),
        nonfinite=np.concatenate(nonfinite) if nonfinite else np.zeros(0, dtype=bool),
        top=np.concatenate(tops) if tops else np.zeros((0, k), dtype=np.int64),
    )


def _summarise(
    ranked: _Ranked,
    rows: np.ndarray,
    *,
    k: int,
    recall_k: int,
    counts: np.ndarray,
    head: np.ndarray,
    item_embeddings: np.ndarray | None,
) -> dict[str, float]:
    """Metric dict for the users selected by the boolean mask ``rows``."""
    ranks, top = ranked.ranks[rows], ranked.top[rows]
    out = {
        f"hr@{k}": M.hit_rate(ranks, k),
        f"ndcg@{k}": M.ndcg(ranks, k),
        f"mrr@{k}": M.mrr(ranks, k),
        f"recall@{recall_k}": M.recall_at_k(ranks, recall_k),
        f"coverage@{k}": M.coverage(top, len(counts)),
        f"novelty@{k}": M.novelty(top, counts),
        f"popularity_bias@{k}": M.popularity_bias(top, head),
    }
    if item_embeddings is not None:
        out[f"diversity@{k}"] = M.intra_list_diversity(top, item_embeddings)
    out["n_users"] = int(rows.sum())
    out["n_nonfinite"] = int(ranked.nonfinite[rows].sum())
    return out


def _user_groups(
    model: Scorer,
    split: SplitData,
    stage: str,
    k: int,
    recall_k: int,
    batch_size: int,
    head_share: float,
    short_history_max: int,
    item_embeddings: np.ndarray | None,
) -> tuple[dict[str, dict[str, float]], np.ndarray, np.ndarray]:
    """Score users once; summarise overall and the short-history and long-tail slices.

    Returns:
        (metrics per group, every user's top-k items, training counts per item).
    """
    ranked = _rank_users(model, split, stage, k, batch_size)
    counts = train_counts(split)
    head = M.head_items(counts, head_share)
    train_len = np.array([len(split.train[u]) for u in ranked.users], dtype=np.int64)
    groups = {
        "overall": np.ones(len(ranked.users), dtype=bool),
        "short_history": train_len <= short_history_max,
        "long_tail": ~head[ranked.targets],
    }
    context = {"k": k, "recall_k": recall_k, "counts": counts, "head": head}
    summaries = {
        name: _summarise(ranked, rows, item_embeddings=item_embeddings, **context)
        for name, rows in groups.items()
    }
    return summaries, ranked.top, counts


def evaluate(
    model: Scorer,
    split: SplitData,
    stage: str = "test",
    k: int = 10,
    recall_k: int = 20,
    batch_size: int = 256,
    head_share: float = 0.2,
    item_embeddings: np.ndarray | None = None,
) -> dict[str, float]:
    """Overall full-ranking metrics for ``stage`` ("val" or "test").

    Returns:
        ``hr@k``, ``ndcg@k``, ``mrr@k``, ``recall@recall_k``, ``coverage@k``, ``novelty@k``,
        ``popularity_bias@k`` (``diversity@k`` with embeddings), ``n_users``,
        ``n_nonfinite`` (users whose candidate scores included NaN/inf).
    """
    args = (stage, k, recall_k, batch_size, head_share, 0, item_embeddings)
    return _user_groups(model, split, *args)[0]["overall"]


def evaluate_protocol(
    model: Scorer,
    split: SplitData,
    stage: str = "test",
    k: int = 10,
    recall_k: int = 20,
    batch_size: int = 256,
    head_share: float = 0.2,
    short_history_max: int = 5,
    item_embeddings: np.ndarray | None = None,
    popularity_bins: int | None = None,
) -> dict[str, Any]:
    """The full protocol: overall metrics plus the three slices.

    Users are scored once for the overall, short-history and long-tail results; the
    new-item and cold slices need their own passes (other histories, other candidates).

    Returns:
        ``{"overall": {...}, "slices": {"new_items": {...}, "cold_items": {...},
        "short_history": {...}, "long_tail": {...}}}``; the new-item slice reports ``hr@k``,
        ``ndcg@k``, ``mrr@k`` (full catalog), the cold slice ``hr@k``, ``ndcg@k``,
        ``recall@k`` (cold items only).
        With ``popularity_bins``, also ``"popularity_curve"``: the share of all top-k
        slots per item-popularity bin (``metrics.popularity_curve``, bin 0 most popular).
    """
    args = (stage, k, recall_k, batch_size, head_share, short_history_max, item_embeddings)
    groups, top, counts = _user_groups(model, split, *args)
    slices = {
        "new_items": new_item_slice(model, split, stage, k, batch_size),
        "cold_items": cold_item_slice(model, split, stage, k, batch_size),
        "short_history": groups["short_history"],
        "long_tail": groups["long_tail"],
    }
    out: dict[str, Any] = {"overall": groups["overall"], "slices": slices}
    if popularity_bins is not None:
        out["popularity_curve"] = M.popularity_curve(top, counts, popularity_bins).tolist()
    return out


def aggregate_seeds(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Mean, sample standard deviation and count of each metric over seeds.

    Nested dicts (such as ``evaluate_protocol`` results) keep their structure. Non-finite
    values (a slice with no users) are left out of the statistics; ``std`` is 0.0 for fewer
    than two values and ``mean`` is NaN for none.

    Returns:
        ``{metric: {"mean": float, "std": float, "n": int}}`` (nested like the input).
    """
    keys = list(dict.fromkeys(key for run in runs for key in run))
    out: dict[str, Any] = {}
    for key in keys:
        values = [run[key] for run in runs if key in run]
        if all(isinstance(v, Mapping) for v in values):
            out[key] = aggregate_seeds(values)
        elif any(isinstance(v, Mapping) for v in values):
            raise TypeError(f"metric {key!r} is a dict in some runs and a number in others")
        else:
            out[key] = _stats(key, values)
    return out


def _stats(key: str, values: Sequence[Any]) -> dict[str, float]:
    if not all(isinstance(v, int | float | np.number) for v in values):
        raise TypeError(f"metric {key!r} has non-numeric values: {values!r}")
    finite = np.array([float(v) for v in values if math.isfinite(float(v))])
    n = len(finite)
    mean = float(finite.mean()) if n else float("nan")
    std = float(finite.std(ddof=1)) if n > 1 else 0.0
    return {"mean": mean, "std": std, "n": n}
