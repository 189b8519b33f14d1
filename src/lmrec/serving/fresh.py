"""The fresh items of a served catalog, kept current for the exposure policy.

``lmrec.serving.exposure`` says what a fresh item is and how a list makes room for one;
this keeps, for one engine, which items are fresh *now*: computed when the engine loads,
again whenever an item is added or changed, and when an added item ages past
``max_age_days`` (checked with one clock read per request), so a request never scans the
catalog to find them.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from lmrec.serving import exposure
from lmrec.serving.exposure import ExposurePolicy, PickScale

#: Fresh candidates scored by row sums directly; more are narrowed by a matrix product first.
ROW_SUMS = 256


class _Members(frozenset):
    """A set of items that answers ``fresh[item]`` as ``exposure.merge`` asks it."""

    __getitem__ = frozenset.__contains__


class FreshItems:
    """Fresh items under ``policy``: call ``update`` whenever the catalog changes.

    Attributes:
        mask: bool per item, True = fresh.
        members: the fresh items as a set (a request checks a few items: no array work).
        scored: the fresh items the model can score (the model path's candidates).
        recent: every fresh item, newest addition first, then catalog items (unknown
            addition time) by popularity and index: the cold-start order.
        by_user: known users' best fresh unseen items (``best``), until the next ``update``.
        threshold: the pick score a fresh item needs for a reserved slot (set by the engine).
        scale: the pick's scale when fresh items are picked with their text affinity or
            the prior (``policy.text_weight`` or ``prior_weight`` > 0; set by the engine),
            else None: the model's score.
        prior: per item, ``prior_weight`` times the popularity its text predicts
            (``exposure.PopularityPrior``; set by the engine), else None.
    """

    def __init__(self, policy: ExposurePolicy) -> None:
        self.policy = policy
        self.mask = np.zeros(0, dtype=bool)
        self.members = _Members()
        self.scored = self.recent = np.zeros(0, dtype=np.int64)
        self.until = np.inf
        self.threshold = -np.inf
        self.scale: PickScale | None = None
        self.prior: np.ndarray | None = None
        self.by_user: dict[str, list] = {}
        self._inputs: tuple[np.ndarray, np.ndarray, int] | None = None

    def update(self, popularity: np.ndarray, added_at: np.ndarray, scorable: int) -> None:
        """Recompute from training interactions and addition times (NaN: unknown) per item;
        items from index ``scorable`` on have no model score."""
        self._inputs = popularity, added_at, scorable
        self.by_user = {}
        mask = self.policy.fresh_mask(popularity, added_at, time.time())
        self.mask = mask
        fresh = np.flatnonzero(mask)
        self.members = _Members(fresh.tolist())
        self.scored = fresh[fresh < scorable]
        added = np.where(np.isnan(added_at), -np.inf, added_at)
        self.recent = fresh[np.lexsort((fresh, -popularity[fresh], -added[fresh]))]
        young = added[mask & np.isfinite(added)]
        age = self.policy.max_age_days
        self.until = young.min() + age * 86_400.0 if len(young) and age else np.inf

    def reserved(self, head: list[int], k: int) -> int:
        """Slots a list of ``k`` starting with ``head`` reserves, 0 when it needs no fresh
        item added (it holds enough, or there is none). Also the number of best fresh items
        ``merge`` needs: the list keeps at most ``reserved - need`` fresh items of its own,
        so the best ``reserved`` hold the ``need`` it lacks."""
        reserved = self.policy.reserved(k)
        if reserved == 0:
            return 0
        if time.time() > self.until and self._inputs is not None:  # an added item aged out
            self.update(*self._inputs)
        members = self.members
        if not members or sum(i in members for i in head[:k]) >= reserved:
            return 0
        return reserved

    def merge(self, head: list[int], fresh_top: list[int], k: int, reserved: int) -> list[int]:
        """``exposure.merge`` under this policy."""
        return exposure.merge(head, fresh_top, k, reserved, self.members)

    def best(
        self,
        n: int,
        excluded: np.ndarray,
        user: np.ndarray | None,
        scores: np.ndarray | None,
        matrix: np.ndarray | None,
        known: str | None = None,
        text: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> tuple[list[int], list[float], list[float]]:
        """The ``n`` best fresh items outside ``excluded`` (best first by the pick plus the
        prior), their model scores, and the ``n`` best pick scores of any fresh candidate,
        best first: the i-th is what ``threshold`` is compared with for the i-th slot (with
        no prior, the listed items' own pick scores).

        Args:
            n: how many.
            excluded: items never picked (the user's history).
            user: the user vector (two-tower models).
            scores: every item's score when the list computed them (excluded: -inf).
            matrix: the item matrix of a two-tower model, else None (then ``scores``).
            known: a known user asking by stored history: the pick depends on nothing else,
                so it is kept (``policy.slots`` items) until the next ``update``.
            text: ``items -> their text affinity`` to this user (``Engine._affinity``), used
                with ``scale``; None: picked by the model's score.
        """
        if known is not None:
            if known not in self.by_user:
                picked = self.best(self.policy.slots, excluded, user, scores, matrix, None, text)
                self.by_user[known] = picked
            return tuple(values[:n] for values in self.by_user[known])  # type: ignore[return-value]
        candidates = self.scored
        if scores is not None:
            candidates = candidates[np.isfinite(scores[candidates])]
        elif matrix is not None and user is not None:
            candidates = outside(candidates, excluded)
        else:
            return [], [], []
        if len(candidates) > ROW_SUMS and matrix is not None:  # many: narrowed first
            rough = scores[candidates] if scores is not None else matrix[candidates] @ user
            pick = self._pick(candidates, rough, text)
            keep = np.argpartition(-self._choose(candidates, pick), n + 7)[: n + 8]
            if self.prior is not None:  # and the best picks, for the threshold
                keep = np.union1d(keep, np.argpartition(-pick, n - 1)[:n])
            candidates = candidates[keep]
        if matrix is None:
            values = scores[candidates]
        else:  # scored as known_users.ranked scores (row sums), as the list's items are
            values = np.multiply(matrix[candidates], user).sum(axis=1, dtype=np.float32)
        pick = self._pick(candidates, values, text)
        order = np.lexsort((candidates, -self._choose(candidates, pick)))[:n]
        bars = pick[order] if self.prior is None else -np.sort(-pick)[:n]
        return candidates[order].tolist(), values[order].tolist(), bars.tolist()

    def _pick(
        self,
        candidates: np.ndarray,
        values: np.ndarray,
        text: Callable[[np.ndarray], np.ndarray] | None,
    ) -> np.ndarray:
        """Pick scores of ``candidates`` with model scores ``values``."""
        if self.scale is None:
            return np.asarray(values, dtype=np.float64)
        weight = self.policy.text_weight if text is not None else 0.0
        affinity = text(candidates) if text is not None else None
        return self.scale.blend(values, affinity, weight)

    def _choose(self, candidates: np.ndarray, pick: np.ndarray) -> np.ndarray:
        """What fresh items are chosen by: the pick plus the prior."""
        return pick if self.prior is None else pick + self.prior[candidates]

    def recent_outside(self, excluded: np.ndarray, n: int) -> np.ndarray:
        """The first ``n`` of ``recent`` not in ``excluded`` (sorted)."""
        return outside(self.recent, excluded)[:n]


def outside(candidates: np.ndarray, excluded: np.ndarray) -> np.ndarray:
    """``candidates`` not in the sorted array ``excluded`` (a binary search per candidate:
    cheaper than ``np.isin``'s sort for the few fresh items of a request)."""
    if not len(excluded) or not len(candidates):
        return candidates
    at = np.minimum(np.searchsorted(excluded, candidates), len(excluded) - 1)
    return candidates[excluded[at] != candidates]
