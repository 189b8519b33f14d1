"""Item-KNN baseline: item-item cosine similarity over the user x item training matrix.

The similarity of items i and j is ``|U_i & U_j| / sqrt(|U_i| * |U_j|)`` where ``U_i`` is
the set of training users of item i (repeat interactions count once). Each item keeps only
its ``neighbors`` most similar items; a history scores item j as the sum, over the distinct
history items h, of the kept similarity ``sim(h, j)``. Cold items have no training users,
so they have no neighbours and score 0.
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


def cosine_similarity(user_items: sp.csr_matrix) -> sp.csr_matrix:
    """Item-item cosine similarity of a binary users x items matrix, zero diagonal."""
    binary = user_items.astype(bool).astype(np.float64).tocsc()
    norms = np.sqrt(np.asarray(binary.sum(axis=0)).ravel())
    inv = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
    normed = binary @ sp.diags(inv)
    sim = (normed.T @ normed).tocsr()
    sim = (sim - sp.diags(sim.diagonal())).tocsr()
    sim.eliminate_zeros()
    return sim


def keep_top_neighbors(sim: sp.csr_matrix, neighbors: int) -> sp.csr_matrix:
    """Keep each row's ``neighbors`` largest entries (ties by lower column index)."""
    sim = sim.tocsr()
    sim.sort_indices()
    rows, cols, vals = [], [], []
    for row in range(sim.shape[0]):
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
        top = keep_top_neighbors(cosine_similarity(user_items), self.params.neighbors)
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
