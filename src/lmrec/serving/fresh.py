"""The fresh items of a served catalog, kept current for the exposure policy.

``lmrec.serving.exposure`` says what a fresh item is and how a list makes room for one;
this keeps, for one engine, which items are fresh *now*: computed when the engine loads,
again whenever an item is added or changed, and when an added item ages past
``max_age_days`` (checked with one clock read per request), so a request never scans the
catalog to find them.
"""

from __future__ import annotations

import time

import numpy as np

from lmrec.serving import exposure
from lmrec.serving.exposure import ExposurePolicy


class FreshItems:
    """Fresh items under ``policy``: call ``update`` whenever the catalog changes.

    Attributes:
        mask: bool per item, True = fresh.
        scored: the fresh items the model can score (the model path's candidates).
        recent: every fresh item, newest addition first, then catalog items (unknown
            addition time) by popularity and index: the cold-start order.
    """

    def __init__(self, policy: ExposurePolicy) -> None:
        self.policy = policy
        self.mask = np.zeros(0, dtype=bool)
        self.scored = self.recent = np.zeros(0, dtype=np.int64)
        self.until = np.inf
        self._inputs: tuple[np.ndarray, np.ndarray, int] | None = None

    def update(self, popularity: np.ndarray, added_at: np.ndarray, scorable: int) -> None:
        """Recompute from training interactions and addition times (NaN: unknown) per item;
        items from index ``scorable`` on have no model score."""
        self._inputs = popularity, added_at, scorable
        mask = self.policy.fresh_mask(popularity, added_at, time.time())
        self.mask = mask
        self.scored = np.flatnonzero(mask[:scorable])
        added = np.where(np.isnan(added_at), -np.inf, added_at)
        fresh = np.flatnonzero(mask)
        self.recent = fresh[np.lexsort((fresh, -popularity[fresh], -added[fresh]))]
        young = added[mask & np.isfinite(added)]
        age = self.policy.max_age_days
        self.until = young.min() + age * 86_400.0 if len(young) and age else np.inf

    def wanted(self, head: list[int], k: int) -> bool:
        """Whether a list of ``k`` starting with ``head`` needs fresh items added."""
        reserved = self.policy.reserved(k)
        if reserved == 0:
            return False
        if time.time() > self.until and self._inputs is not None:  # an added item aged out
            self.update(*self._inputs)
        return len(self.recent) > 0 and int(self.mask[head[:k]].sum()) < reserved

    def pool(self, k: int) -> int:
        """How many best fresh items ``merge`` may need for a list of ``k``."""
        return self.policy.reserved(k) + k

    def merge(self, head: list[int], fresh_top: list[int], k: int) -> list[int]:
        """``exposure.merge`` under this policy."""
        return exposure.merge(head, fresh_top, k, self.policy.reserved(k), self.mask)

    def recent_outside(self, excluded: np.ndarray, n: int) -> np.ndarray:
        """The first ``n`` of ``recent`` not in ``excluded``."""
        candidates = self.recent
        if len(excluded):
            candidates = candidates[~np.isin(candidates, excluded)]
        return candidates[:n]
