"""Most-popular baseline: every user gets the items with the most training interactions."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from lmrec.features.dataset import SplitData
from lmrec.models.base import Params, Recommender


@dataclasses.dataclass(frozen=True)
class PopularityParams(Params):
    """Popularity has no hyperparameters; the class exists so every model has one."""


class PopularityRecommender(Recommender):
    """Scores each item by its number of training interactions, whatever the history.

    Cold items have no training interactions and score 0. Ties keep item-index order
    (see ``Recommender.recommend``).
    """

    name = "popularity"
    params_cls = PopularityParams
    uses_history = False

    def __init__(self, params: PopularityParams | None = None) -> None:
        super().__init__(params)
        self.counts: np.ndarray | None = None

    def _fit(self, split: SplitData) -> None:
        _, items = split.train_pairs()
        self.counts = np.bincount(items, minlength=self.n_items).astype(np.float32)

    def _score(self, histories: list[np.ndarray]) -> np.ndarray:
        return np.broadcast_to(self.counts, (len(histories), self.n_items)).copy()

    def _state(self) -> dict[str, np.ndarray]:
        return {"counts": self.counts}

    def _restore(self, state: Mapping[str, np.ndarray], config: Mapping[str, Any]) -> None:
        self.counts = state["counts"]
