"""Re-ranking a candidate list for diversity: maximal marginal relevance (MMR)."""

from __future__ import annotations

import numpy as np


def mmr(scores: np.ndarray, vectors: np.ndarray, k: int, diversity: float) -> list[int]:
    """Positions of ``k`` candidates picked greedily by relevance against text similarity.

    Args:
        scores: the candidates' relevance scores, best first.
        vectors: their L2-normalised text vectors (similarity = dot product).
        k: how many to pick.
        diversity: 0 keeps relevance order; 1 weighs dissimilarity to the picks alone.
    """
    if len(scores) <= 1:
        return list(range(min(k, len(scores))))
    span = scores.max() - scores.min()
    relevance = (scores - scores.min()) / span if span > 0 else np.ones_like(scores)
    lam = 1.0 - diversity
    chosen: list[int] = []
    max_sim = np.full(len(scores), -np.inf)
    for _ in range(min(k, len(scores))):
        penalty = np.where(np.isfinite(max_sim), max_sim, 0.0)
        gain = lam * relevance - (1 - lam) * penalty
        gain[chosen] = -np.inf
        best = int(np.argmax(gain))
        chosen.append(best)
        max_sim = np.maximum(max_sim, vectors @ vectors[best])
    return chosen
