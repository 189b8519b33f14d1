"""Cleaning, k-core filtering, the cold-item holdout and the temporal leave-one-out split.

Order of operations (each step logged with counts in the stage summary):
1. dedupe exact duplicate events, then keep one event per (user, item) (``keep_repeat``);
2. drop interactions whose item is not in the catalog;
3. iterative k-core filter (users and items with too few interactions);
4. cold holdout: a seeded share of items is removed from the log entirely; their
   interactions form the cold slice and never reach train, validation or test;
5. per user, order by (timestamp, tie-break key); last = test, second last = validation.
   Users left with 2 events get no validation item, with 1 event no test item either.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from lmrec.config import PreprocessParams
from lmrec.features.tiebreak import tiebreak_keys


def clean(interactions: pd.DataFrame, catalog: pd.Series, keep: str) -> tuple[pd.DataFrame, dict]:
    """Dedupe and drop unknown items; return the cleaned log and the counts removed."""
    n0 = len(interactions)
    df = interactions.drop_duplicates(["user_id", "item_id", "timestamp", "event"])
    n_dupes = n0 - len(df)
    df = df.sort_values(["user_id", "item_id", "timestamp"], kind="stable")
    df = df.drop_duplicates(["user_id", "item_id"], keep=keep)
    n_repeats = n0 - n_dupes - len(df)
    known = df["item_id"].isin(set(catalog))
    counts = {
        "duplicates_removed": n_dupes,
        "repeats_removed": n_repeats,
        "unknown_items_removed": int((~known).sum()),
    }
    return df[known].reset_index(drop=True), counts


def kcore(df: pd.DataFrame, min_user: int, min_item: int) -> pd.DataFrame:
    """Iteratively drop users/items below their minimum interaction counts."""
    while True:
        users = df["user_id"].map(df["user_id"].value_counts())
        items = df["item_id"].map(df["item_id"].value_counts())
        keep = (users >= min_user) & (items >= min_item)
        if keep.all():
            return df.reset_index(drop=True)
        df = df[keep]


def choose_cold_items(catalog: pd.Series, interacted: pd.Series, share: float, seed: int) -> set:
    """A seeded share of the interacted items, held out of training entirely."""
    pool = np.sort(pd.unique(interacted[interacted.isin(set(catalog))]).astype(str))
    n_cold = int(round(share * len(pool)))
    rng = np.random.default_rng(seed)
    return set(rng.choice(pool, size=n_cold, replace=False).tolist()) if n_cold else set()


def order_events(df: pd.DataFrame, seed: int) -> pd.DataFrame:
    """Sort by user, timestamp, then the per-user pseudo-random tie-break key."""
    df = df.assign(_key=tiebreak_keys(df["user_id"], df["item_id"], seed))
    df = df.sort_values(["user_id", "timestamp", "_key"], kind="stable").drop(columns="_key")
    df["position"] = df.groupby("user_id").cumcount()
    return df.reset_index(drop=True)


def leave_one_out(ordered: pd.DataFrame) -> pd.DataFrame:
    """Label each event train/val/test: last = test, second last = val (when ≥ 3 events)."""
    n = ordered.groupby("user_id")["position"].transform("size")
    from_end = n - 1 - ordered["position"]
    role = np.where(from_end == 0, "test", np.where(from_end == 1, "val", "train"))
    role = np.where(n == 1, "train", role)
    role = np.where((n == 2) & (from_end == 1), "train", role)
    return ordered.assign(role=role)


def split(
    interactions: pd.DataFrame, items: pd.DataFrame, cfg: PreprocessParams
) -> tuple[pd.DataFrame, pd.DataFrame, set, dict]:
    """Run steps 1–5. Returns (labelled events, cold events, cold item ids, counts)."""
    counts = {"interactions_in": len(interactions), "users_in": interactions["user_id"].nunique()}
    df, removed = clean(interactions, items["item_id"], cfg.keep_repeat)
    counts.update(removed)
    df = kcore(df, cfg.min_user_interactions, cfg.min_item_interactions)
    counts["kcore_removed"] = len(interactions) - sum(removed.values()) - len(df)
    cold_ids = choose_cold_items(
        items["item_id"], df["item_id"], cfg.cold_item_share, cfg.cold_seed
    )
    is_cold = df["item_id"].isin(cold_ids)
    cold = df[is_cold].reset_index(drop=True)
    events = leave_one_out(order_events(df[~is_cold], cfg.tiebreak_seed))
    cold = cold[cold["user_id"].isin(set(events["user_id"]))].reset_index(drop=True)
    counts.update(
        {
            "cold_items": len(cold_ids),
            "cold_interactions": len(cold),
            "train": int((events["role"] == "train").sum()),
            "val": int((events["role"] == "val").sum()),
            "test": int((events["role"] == "test").sum()),
        }
    )
    return events, cold, cold_ids, counts


def all_events(
    interactions: pd.DataFrame, catalog: pd.Series, cfg: PreprocessParams
) -> tuple[pd.DataFrame, dict]:
    """Steps 1, 2, 3 and 5's order, with no cold holdout and no held-out events.

    What the production refit trains on: the same cleaning, k-core and per-user tie-broken
    time order as ``split``, but every surviving event (the validation and test events and
    the cold items' events included) is a training event. Restricted to the non-cold items,
    the order is exactly ``split``'s (the sort key is per event).

    Returns:
        (events ordered by user, timestamp and tie-break key with their ``position``, counts).
    """
    counts = {"interactions_in": len(interactions), "users_in": interactions["user_id"].nunique()}
    df, removed = clean(interactions, catalog, cfg.keep_repeat)
    counts.update(removed)
    df = kcore(df, cfg.min_user_interactions, cfg.min_item_interactions)
    counts["kcore_removed"] = len(interactions) - sum(removed.values()) - len(df)
    return order_events(df, cfg.tiebreak_seed), counts
