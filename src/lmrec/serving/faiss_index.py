"""A faiss HNSW inner-product index over item vectors that items can join at serving time.

HNSW cannot remove or overwrite a vector, so an item whose vector changes (``POST /items``
on an existing id) gets a new row and its old row is marked dead: searches skip dead rows
the way they skip excluded items, asking faiss for more until enough are left.
"""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)


class FaissIndex:
    """Inner-product search over ``matrix`` rows (item indices), HNSW.

    Args:
        matrix: ``[n_items, dim]`` item vectors.
        m: HNSW graph degree.
        ef_search: HNSW search breadth.
    """

    def __init__(self, matrix: np.ndarray, m: int, ef_search: int) -> None:
        import faiss

        matrix = np.ascontiguousarray(matrix, dtype=np.float32)
        self.index = faiss.IndexHNSWFlat(matrix.shape[1], m, faiss.METRIC_INNER_PRODUCT)
        self.index.hnsw.efConstruction = max(40, ef_search)
        self.index.add(matrix)
        self.index.hnsw.efSearch = ef_search
        self.item_of = np.arange(len(matrix), dtype=np.int64)  # faiss row -> item (-1: dead)
        self.row_of = np.arange(len(matrix), dtype=np.int64)  # item -> its live faiss row
        log.info("faiss HNSW inner-product index over %d items", len(matrix))

    def put(self, item: int, vector: np.ndarray) -> None:
        """Add ``item`` (the next item index) or replace its vector."""
        row = self.index.ntotal
        self.index.add(np.ascontiguousarray(vector[None, :], dtype=np.float32))
        self.item_of = np.append(self.item_of, item)
        if item < len(self.row_of):
            self.item_of[self.row_of[item]] = -1
            self.row_of[item] = row
        else:
            self.row_of = np.append(self.row_of, row)

    def search(
        self, user: np.ndarray, n: int, excluded: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ``n`` best items for ``user`` outside ``excluded``: (items, scores), best first."""
        query = np.ascontiguousarray(user[None, :], dtype=np.float32)
        drop = set(excluded.tolist())
        total = self.index.ntotal
        want = n + len(drop) + (total - len(self.row_of))  # dead rows may come back too
        while True:
            scores, rows = self.index.search(query, min(want, total))
            items = np.where(rows[0] >= 0, self.item_of[rows[0]], -1)
            keep = [j for j, i in enumerate(items.tolist()) if i >= 0 and i not in drop][:n]
            if len(keep) >= n or want >= total:
                return items[keep], scores[0][keep]
            want *= 2

    def top_unseen(
        self, vectors: np.ndarray, seen: list[np.ndarray], k: int
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """``known_users.TopUnseen`` by search: each user's ``k`` best unseen items."""
        n_items = len(self.row_of)
        return [
            self.search(vector, min(k, n_items - len(items)), items)
            for vector, items in zip(vectors, seen, strict=True)
        ]
