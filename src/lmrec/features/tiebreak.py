"""Per-user pseudo-random order for same-second events (docs/design.md, evaluation protocol).

MovieLens has many ratings with the same timestamp. Ordering them by item id, or any
function of the item alone, orders them the same way for every user, and a sequence
model then learns that global order and scores far above what it really does. Instead
the key mixes user *and* item through splitmix64, so each user gets its own order.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

_MASK = np.uint64(0xFFFFFFFFFFFFFFFF)


def splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser, vectorised over uint64 (wrap-around arithmetic)."""
    z = np.asarray(x, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return (z ^ (z >> np.uint64(31))) & _MASK


def stable_hash64(values: pd.Series) -> np.ndarray:
    """A platform- and run-independent 64-bit hash of each string (BLAKE2b)."""
    # factorize hashes (linear); np.unique would sort the strings (n log n, and slow on
    # objects): the same hash per value either way
    codes, uniques = pd.factorize(values.astype(str).to_numpy())
    hashed = np.fromiter(
        (
            int.from_bytes(hashlib.blake2b(u.encode(), digest_size=8).digest(), "little")
            for u in uniques
        ),
        dtype=np.uint64,
        count=len(uniques),
    )
    return hashed[codes]


def tiebreak_keys(user_ids: pd.Series, item_ids: pd.Series, seed: int) -> np.ndarray:
    """A uint64 key per (user, item): sort by (timestamp, key) for the event order."""
    seed_mix = splitmix64(np.array([seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))[0]
    return splitmix64(splitmix64(stable_hash64(user_ids) ^ seed_mix) ^ stable_hash64(item_ids))
