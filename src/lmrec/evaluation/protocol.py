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

``aggregate_seeds`` turns one result per seed into mean, spread and count.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from lmrec.evaluation import metrics as M
from lmrec.features.dataset import SplitData

STAGES = ("val", "test")


class Scorer(Protocol):
    """Anything that scores every catalog item for a batch of user histories.

    A scorer that keeps per-user state (a factorisation model's user factors) may also
    define ``score_users(users, histories)``; the protocol then calls it with the user
    indices alongside their histories.
    """

    def score(self, histories: Sequence[np.ndarray]) -> np.ndarray:
        """Return float scores ``[len(histories), n_items]``, higher is better."""
        ...


@dataclass(frozen=True)
class _Ranked:
    """Per-user results of one pass over the users that have a target."""

    users: np.ndarray
    targets: np.ndarray
    ranks: np.ndarray
    nonfinite: np.ndarray
    top: np.ndarray


def exclusion_mask(
    histories: Sequence[np.ndarray], n_items: int, keep: np.ndarray | None = None
) -> np.ndarray:
    """Boolean ``[n, n_items]`` mask, True for items in each user's history.

    Args:
        histories: per user, the item indices seen so far.
        n_items: catalog size.
        keep: optional int ``[n]`` or ``[n, m]`` (``-1`` padded) of items to leave
            unexcluded even when they are in the history (the targets).

    Returns:
        The mask.
    """
    mask = np.zeros((len(histories), n_items), dtype=bool)
    lengths = [len(h) for h in histories]
    if sum(lengths):
        cols = np.concatenate([np.asarray(h, dtype=np.int64) for h in histories])
        if cols.min() < 0 or cols.max() >= n_items:
            raise ValueError(f"history item index outside [0, {n_items})")
        mask[np.repeat(np.arange(len(histories)), lengths), cols] = True
    if keep is not None:
        _unexclude(mask, keep)
    return mask


def _unexclude(mask: np.ndarray, keep: np.ndarray) -> None:
    """Clear ``mask`` in place at the items of ``keep`` (``[n]`` or ``-1``-padded ``[n, m]``)."""
    keep = np.asarray(keep, dtype=np.int64).reshape(mask.shape[0], -1)
    rows, slots = np.nonzero(keep >= 0)
    mask[rows, keep[rows, slots]] = False


def _batches(
    model: Scorer,
    split: SplitData,
    users: np.ndarray,
    stage: str,
    batch_size: int,
    histories_of: Sequence[np.ndarray] | None = None,
) -> Iterator[tuple[np.ndarray, list[np.ndarray], np.ndarray]]:
    """Yield (users, histories, scores) for consecutive batches of users.

    The histories are ``split.history_for(user, stage)`` unless ``histories_of`` gives one
    per entry of ``users``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for start in range(0, len(users), batch_size):
        batch = users[start : start + batch_size]
        if histories_of is None:
            histories = [split.history_for(int(u), stage) for u in batch]
        else:
            histories = list(histories_of[start : start + batch_size])
        score_users = getattr(model, "score_users", None)
        if score_users is not None:
            scores = np.asarray(score_users(batch, histories))
        else:
            scores = np.asarray(model.score(histories))
        if scores.shape != (len(batch), split.n_items):
            raise ValueError(
                f"model.score returned shape {scores.shape}, "
                f"expected ({len(batch)}, {split.n_items})"
            )
        yield batch, histories, scores


def _stage_targets(split: SplitData, stage: str) -> np.ndarray:
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    return split.test_items if stage == "test" else split.val_items


def _rank_users(model: Scorer, split: SplitData, stage: str, k: int, batch_size: int) -> _Ranked:
    """Score every user with a target for ``stage``; keep ranks and top-k lists."""
    all_targets = np.asarray(_stage_targets(split, stage), dtype=np.int64)
    users = np.flatnonzero(all_targets >= 0)
    ranks, nonfinite, tops = [], [], []
    for batch, histories, scores in _batches(model, split, users, stage, batch_size):
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


def _train_counts(split: SplitData) -> np.ndarray:
    counts = np.zeros(split.n_items, dtype=np.float64)
    counts[split.items["item_idx"].to_numpy(dtype=np.int64)] = split.items["n_train"].to_numpy()
    return counts


def _cold_mask(split: SplitData) -> np.ndarray:
    cold = np.zeros(split.n_items, dtype=bool)
    idx = split.items["item_idx"].to_numpy(dtype=np.int64)
    cold[idx] = split.items["is_cold"].to_numpy(dtype=bool)
    return cold


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


def cold_item_slice(
    model: Scorer, split: SplitData, stage: str = "test", k: int = 10, batch_size: int = 256
) -> dict[str, float]:
    """Rank only the cold items for each user of ``split.cold``; relevant = its cold items.

    Returns:
        ``hr@k`` (any cold item hit), ``ndcg@k``, ``recall@k``, ``n_users``, ``n_items``
        (the cold catalog size) and ``n_nonfinite``.
    """
    _stage_targets(split, stage)
    not_cold = ~_cold_mask(split)
    by_user = split.cold.groupby("user_idx")["item_idx"].apply(np.asarray)
    users = by_user.index.to_numpy(dtype=np.int64)
    per_user, nonfinite = [], 0
    for batch, histories, scores in _batches(model, split, users, stage, batch_size):
        relevant = [by_user[u] for u in batch]
        excluded = exclusion_mask(histories, split.n_items) | not_cold[None, :]
        _unexclude(excluded, M.pad_items(relevant))  # never exclude what is being ranked
        result = M.relevant_ranks(scores, relevant, excluded)
        per_user.extend(row[row >= 0] for row in result.ranks)
        nonfinite += result.n_nonfinite
    ranks = M.pad_items(per_user)
    return {
        f"hr@{k}": M.hit_rate(ranks, k),
        f"ndcg@{k}": M.ndcg(ranks, k),
        f"recall@{k}": M.recall_at_k(ranks, k),
        "n_users": len(users),
        "n_items": int((~not_cold).sum()),
        "n_nonfinite": nonfinite,
    }


def new_item_rows(split: SplitData, stage: str) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """The ``new_items`` slice's rows: (users, target items, histories), one per user.

    The test row of a user with cold-slice interactions is their latest one (by timestamp,
    then item index); the validation row is their earliest, for users with at least two
    (so the rows differ). The history is the user's training items up to the target's time.
    """
    _stage_targets(split, stage)
    cold = split.cold
    if "timestamp" not in cold:  # a split without event times: the whole training history
        cold = cold.assign(timestamp=np.iinfo(np.int64).max)
    cold = cold.sort_values(["user_idx", "timestamp", "item_idx"], kind="stable")
    grouped = cold.groupby("user_idx", sort=True)
    if stage == "test":
        rows = cold[grouped.cumcount(ascending=False) == 0]
    else:
        rows = cold[(grouped.cumcount() == 0) & (grouped["item_idx"].transform("size") > 1)]
    users = rows["user_idx"].to_numpy(dtype=np.int64)
    targets = rows["item_idx"].to_numpy(dtype=np.int64)
    histories = []
    for user, when in zip(users, rows["timestamp"].to_numpy(dtype=np.int64), strict=True):
        times = split.train_times[user]
        histories.append(split.train[user][: int(np.searchsorted(times, when, side="right"))])
    return users, targets, histories


def new_item_slice(
    model: Scorer, split: SplitData, stage: str = "test", k: int = 10, batch_size: int = 256
) -> dict[str, float]:
    """HR/NDCG/MRR@k of the ``new_items`` rows (``new_item_rows``), full-catalog ranking.

    Every catalog item is a candidate except the row's history; the target has no training
    interactions, so a model must rank it from its content alone against warm items. A
    scorer of fixed per-user rows (``score_rows(users)``: benchmark peers) is given its rows.

    Returns:
        ``hr@k``, ``ndcg@k``, ``mrr@k``, ``n_users`` (rows), ``n_items`` (items without
        training interactions) and ``n_nonfinite``.
    """
    users, targets, histories = new_item_rows(split, stage)
    ranks, nonfinite = [], 0
    rows_of = getattr(model, "score_rows", None)
    for start in range(0, len(users), max(batch_size, 1)):
        batch, hist = users[start : start + batch_size], histories[start : start + batch_size]
        if rows_of is not None:
            scores = np.asarray(rows_of(batch))
        else:
            _, _, scores = next(_batches(model, split, batch, stage, len(batch), hist))
        target = targets[start : start + len(batch)]
        result = M.target_ranks(scores, target, exclusion_mask(hist, split.n_items, keep=target))
        ranks.append(result.ranks)
        nonfinite += result.n_nonfinite
    ranks_all = np.concatenate(ranks) if ranks else np.zeros(0, dtype=np.int64)
    return {
        f"hr@{k}": M.hit_rate(ranks_all, k),
        f"ndcg@{k}": M.ndcg(ranks_all, k),
        f"mrr@{k}": M.mrr(ranks_all, k),
        "n_users": len(users),
        "n_items": int((_train_counts(split) == 0).sum()),
        "n_nonfinite": nonfinite,
    }


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
    counts = _train_counts(split)
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
