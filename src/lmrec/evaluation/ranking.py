"""What every evaluation pass shares: the scorer protocol, history exclusion, batched
scoring and per-item facts of a split (``protocol`` and ``item_slices`` build on these)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

import numpy as np

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
        unexclude(mask, keep)
    return mask


def unexclude(mask: np.ndarray, keep: np.ndarray) -> None:
    """Clear ``mask`` in place at the items of ``keep`` (``[n]`` or ``-1``-padded ``[n, m]``)."""
    keep = np.asarray(keep, dtype=np.int64).reshape(mask.shape[0], -1)
    rows, slots = np.nonzero(keep >= 0)
    mask[rows, keep[rows, slots]] = False


def batches(
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


def stage_targets(split: SplitData, stage: str) -> np.ndarray:
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    return split.test_items if stage == "test" else split.val_items


def train_counts(split: SplitData) -> np.ndarray:
    counts = np.zeros(split.n_items, dtype=np.float64)
    counts[split.items["item_idx"].to_numpy(dtype=np.int64)] = split.items["n_train"].to_numpy()
    return counts


def cold_mask(split: SplitData) -> np.ndarray:
    cold = np.zeros(split.n_items, dtype=bool)
    idx = split.items["item_idx"].to_numpy(dtype=np.int64)
    cold[idx] = split.items["is_cold"].to_numpy(dtype=bool)
    return cold
