"""Known users, prepared once per loaded model: vector, seen items and best unseen items.

A known user's answer depends on nothing but the model and the stored history, and both are
fixed while a bundle is served (feedback reaches histories at the next retraining). So when
a bundle is loaded, each known user's vector (one batched transformer pass for all of
them), distinct seen items and ``top_k`` best unseen items are computed once. A request by
user id alone that asks for at most ``top_k`` items with ``exclude_seen`` and no diversity
is then a slice of that list; every other request is scored live from the vector.

The lists are what live scoring returns: the same items in the same order with the same
scores (candidates come from one matrix product per block of users, then both rank their
candidates with ``ranked``). An item added or changed at serving time (``POST /items``)
is spliced into the lists it now belongs in (``put_item``), so they stay that.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
from tqdm import tqdm

log = logging.getLogger(__name__)

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
    log.info("known users: %d vectors, top %d unseen items each", len(out), top_k)
    return out


def refresh(
    cache: dict[str, KnownUser], names: Sequence[str], top_unseen: TopUnseen, top_k: int
) -> None:
    """Prepare the lists of the users ``names`` again (their vectors and seen items kept)."""
    for start in range(0, len(names), CHUNK):
        block = names[start : start + CHUNK]
        entries = [cache[name] for name in block]
        vectors = np.stack([entry.vector for entry in entries])
        tops = top_unseen(vectors, [entry.seen for entry in entries], top_k)
        for name, entry, (top, scores) in zip(block, entries, tops, strict=True):
            cache[name] = entry._replace(top=top, top_scores=scores)


def put_item(
    cache: dict[str, KnownUser],
    item: int,
    vector: np.ndarray,
    top_k: int,
    top_unseen: TopUnseen,
    new: bool,
) -> None:
    """Keep the prepared lists exact once ``item`` has ``vector`` (an item added to the
    catalog when ``new``, else a new vector for an existing one).

    The item goes into every list it now belongs in: its score beats the list's last item
    (as ``ranked`` orders them: score, then index), or the list is short because it already
    holds every unseen item. A list that held the item before is prepared again, since its
    next-best item is unknown here. Scores are computed as ``ranked`` computes them (one
    row's sum each), so spliced lists still equal live scoring.
    """
    if top_k <= 0 or not cache:
        return
    stale = set() if new else {name for name, entry in cache.items() if item in entry.top}
    refresh(cache, sorted(stale), top_unseen, top_k)
    names = [name for name in cache if name not in stale]
    for start in range(0, len(names), CHUNK):
        block = names[start : start + CHUNK]
        entries = [cache[name] for name in block]
        users = np.stack([entry.vector for entry in entries])
        scores = np.multiply(users, vector).sum(axis=1, dtype=np.float32)
        full = [len(entry.top) >= top_k for entry in entries]
        last = np.array(
            [e.top_scores[-1] if f else -np.inf for e, f in zip(entries, full, strict=True)]
        )
        for row in np.flatnonzero(scores >= last).tolist():
            entry, score = entries[row], scores[row]
            if full[row] and score == last[row] and item > entry.top[-1]:
                continue  # a tie goes to the lower index, as in ranked
            if not new and item in entry.seen:
                continue
            top = np.append(entry.top, item)
            top_scores = np.append(entry.top_scores, score).astype(np.float32)
            order = np.lexsort((top, -top_scores))[:top_k]
            cache[block[row]] = entry._replace(top=top[order], top_scores=top_scores[order])
