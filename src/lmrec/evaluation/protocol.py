"""The project's evaluation protocol (docs/design.md, "Evaluation protocol") on a ``SplitData``.

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
* ``activity_q1`` .. ``activity_q4``: users by quartile of their training interactions
  (q1 the least active; cut points over every user with a target, so a sample keeps them),
  and ``worst_user_group``: the metrics of the quartile with the lowest NDCG@k (its name in
  the result's top-level ``worst_user_group``), so that the gate holds the worst-served
  group, not only the average.

Full ranking is the protocol. For very large user counts ``max_users`` scores a seeded
simple random sample of the users with a target (``sample_users``; the item slices keep
their rows of the sampled users): every per-user metric then carries a 95% interval
(normal approximation with the finite-population correction, ``intervals.mean_interval``)
under ``ci95``, and each group states ``users_evaluated`` and ``users_total``. With every
user scored the intervals have zero width.

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
from lmrec.evaluation.intervals import rank_intervals
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
    "sample_users",
]


@dataclass(frozen=True)
class _Ranked:
    """Per-user results of one pass over the users that have a target."""

    users: np.ndarray
    targets: np.ndarray
    ranks: np.ndarray
    nonfinite: np.ndarray
    top: np.ndarray


def sample_users(
    split: SplitData, stage: str, max_users: int | None, seed: int
) -> np.ndarray | None:
    """A seeded sample of ``max_users`` of the users with a target for ``stage`` (sorted),
    or None (every user) when ``max_users`` is None or not below their number."""
    users = np.flatnonzero(np.asarray(stage_targets(split, stage)) >= 0)
    if max_users is None or max_users >= len(users):
        return None
    if max_users < 1:
        raise ValueError(f"max_users must be >= 1 or None, got {max_users}")
    return np.sort(np.random.default_rng(seed).choice(users, size=max_users, replace=False))


def _rank_users(
    model: Scorer, split: SplitData, stage: str, users: np.ndarray, k: int, batch_size: int
) -> _Ranked:
    """Score ``users`` (each with a target for ``stage``); keep ranks and top-k lists."""
    all_targets = np.asarray(stage_targets(split, stage), dtype=np.int64)
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
    population: int,
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
    out["users_evaluated"] = int(rows.sum())
    out["users_total"] = population
    out["ci95"] = rank_intervals(
        ranks, population, [f"hr@{k}", f"ndcg@{k}", f"mrr@{k}", f"recall@{recall_k}"]
    )
    return out


#: User groups by training activity: quartiles, least active first.
ACTIVITY_GROUPS = ("activity_q1", "activity_q2", "activity_q3", "activity_q4")


def _train_lengths(split: SplitData, users: np.ndarray) -> np.ndarray:
    return np.fromiter((len(split.train[u]) for u in users), np.int64, count=len(users))


def _groups(
    split: SplitData,
    users: np.ndarray,
    targets: np.ndarray,
    head: np.ndarray,
    short_max: int,
    activity_cuts: np.ndarray,
) -> dict[str, np.ndarray]:
    """Boolean masks over ``users``: overall, short-history, long-tail and the activity
    quartiles (``activity_cuts``: the three training-length cut points)."""
    train_len = _train_lengths(split, users)
    quartile = np.searchsorted(activity_cuts, train_len, side="left")
    return {
        "overall": np.ones(len(users), dtype=bool),
        "short_history": train_len <= short_max,
        "long_tail": ~head[targets],
        **{name: quartile == q for q, name in enumerate(ACTIVITY_GROUPS)},
    }


def worst_group(groups: Mapping[str, Mapping[str, Any]], metric: str) -> str | None:
    """The activity group with the lowest ``metric`` (groups without users left out)."""
    scored = [n for n in ACTIVITY_GROUPS if groups[n]["n_users"] > 0]
    return min(scored, key=lambda n: groups[n][metric]) if scored else None


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
    users: np.ndarray | None = None,
) -> tuple[dict[str, dict[str, float]], np.ndarray, np.ndarray]:
    """Score users once; summarise overall and the short-history and long-tail slices.

    Args:
        users: the sample to score (``sample_users``); None scores every user.

    Returns:
        (metrics per group, every scored user's top-k items, training counts per item).
    """
    all_targets = np.asarray(stage_targets(split, stage), dtype=np.int64)
    everyone = np.flatnonzero(all_targets >= 0)
    ranked = _rank_users(model, split, stage, everyone if users is None else users, k, batch_size)
    counts = train_counts(split)
    head = M.head_items(counts, head_share)
    cuts = np.quantile(_train_lengths(split, everyone), [0.25, 0.5, 0.75]) if len(everyone) else []
    groups = _groups(split, ranked.users, ranked.targets, head, short_history_max, cuts)
    population = {
        name: int(mask.sum())
        for name, mask in _groups(
            split, everyone, all_targets[everyone], head, short_history_max, cuts
        ).items()
    }
    context = {"k": k, "recall_k": recall_k, "counts": counts, "head": head}
    summaries = {
        name: _summarise(ranked, rows, population[name], item_embeddings=item_embeddings, **context)
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
    max_users: int | None = None,
    sample_seed: int = 0,
) -> dict[str, Any]:
    """The full protocol: overall metrics plus the four slices.

    Users are scored once for the overall, short-history and long-tail results; the
    new-item and cold slices need their own passes (other histories, other candidates).
    With ``max_users`` below the number of users with a target, a seeded sample of that
    many users is scored (``sample_users(split, stage, max_users, sample_seed)``) and the
    slices keep the sampled users' rows.

    Returns:
        ``{"overall": {...}, "slices": {"new_items": {...}, "cold_items": {...},
        "short_history": {...}, "long_tail": {...}, "activity_q1".."activity_q4": {...},
        "worst_user_group": {...}}, "worst_user_group": "activity_q<n>"}``; the new-item
        slice reports ``hr@k``, ``ndcg@k``, ``mrr@k`` (full catalog), the cold slice
        ``hr@k``, ``ndcg@k``, ``recall@k`` (cold items only).
        Every group also has ``users_evaluated``, ``users_total`` and ``ci95`` (per rank
        metric ``{"low", "high"}``); ``"sample"`` says how the users were chosen.
        With ``popularity_bins``, also ``"popularity_curve"``: the share of all top-k
        slots per item-popularity bin (``metrics.popularity_curve``, bin 0 most popular).
    """
    users = sample_users(split, stage, max_users, sample_seed)
    args = (stage, k, recall_k, batch_size, head_share, short_history_max, item_embeddings)
    groups, top, counts = _user_groups(model, split, *args, users=users)
    slices = {
        "new_items": new_item_slice(model, split, stage, k, batch_size, users=users),
        "cold_items": cold_item_slice(model, split, stage, k, batch_size, users=users),
        "short_history": groups["short_history"],
        "long_tail": groups["long_tail"],
        # quartiles without users (ties in activity; tiny samples) are left out
        **{name: groups[name] for name in ACTIVITY_GROUPS if groups[name]["n_users"]},
    }
    worst = worst_group(groups, f"ndcg@{k}")
    if worst is not None:
        slices["worst_user_group"] = groups[worst]
    out: dict[str, Any] = {"overall": groups["overall"], "slices": slices}
    out["worst_user_group"] = worst
    out["sample"] = {
        "method": "every user" if users is None else "seeded simple random sample of users",
        "max_users": max_users,
        "seed": sample_seed,
        "users_evaluated": groups["overall"]["users_evaluated"],
        "users_total": groups["overall"]["users_total"],
        "interval": "95% normal approximation over users, finite-population corrected",
    }
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
