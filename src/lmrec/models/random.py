"""Random baseline: uniform scores, a fresh draw for every distinct history.

The chance floor of the gate and the benchmarks, and the "deliberately worse candidate" of
the gate's tests. Scores are a seeded function of (seed, history), so the same request
always gets the same ranking and save -> load round-trips exactly.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from lmrec.features.dataset import SplitData
from lmrec.models.base import Params, Recommender


@dataclasses.dataclass(frozen=True)
class RandomParams(Params):
    seed: int = 0


class RandomRecommender(Recommender):
    """Scores every item uniformly at random in [0, 1), learning nothing."""

    name = "random"
    params_cls = RandomParams
    uses_history = False

    def _fit(self, split: SplitData) -> None:
        """Nothing to learn; the catalog size is all the model keeps."""

    def _score(self, histories: list[np.ndarray]) -> np.ndarray:
        out = np.empty((len(histories), self.n_items), dtype=np.float32)
        for row, history in enumerate(histories):
            digest = hashlib.sha256(np.asarray(history, dtype=np.int64).tobytes()).digest()
            seed = (self.params.seed, int.from_bytes(digest[:8], "little"))
            out[row] = np.random.default_rng(seed).random(self.n_items, dtype=np.float32)
        return out

    def _state(self) -> dict[str, np.ndarray]:
        return {"n_items": np.array([self.n_items], dtype=np.int64)}

    def _restore(self, state: Mapping[str, np.ndarray], config: Mapping[str, Any]) -> None:
        """The catalog size is restored by the base class from the config."""
