"""Preprocess stage: cleaned, split, indexed data ready for embedding and training.

Reads the contract tables, runs ``features.split`` (cleaning, k-core, cold holdout,
tie-broken temporal leave-one-out), assigns dense indices (items sorted by id, users by
pseudonymised id), assembles item text and writes the split directory read by
``features.dataset.load_split``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from lmrec.config import PreprocessParams
from lmrec.features import split as splitting
from lmrec.features.dataset import write_split
from lmrec.features.text import item_texts
from lmrec.io import read_table


def _items_table(items: pd.DataFrame, events: pd.DataFrame, cold_ids: set) -> pd.DataFrame:
    table = items.sort_values("item_id", kind="stable").reset_index(drop=True)
    n_train = events.loc[events["role"] == "train", "item_id"].value_counts()
    return pd.DataFrame(
        {
            "item_idx": np.arange(len(table), dtype=np.int64),
            "item_id": table["item_id"].to_numpy(),
            "title": table["title"].fillna("").to_numpy(),
            "text": item_texts(table.fillna({"text": "", "categories": ""})).to_numpy(),
            "categories": table["categories"].fillna("").to_numpy(),
            "is_cold": table["item_id"].isin(cold_ids).to_numpy(),
            "n_train": table["item_id"].map(n_train).fillna(0).astype(np.int64).to_numpy(),
        }
    )


def _per_user(users: np.ndarray, events: pd.DataFrame, column: str) -> list[np.ndarray]:
    """``column`` of ``events`` as one array per entry of ``users`` (sorted ids), in event
    order; users without events get an empty array. One stable sort, no per-group Python."""
    codes = pd.Index(users).get_indexer(events["user_id"].to_numpy())  # hashed, not searched
    order = np.argsort(codes, kind="stable")
    counts = np.bincount(codes, minlength=len(users))
    values = events[column].to_numpy(dtype=np.int64)[order]
    return np.split(values, np.cumsum(counts)[:-1])


def _sequences(events: pd.DataFrame, item_idx: pd.Series) -> pd.DataFrame:
    events = events.assign(item_idx=events["item_id"].map(item_idx).astype(np.int64))
    users = np.sort(events["user_id"].unique())
    train = events[events["role"] == "train"]
    by_role = {
        role: events[events["role"] == role].set_index("user_id")["item_idx"]
        for role in ("val", "test")
    }
    seq = pd.DataFrame({"user_idx": np.arange(len(users), dtype=np.int64), "user_id": users})
    seq["train_items"] = _per_user(users, train, "item_idx")
    seq["train_times"] = _per_user(users, train, "timestamp")
    for role, col in by_role.items():
        seq[f"{role}_item"] = seq["user_id"].map(col).fillna(-1).astype(np.int64)
    return seq


def run(cfg: PreprocessParams, interactions: Path, items: Path, out_dir: Path) -> dict:
    """Split the validated tables and write the split directory; return its summary."""
    log, catalog = read_table(interactions), read_table(items)
    events, cold, cold_ids, counts = splitting.split(log, catalog, cfg)
    item_table = _items_table(catalog, events, cold_ids)
    item_idx = pd.Series(item_table["item_idx"].to_numpy(), index=item_table["item_id"])
    sequences = _sequences(events, item_idx)
    user_idx = pd.Series(sequences["user_idx"].to_numpy(), index=sequences["user_id"])
    cold_table = pd.DataFrame(
        {
            "user_idx": cold["user_id"].map(user_idx).astype(np.int64).to_numpy(),
            "item_idx": cold["item_id"].map(item_idx).astype(np.int64).to_numpy(),
            "timestamp": cold["timestamp"].astype(np.int64).to_numpy(),
        }
    )
    summary = {
        **{k: int(v) for k, v in counts.items()},
        "users": len(sequences),
        "items": len(item_table),
        "items_in_train": int((item_table["n_train"] > 0).sum()),
        "tiebreak_seed": cfg.tiebreak_seed,
    }
    write_split(out_dir, sequences, item_table, cold_table, summary)
    return summary
