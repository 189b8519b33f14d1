"""Known users, prepared once per loaded model: vector, seen items and best unseen items.

A known user's answer depends on nothing but the model and the stored history, and both are
fixed while a bundle is served (feedback reaches histories at the next retraining). So when
a bundle is loaded, each known user's vector (one batched transformer pass for all of
them), distinct seen items and ``top_k`` best unseen items are computed once. A request by
user id alone that asks for at most ``top_k`` items with ``exclude_seen`` and no diversity
is then a slice of that list; every other request is scored live from the vector.

The lists are what live scoring returns: the same items in the same order with the same
scores (candidates come from one matrix product per block of users, then both rank their
candidates with ``ranked``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
from tqdm import tqdm

#: Users per batched transformer pass / scoring block.
CHUNK = 512


class KnownUser(NamedTuple):
    vector: np.ndarray  # [dim] float32
    seen: np.ndarray  # distinct item indices of the stored history
    top: np.ndarray  # best unseen items, best first (int64; empty when not precomputed)
    top_scores: np.ndarray  # their scores (float32)


#: (vectors [n, dim], seen items per user, k) -> per user (items, scores), best first
TopUnseen = Callable[[np.ndarray, Sequence[np.ndarray], int], list[tuple[np.ndarray, np.ndarray]]]


def ranked(
    item_matrix: np.ndarray, candidates: np.ndarray, user: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``candidates`` (item indices) best first by ``item_matrix[i] @ user``, ties by index.

    Live requests and the lists prepared here both end with this, so they give the same
    scores to the last bit: each score is its own row's sum, whatever the other candidates
    (a matrix-vector product's rounding depends on how many rows it is given).
    """
    candidates = np.sort(candidates)
    scores = np.multiply(item_matrix[candidates], user).sum(axis=1, dtype=np.float32)
    order = np.lexsort((candidates, -scores))
    return candidates[order], scores[order]


def top_unseen_exact(
    item_matrix: np.ndarray,
) -> TopUnseen:
    """Exact scoring of a block of users against every item (``item_matrix @ vector``)."""

    def top(vectors, seen, k):
        scores = vectors @ item_matrix.T  # [n, n_items] float32
        for row, items in enumerate(seen):
            scores[row, items] = -np.inf
        k = min(k, scores.shape[1])
        if k < scores.shape[1]:
            picked = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        else:
            picked = np.broadcast_to(np.arange(k), scores.shape).copy()
        out = []
        for row in range(len(vectors)):
            idx = picked[row][np.isfinite(scores[row, picked[row]])].astype(np.int64)
            out.append(ranked(item_matrix, idx, vectors[row]))
        return out

    return top


def prepare(
    users: dict[str, np.ndarray],
    user_vectors: Callable[[list[np.ndarray]], np.ndarray],
    top_unseen: TopUnseen | None,
    top_k: int,
) -> dict[str, KnownUser]:
    """Every user's ``KnownUser``; lists of ``top_k`` items when ``top_unseen`` is given."""
    empty_items, empty_scores = np.zeros(0, np.int64), np.zeros(0, np.float32)
    out: dict[str, KnownUser] = {}
    names = list(users)
    blocks = range(0, len(names), CHUNK)
    for start in tqdm(blocks, desc="known users", unit="block", disable=len(blocks) < 20):
        block = names[start : start + CHUNK]
        histories = [users[name] for name in block]
        vectors = np.ascontiguousarray(user_vectors(histories), dtype=np.float32)
        seen = [np.unique(h) for h in histories]
        if top_unseen is not None and top_k > 0:
            tops = top_unseen(vectors, seen, top_k)
        else:
            tops = [(empty_items, empty_scores)] * len(block)
        for name, vector, items, (top, scores) in zip(block, vectors, seen, tops, strict=True):
            out[name] = KnownUser(vector, items, top, scores)
    return out
