"""Scorer adapters for the evaluate stage: lenient scores, and models of another catalog.

* ``LenientScorer``: returns a model's NaN/inf scores instead of raising, so the protocol
  counts them as misses and reports them (``n_nonfinite``).
* ``CatalogScorer``: scores this split's catalog with a model trained on another one (the
  champion, trained on an earlier data snapshot). History items the model does not know are
  dropped; catalog items it does not know get a score below every known item's, so they
  rank last instead of counting as non-finite.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lmrec.artifacts import item_index
from lmrec.models.base import Recommender


class LenientScorer:
    """``model.score`` with non-finite scores passed through (the protocol counts them)."""

    def __init__(self, model: Recommender) -> None:
        self.model = model

    def score(self, histories: Sequence[np.ndarray]) -> np.ndarray:
        return self.model.score(histories, allow_nonfinite=True)


class CatalogScorer:
    """A model trained on ``model_item_ids`` scoring the catalog ``item_ids``."""

    def __init__(
        self, model: Recommender, model_item_ids: Sequence[str], item_ids: Sequence[str]
    ) -> None:
        if len(model_item_ids) != model.n_items:
            raise ValueError(
                f"{model.name}: {len(model_item_ids)} item ids for {model.n_items} items"
            )
        self.model = model
        index = item_index(list(model_item_ids))
        # this catalog's index -> the model's index (-1: unknown to the model)
        self.to_model = np.array([index.get(str(i), -1) for i in item_ids], dtype=np.int64)
        self.known = self.to_model >= 0
        self.identical = (
            bool(self.known.all())
            and np.array_equal(self.to_model, np.arange(len(self.to_model)))
            and len(model_item_ids) == len(item_ids)
        )

    @property
    def n_unknown(self) -> int:
        """Items of this catalog the model has never seen."""
        return int((~self.known).sum())

    def score(self, histories: Sequence[np.ndarray], allow_nonfinite: bool = True) -> np.ndarray:
        """Scores over this catalog; non-finite model scores always pass through (the
        protocol counts them), so ``allow_nonfinite`` is accepted for the model's call form."""
        if self.identical:
            return self.model.score(histories, allow_nonfinite=True)
        mapped = [self.to_model[np.asarray(h, dtype=np.int64)] for h in histories]
        mapped = [h[h >= 0] for h in mapped]
        raw = self.model.score(mapped, allow_nonfinite=True)
        out = np.empty((len(histories), len(self.to_model)), dtype=np.float32)
        out[:, self.known] = raw[:, self.to_model[self.known]]
        if self.n_unknown:
            finite = np.where(np.isfinite(raw), raw, np.inf).min(axis=1, initial=np.inf)
            floor = (np.where(np.isfinite(finite), finite, 0.0) - 1.0).astype(np.float32)
            # strictly below even where float32 cannot represent "- 1.0" (|score| > 2**24)
            floor = np.nextafter(floor, np.float32(-np.inf))
            out[:, ~self.known] = floor[:, None]
        return out
