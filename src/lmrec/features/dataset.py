"""The preprocessed split as models and evaluation see it.

The preprocess stage writes a directory of parquet files (see ``write_split``); everything
downstream reads it back through ``load_split``. Item and user indices are dense, 0-based
integers; ``-1`` marks "no item" (a user too short to have a validation target).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from lmrec.artifacts import ITEM_TEXT_FILE, SPLIT_SUMMARY_FILE
from lmrec.io import atomic_dir, read_table


@dataclass(frozen=True)
class SplitData:
    """One temporal leave-one-out split.

    Attributes:
        train: per user, the ordered training item indices (oldest first).
        val_items: per user, the validation item index or -1.
        test_items: per user, the test item index or -1.
        train_times: per user, the unix timestamps aligned with ``train``.
        user_ids: pseudonymised user id per user index.
        items: one row per item index: item_idx, item_id, title, text, categories,
            is_cold (held out of training entirely), n_train (training interactions).
        cold: cold-slice interactions (user_idx, item_idx), never in train/val/test.
    """

    train: list[np.ndarray]
    val_items: np.ndarray
    test_items: np.ndarray
    train_times: list[np.ndarray]
    user_ids: np.ndarray
    items: pd.DataFrame
    cold: pd.DataFrame
    summary: dict = field(default_factory=dict)

    @property
    def n_users(self) -> int:
        return len(self.train)

    @property
    def n_items(self) -> int:
        return len(self.items)

    def train_pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """All training interactions as (user_idx, item_idx) arrays, in sequence order."""
        lengths = np.fromiter((len(s) for s in self.train), dtype=np.int64, count=self.n_users)
        users = np.repeat(np.arange(self.n_users, dtype=np.int64), lengths)
        items = np.concatenate(self.train) if self.n_users else np.zeros(0, dtype=np.int64)
        return users, items.astype(np.int64)

    def item_texts(self) -> list[str]:
        """Every item's assembled text (what the embed stage encodes), by item index."""
        text = self.items.sort_values("item_idx")["text"]
        return text.where(text.notna(), "").astype(str).tolist()

    def with_training_users(self, fraction: float, seed: int) -> SplitData:
        """A copy whose training sequences are kept for a seeded share of users only.

        The other users' training sequences are emptied; targets, catalog and slices stay,
        so a model fitted on the copy is still evaluated on the whole split (learning
        curves, deliberately under-trained candidates). At least one user is kept.
        """
        if not 0 < fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {fraction}")
        if fraction == 1:
            return self
        n_keep = max(1, round(fraction * self.n_users))
        keep = np.zeros(self.n_users, dtype=bool)
        keep[np.random.default_rng(seed).choice(self.n_users, n_keep, replace=False)] = True
        empty = np.zeros(0, dtype=np.int64)
        return replace(
            self,
            train=[s if k else empty for s, k in zip(self.train, keep, strict=True)],
            train_times=[t if k else empty for t, k in zip(self.train_times, keep, strict=True)],
        )

    def history_for(self, user: int, stage: str) -> np.ndarray:
        """The history a model sees when predicting ``stage`` ("val" or "test") for a user.

        For validation it is the training sequence; for test it is the training sequence
        followed by the validation item (standard leave-one-out).
        """
        hist = self.train[user]
        if stage == "test" and self.val_items[user] >= 0:
            hist = np.append(hist, self.val_items[user])
        return hist


def write_split(
    out_dir: Path,
    sequences: pd.DataFrame,
    items: pd.DataFrame,
    cold: pd.DataFrame,
    summary: dict,
) -> None:
    """Write a split atomically: all files appear together or none do."""
    with atomic_dir(out_dir) as tmp:
        sequences.to_parquet(tmp / "sequences.parquet", index=False)
        items.to_parquet(tmp / "items.parquet", index=False)
        # Text alone, so a re-split that leaves the catalog unchanged does not re-embed.
        items[["item_idx", "item_id", "text"]].to_parquet(tmp / ITEM_TEXT_FILE, index=False)
        cold.to_parquet(tmp / "cold.parquet", index=False)
        (tmp / SPLIT_SUMMARY_FILE).write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")


def load_split(split_dir: str | Path) -> SplitData:
    """Read a split written by the preprocess stage."""
    split_dir = Path(split_dir)
    seq = read_table(split_dir / "sequences.parquet").sort_values("user_idx")
    items = read_table(split_dir / "items.parquet").sort_values("item_idx").reset_index(drop=True)
    cold = read_table(split_dir / "cold.parquet")
    summary = json.loads((split_dir / SPLIT_SUMMARY_FILE).read_text())
    return SplitData(
        train=[np.asarray(s, dtype=np.int64) for s in seq["train_items"]],
        val_items=seq["val_item"].to_numpy(dtype=np.int64),
        test_items=seq["test_item"].to_numpy(dtype=np.int64),
        train_times=[np.asarray(t, dtype=np.int64) for t in seq["train_times"]],
        user_ids=seq["user_id"].to_numpy(dtype=object),
        items=items,
        cold=cold,
        summary=summary,
    )


def write_all_events(
    out_dir: Path, events: pd.DataFrame, items: pd.DataFrame, summary: dict
) -> None:
    """Write every event as training data, in the split layout (``load_split`` reads it).

    The production refit's data: each user's whole ordered history is ``train_items`` (no
    validation or test item: -1), there is no cold slice, and the catalog is ``items`` (a
    split's item table, so the item index is the embeddings' one) with ``n_train``
    counting every event and no item marked cold.

    Args:
        out_dir: the directory to write (atomically).
        events: ``user_id``, ``item_id``, ``timestamp``, ordered per user (oldest first),
            e.g. ``features.split.all_events``.
        items: a split's item table (``item_idx``, ``item_id``, ``title``, ...).
        summary: written as ``summary.json``.

    Raises:
        ValueError: an event's item is not in ``items``.
    """
    index = pd.Series(items["item_idx"].to_numpy(np.int64), index=items["item_id"].astype(str))
    item_idx = events["item_id"].astype(str).map(index)
    if item_idx.isna().any():
        missing = sorted(set(events.loc[item_idx.isna(), "item_id"].astype(str)))[:5]
        raise ValueError(f"events on items missing from the catalog, e.g. {missing}")
    events = events.assign(item_idx=item_idx.astype(np.int64))
    by_user = events.groupby("user_id", sort=True)
    users = np.asarray(list(by_user.groups), dtype=object)
    no_item = np.full(len(users), -1, dtype=np.int64)
    sequences = pd.DataFrame(
        {
            "user_idx": np.arange(len(users), dtype=np.int64),
            "user_id": users,
            "train_items": by_user["item_idx"].agg(list).reindex(users).to_numpy(),
            "train_times": by_user["timestamp"].agg(list).reindex(users).to_numpy(),
            "val_item": no_item,
            "test_item": no_item,
        }
    )
    counts = np.bincount(events["item_idx"], minlength=len(items))
    table = items.sort_values("item_idx").reset_index(drop=True)
    table = table.assign(is_cold=False, n_train=counts[table["item_idx"]].astype(np.int64))
    empty = np.zeros(0, dtype=np.int64)
    cold = pd.DataFrame({"user_idx": empty, "item_idx": empty, "timestamp": empty})
    write_split(out_dir, sequences, table, cold, summary)
