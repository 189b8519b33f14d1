"""Matrix factorisation baseline: implicit-feedback ALS (Hu, Koren & Volinsky, 2008) in numpy.

Each training interaction (u, i) gives a preference p_ui = 1 with confidence
``1 + alpha * count_ui``; unobserved pairs have p = 0 and confidence 1. ALS alternates exact
least-squares solves for user and item factors. Only the item factors are kept: at score time
a history is folded in by the same least-squares solve a training user gets, so any history
(an unseen user, an empty one) has a user vector. Cold items never receive an update and keep
zero factors, so they score exactly 0.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np
import scipy.sparse as sp

from lmrec.features.dataset import SplitData
from lmrec.models.base import Params, Recommender

# Upper bound on the float64 entries of one chunk of stacked k x k systems (~32 MiB).
_CHUNK_ENTRIES = 1 << 22


@dataclasses.dataclass(frozen=True)
class MFParams(Params):
    """Hyperparameters of ``MFRecommender``.

    Attributes:
        factors: latent dimension.
        iterations: ALS sweeps (one user solve + one item solve each).
        regularization: L2 weight on every factor vector.
        alpha: confidence gained per observed interaction.
        seed: seeds the item-factor initialisation; same seed, same model.
    """

    factors: int = 64
    iterations: int = 15
    regularization: float = 0.1
    alpha: float = 10.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.factors < 1 or self.iterations < 1:
            raise ValueError(f"mf: factors and iterations must be >= 1, got {self}")
        if self.regularization <= 0 or self.alpha <= 0:
            raise ValueError(f"mf: regularization and alpha must be > 0, got {self}")


def solve_side(fixed: np.ndarray, confidence: sp.csr_matrix, regularization: float) -> np.ndarray:
    """One ALS half-step: the least-squares factors of every row of ``confidence``.

    Row r solves ``(F^T C_r F + reg I) x = F^T C_r p_r`` where ``F`` is ``fixed``,
    ``C_r = I + diag(confidence[r])`` and ``p_r`` is 1 where ``confidence[r]`` is stored.
    ``F^T C_r F`` is computed as ``F^T F + F_r^T diag(c_r) F_r`` over the row's own entries
    (Hu et al.'s trick), so each row costs O(nnz_r k^2) in dense BLAS.

    Args:
        fixed: [n_fixed, k] float64 factors of the other side.
        confidence: [n_rows, n_fixed] sparse ``alpha * count`` matrix.
        regularization: L2 weight.

    Returns:
        [n_rows, k] float64 factors; a row with no entries gets zeros.
    """
    k = fixed.shape[1]
    gram = fixed.T @ fixed + regularization * np.eye(k)
    indptr, indices, data = confidence.indptr, confidence.indices, confidence.data
    out = np.zeros((confidence.shape[0], k))
    rows = np.flatnonzero(np.diff(indptr) > 0)  # an empty row's solution is 0: not solved
    chunk = max(1, _CHUNK_ENTRIES // (k * k))
    for start in range(0, len(rows), chunk):
        block = rows[start : start + chunk]
        systems = np.repeat(gram[None], len(block), axis=0)
        rhs = np.zeros((len(block), k))
        for at, row in enumerate(block):
            entries = slice(indptr[row], indptr[row + 1])
            factors, weights = fixed[indices[entries]], data[entries]
            systems[at] += (factors.T * weights) @ factors
            rhs[at] = (1.0 + weights) @ factors
        out[block] = np.linalg.solve(systems, rhs[:, :, None])[:, :, 0]
    return out


def count_matrix(rows: np.ndarray, cols: np.ndarray, shape: tuple[int, int]) -> sp.csr_matrix:
    """Sparse interaction counts (repeated (row, col) pairs are summed)."""
    data = np.ones(len(rows), dtype=np.float64)
    matrix = sp.csr_matrix((data, (rows, cols)), shape=shape)
    matrix.sum_duplicates()
    return matrix


class MFRecommender(Recommender):
    """Implicit ALS matrix factorisation with least-squares fold-in of histories."""

    name = "mf"
    params_cls = MFParams

    def __init__(self, params: MFParams | None = None) -> None:
        super().__init__(params)
        self.item_factors: np.ndarray | None = None

    def _fit(self, split: SplitData) -> None:
        p = self.params
        users, items = split.train_pairs()
        confidence = p.alpha * count_matrix(users, items, (split.n_users, self.n_items))
        confidence_t = confidence.T.tocsr()
        rng = np.random.default_rng(p.seed)
        item_f = rng.normal(0.0, 0.01, size=(self.n_items, p.factors))
        for _ in range(p.iterations):
            user_f = solve_side(item_f, confidence, p.regularization)
            item_f = solve_side(user_f, confidence_t, p.regularization)
        # Score from the float32 copy that is saved, so a reload scores bit for bit the same.
        self.item_factors = item_f.astype(np.float32)

    def user_factors(self, histories: list[np.ndarray]) -> np.ndarray:
        """Fold histories in: the ALS user solve against the fixed item factors."""
        lengths = np.fromiter((len(h) for h in histories), dtype=np.int64, count=len(histories))
        rows = np.repeat(np.arange(len(histories)), lengths)
        cols = np.concatenate(histories) if histories else np.zeros(0, dtype=np.int64)
        counts = count_matrix(rows, cols, (len(histories), self.n_items))
        item_f = self.item_factors.astype(np.float64)
        return solve_side(item_f, self.params.alpha * counts, self.params.regularization)

    def _score(self, histories: list[np.ndarray]) -> np.ndarray:
        return self.user_factors(histories) @ self.item_factors.astype(np.float64).T

    def _state(self) -> dict[str, np.ndarray]:
        return {"item_factors": self.item_factors}

    def _restore(self, state: Mapping[str, np.ndarray], config: Mapping[str, Any]) -> None:
        self.item_factors = state["item_factors"]
