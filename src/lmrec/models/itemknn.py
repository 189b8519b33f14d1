"""Item-KNN baseline: item-item cosine similarity over the user x item training matrix.

The similarity of items i and j is ``|U_i & U_j| / sqrt(|U_i| * |U_j|)`` where ``U_i`` is
the set of training users of item i (repeat interactions count once). Each item keeps only
its ``neighbors`` most similar items, computed block by block of items (``top_neighbors``),
so memory grows with items x neighbours, never items x items. A history scores item j as
the sum, over the distinct history items h, of the kept similarity ``sim(h, j)``. Cold
items have no training users, so they have no neighbours and score 0.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np
import scipy.sparse as sp

from lmrec.features.dataset import SplitData
from lmrec.models.base import Params, Recommender


@dataclasses.dataclass(frozen=True)
class ItemKNNParams(Params):
    """Hyperparameters of ``ItemKNNRecommender``.

    Attributes:
        neighbors: how many most-similar items each item keeps (ties by lower index).
    """

    neighbors: int = 100

    def __post_init__(self) -> None:
        if self.neighbors < 1:
            raise ValueError(f"itemknn: neighbors must be >= 1, got {self.neighbors}")


#: Upper bound on the co-occurrence entries one block of item rows may produce (each takes
#: ~40 bytes through the product, the cosine and the top-k sort: ~300 MiB a block).
BLOCK_ENTRIES = 1 << 23


def item_blocks(work: np.ndarray, budget: int) -> list[tuple[int, int]]:
    """Consecutive [start, stop) item ranges whose summed ``work`` stays within ``budget``
    (a single item over budget gets a block of its own)."""
    blocks, start, used = [], 0, 0
    for item, cost in enumerate(work.tolist()):
        if item > start and used + cost > budget:
            blocks.append((start, item))
            start, used = item, 0
        used += cost
    if start < len(work):
        blocks.append((start, len(work)))
    return blocks


def top_neighbors(
    user_items: sp.csr_matrix, neighbors: int, block_entries: int = BLOCK_ENTRIES
) -> sp.csr_matrix:
    """Each item's ``neighbors`` most cosine-similar items, never an items x items matrix.

    Item rows are processed in blocks whose co-occurrence products are bounded by
    ``block_entries`` (row i of the product has at most ``sum over U_i of |history|``
    entries). Within a block the co-occurrence counts are exact integers and the cosine is
    ``count / sqrt(|U_i| |U_j|)`` element by element, so a block's values do not depend on
    how the items were blocked.

    Args:
        user_items: users x items interaction counts (any positive count is one).
        neighbors: entries kept per row (ties by lower column index).
        block_entries: work bound of one block.

    Returns:
        float32 items x items CSR with sorted indices and zero diagonal.
    """
    binary = user_items.astype(bool).astype(np.float64).tocsr()
    item_users = binary.T.tocsr()
    n_users_of = np.diff(item_users.indptr).astype(np.float64)
    work = item_users @ np.diff(binary.indptr).astype(np.float64)
    parts = []
    for start, stop in item_blocks(work, block_entries):
        counts = (item_users[start:stop] @ binary).tocsr()
        rows = np.repeat(np.arange(start, stop), np.diff(counts.indptr))
        cols = counts.indices.astype(np.int64)
        sim = counts.data / np.sqrt(n_users_of[rows] * n_users_of[cols])
        off_diagonal = cols != rows
        block = sp.csr_matrix(
            (sim[off_diagonal], (rows[off_diagonal] - start, cols[off_diagonal])),
            shape=(stop - start, binary.shape[1]),
        )
        parts.append(keep_top_neighbors(block, neighbors))
    if not parts:
        return sp.csr_matrix((binary.shape[1], binary.shape[1]), dtype=np.float32)
    return sp.vstack(parts, format="csr")


def keep_top_neighbors(sim: sp.csr_matrix, neighbors: int) -> sp.csr_matrix:
    """Keep each row's ``neighbors`` largest entries (ties by lower column index).

    A short sort per row, not one sort of every entry: a global three-key sort of a block's
    ~10M entries took several times the whole co-occurrence product.
    """
    sim = sim.tocsr(copy=True)
    sim.eliminate_zeros()
    sim.sort_indices()
    rows, cols, vals = [], [], []
    for row in np.flatnonzero(np.diff(sim.indptr)):
        start, end = sim.indptr[row], sim.indptr[row + 1]
        idx, data = sim.indices[start:end], sim.data[start:end]
        if len(data) > neighbors:
            # Columns are sorted, so a stable sort on -value breaks ties by lower index.
            keep = np.sort(np.argsort(-data, kind="stable")[:neighbors])
            idx, data = idx[keep], data[keep]
        rows.append(np.full(len(idx), row, dtype=np.int64))
        cols.append(idx)
        vals.append(data)
    if not rows:
        return sp.csr_matrix(sim.shape, dtype=np.float32)
    return sp.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
        shape=sim.shape,
        dtype=np.float32,
    )


def history_matrix(histories: list[np.ndarray], n_items: int) -> sp.csr_matrix:
    """Binary histories x items matrix (an item seen twice in a history counts once)."""
    unique = [np.unique(h) for h in histories]
    lengths = np.fromiter((len(u) for u in unique), dtype=np.int64, count=len(unique))
    rows = np.repeat(np.arange(len(unique)), lengths)
    cols = np.concatenate(unique) if unique else np.zeros(0, dtype=np.int64)
    data = np.ones(len(cols), dtype=np.float32)
    return sp.csr_matrix((data, (rows, cols)), shape=(len(unique), n_items))


class ItemKNNRecommender(Recommender):
    """Item-based collaborative filtering with truncated cosine similarity."""

    name = "itemknn"
    params_cls = ItemKNNParams

    def __init__(self, params: ItemKNNParams | None = None) -> None:
        super().__init__(params)
        self.similarity: sp.csr_matrix | None = None

    def _fit(self, split: SplitData) -> None:
        users, items = split.train_pairs()
        user_items = sp.csr_matrix(
            (np.ones(len(items)), (users, items)), shape=(split.n_users, self.n_items)
        )
        top = top_neighbors(user_items, self.params.neighbors)
        # Hold the same array types that a reload gives, so scores match bit for bit.
        self._restore(self._state_of(top), {})

    def _score(self, histories: list[np.ndarray]) -> np.ndarray:
        return (history_matrix(histories, self.n_items) @ self.similarity).toarray()

    def _state(self) -> dict[str, np.ndarray]:
        return self._state_of(self.similarity)

    @staticmethod
    def _state_of(sim: sp.csr_matrix) -> dict[str, np.ndarray]:
        return {
            "data": sim.data.astype(np.float32),
            "indices": sim.indices.astype(np.int64),
            "indptr": sim.indptr.astype(np.int64),
        }

    def _restore(self, state: Mapping[str, np.ndarray], config: Mapping[str, Any]) -> None:
        shape = (self.n_items, self.n_items)
        self.similarity = sp.csr_matrix(
            (state["data"], state["indices"], state["indptr"]), shape=shape
        )
