"""The protocol's item slices, each a pass of its own over other histories or candidates:
``new_items`` (items without training interactions ranked against the whole catalog: the
headline for new items) and ``cold_items`` (the same items ranked among themselves only: a
diagnostic). See ``lmrec.evaluation.protocol`` for how they enter the results."""

from __future__ import annotations

import numpy as np

from lmrec.evaluation import metrics as M
from lmrec.evaluation.intervals import rank_intervals
from lmrec.evaluation.ranking import (
    Scorer,
    batches,
    cold_mask,
    exclusion_mask,
    stage_targets,
    train_counts,
    unexclude,
)
from lmrec.features.dataset import SplitData


def _restrict(users: np.ndarray, sample: np.ndarray | None) -> np.ndarray:
    """The rows of ``users`` kept by a user sample (all of them without one)."""
    return np.ones(len(users), dtype=bool) if sample is None else np.isin(users, sample)


def _items_by_user(rows) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """(sorted users, user -> their items in row order) of a ``user_idx``/``item_idx`` frame:
    one stable sort, not a pandas group per user (500k users at 10M interactions)."""
    user = rows["user_idx"].to_numpy(dtype=np.int64)
    item = rows["item_idx"].to_numpy(dtype=np.int64)
    order = np.argsort(user, kind="stable")
    everyone, starts = np.unique(user[order], return_index=True)
    groups = np.split(item[order], starts[1:]) if len(everyone) else []
    return everyone, dict(zip(everyone.tolist(), groups, strict=True))


def cold_item_slice(
    model: Scorer,
    split: SplitData,
    stage: str = "test",
    k: int = 10,
    batch_size: int = 256,
    users: np.ndarray | None = None,
) -> dict[str, float]:
    """Rank only the cold items for each user of ``split.cold``; relevant = its cold items.

    Args:
        users: a user sample (``protocol.sample_users``): only its users are scored.

    Returns:
        ``hr@k`` (any cold item hit), ``ndcg@k``, ``recall@k``, ``n_users``, ``n_items``
        (the cold catalog size), ``n_nonfinite``, ``users_evaluated``, ``users_total`` and
        ``ci95`` (``intervals.rank_intervals``).
    """
    stage_targets(split, stage)
    not_cold = ~cold_mask(split)
    everyone, by_user = _items_by_user(split.cold)
    users = everyone[_restrict(everyone, users)]
    per_user, nonfinite = [], 0
    for batch, histories, scores in batches(model, split, users, stage, batch_size):
        relevant = [by_user[u] for u in batch]
        excluded = exclusion_mask(histories, split.n_items) | not_cold[None, :]
        unexclude(excluded, M.pad_items(relevant))  # never exclude what is being ranked
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
        "users_evaluated": len(users),
        "users_total": len(everyone),
        "ci95": rank_intervals(ranks, len(everyone), [f"hr@{k}", f"ndcg@{k}", f"recall@{k}"]),
    }


def new_item_rows(split: SplitData, stage: str) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """The ``new_items`` slice's rows: (users, target items, histories), one per user.

    The test row of a user with cold-slice interactions is their latest one (by timestamp,
    then item index); the validation row is their earliest, for users with at least two
    (so the rows differ). The history is the user's training items up to the target's time.
    """
    stage_targets(split, stage)
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
    model: Scorer,
    split: SplitData,
    stage: str = "test",
    k: int = 10,
    batch_size: int = 256,
    users: np.ndarray | None = None,
) -> dict[str, float]:
    """HR/NDCG/MRR@k of the ``new_items`` rows (``new_item_rows``), full-catalog ranking.

    Every catalog item is a candidate except the row's history; the target has no training
    interactions, so a model must rank it from its content alone against warm items. A
    scorer of fixed per-user rows (``score_rows(users)``: benchmark peers) is given its rows.

    Args:
        users: a user sample (``protocol.sample_users``): only its users' rows are scored.

    Returns:
        ``hr@k``, ``ndcg@k``, ``mrr@k``, ``n_users`` (rows), ``n_items`` (items without
        training interactions), ``n_nonfinite``, ``users_evaluated``, ``users_total`` and
        ``ci95`` (``intervals.rank_intervals``).
    """
    all_users, all_targets, all_histories = new_item_rows(split, stage)
    keep = _restrict(all_users, users)
    users, targets = all_users[keep], all_targets[keep]
    histories = [h for h, kept in zip(all_histories, keep, strict=True) if kept]
    ranks, nonfinite = [], 0
    rows_of = getattr(model, "score_rows", None)
    for start in range(0, len(users), max(batch_size, 1)):
        batch, hist = users[start : start + batch_size], histories[start : start + batch_size]
        if rows_of is not None:
            scores = np.asarray(rows_of(batch))
        else:
            _, _, scores = next(batches(model, split, batch, stage, len(batch), hist))
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
        "n_items": int((train_counts(split) == 0).sum()),
        "n_nonfinite": nonfinite,
        "users_evaluated": len(users),
        "users_total": len(all_users),
        "ci95": rank_intervals(ranks_all, len(all_users), [f"hr@{k}", f"ndcg@{k}", f"mrr@{k}"]),
    }
