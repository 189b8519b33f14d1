"""New-item exposure: reserved slots for fresh items in a top-k list.

A model ranks an item it has never seen from its text alone; even when that score is on the
same scale as the others, a new item competes with items that already have a click history,
and without impressions it never gets one ("cold items stay cold unless the system shows
them"). The policy reserves ``slots`` of every list of at least ``min_k`` items for *fresh*
items (fewer than ``max_interactions`` training interactions; with a known addition time,
added within ``max_age_days``), chosen by the model's own scores among the fresh items.

A list that already holds enough fresh items is left as it is. Otherwise the model's best
``k - need`` items keep their places and the best fresh items not yet listed take the last
``need`` slots, so the warm head of the list never moves. Feedback on those impressions
reaches the next retraining through ``/feedback``.

A reserved slot costs the list its last warm item, so it is only given where the fresh item
is a strong candidate: ``min_score_quantile`` q gives it to a fresh item whose score reaches
the q-quantile, over the model's users, of each user's best fresh-item score
(``score_threshold``). Text-only scores sit on a lower scale than scores of items with an ID
embedding, so they are compared with each other, not with the warm items they displace;
users whose best fresh item is among the strongest get it (q = 0: every list).

Which fresh item takes the slot: with ``text_weight`` w > 0, fresh items are ranked by
``(1 - w) * z(model score) + w * z(text affinity)`` (``PickScale``), where the text affinity
is the item's text vector against the mean text vector of the user's last ``TEXT_WINDOW``
history items, and z standardises each part over (user, fresh item) pairs of a sample of
users. The model's text-only score is a projection learned for items with an ID embedding;
the raw text similarity to what the user just watched adds what the projection misses
(measured on MovieLens-100K's new-arrivals split: ``benchmarks/results/new_items_val.md``).
The threshold is then taken on the blended score.

The gate and the pick can differ: with ``prior_weight`` g > 0 the fresh item that takes a
slot is the best by ``blend + g * prior``, where ``prior`` (``PopularityPrior``) is the
popularity the item's text predicts (a ridge regression of log(1 + interactions) on the
text vectors of the items with interactions, z-scored over the fresh items). Whether a list
gets a slot still depends on the blend alone, so the prior changes which fresh item a user
sees, never how many lists give up a warm item. Among random new arrivals most of what a
user picks is what everyone picks; the text says part of which (measured in
``benchmarks/results/new_items_val.md``).

The same functions serve the HTTP engine (one list) and the evaluation (a batch of lists),
so what the benchmark measures is what users get.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from lmrec.evaluation.metrics import top_k

_PAD = -1

#: History items (the most recent) whose text vectors form the user's text profile.
TEXT_WINDOW = 20
#: Ridge penalty of the popularity prior's regression (on unit text vectors).
PRIOR_RIDGE = 10.0
#: Items with interactions the prior is fitted on, at most (the first ones by index).
PRIOR_SAMPLE = 20_000


@dataclass(frozen=True)
class ExposurePolicy:
    """Reserved slots for fresh items (see the module docstring).

    Attributes:
        slots: fresh items guaranteed in a list of ``min_k`` or more (0 turns it off).
        max_interactions: an item is fresh with fewer training interactions than this.
        max_age_days: and, when its addition time is known, added at most this long ago
            (None: interactions alone decide).
        min_k: shorter lists get no reserved slot.
        min_score_quantile: a fresh item takes a reserved slot only with a score at least
            this quantile of the users' best fresh-item scores (0: always).
        text_weight: weight of the text affinity in the fresh pick (0: the model's score
            alone; see the module docstring).
        prior_weight: weight of the text-predicted popularity (``PopularityPrior``) in
            which fresh item takes a slot; not in whether a list gives one (0: off).
    """

    slots: int = 1
    max_interactions: int = 1
    max_age_days: float | None = 30.0
    min_k: int = 5
    min_score_quantile: float = 0.0
    text_weight: float = 0.0
    prior_weight: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_score_quantile < 1.0:
            raise ValueError(f"exposure: min_score_quantile must be in [0, 1): {self}")
        if not 0.0 <= self.text_weight <= 1.0:
            raise ValueError(f"exposure: text_weight must be in [0, 1]: {self}")
        if not 0.0 <= self.prior_weight <= 10.0:
            raise ValueError(f"exposure: prior_weight must be in [0, 10]: {self}")
        if self.slots < 0 or self.max_interactions < 1 or self.min_k < 1:
            raise ValueError(
                f"exposure: need slots >= 0, max_interactions >= 1, min_k >= 1: {self}"
            )
        if self.max_age_days is not None and self.max_age_days <= 0:
            raise ValueError(f"exposure: max_age_days must be > 0 or None, got {self.max_age_days}")

    def reserved(self, k: int) -> int:
        """Slots reserved in a list of ``k`` items."""
        return min(self.slots, k) if k >= self.min_k else 0

    def fresh_mask(
        self,
        interactions: np.ndarray,
        added_at: np.ndarray | None = None,
        now: float | None = None,
    ) -> np.ndarray:
        """Boolean mask of fresh items.

        Args:
            interactions: training interactions per item.
            added_at: unix seconds each item was added (NaN: unknown), or None.
            now: the time the age is measured at (unix seconds); needed with ``added_at``.
        """
        fresh = np.asarray(interactions) < self.max_interactions
        if added_at is not None and self.max_age_days is not None:
            if now is None:
                raise ValueError("exposure: fresh_mask needs `now` with `added_at`")
            added = np.asarray(added_at, dtype=np.float64)
            young = np.isnan(added) | (now - added <= self.max_age_days * 86_400.0)
            fresh &= young
        return fresh


def text_profiles(text: np.ndarray, histories: Sequence[np.ndarray]) -> np.ndarray:
    """Each history's text profile: the mean unit text vector of its last ``TEXT_WINDOW``
    items (zeros for an empty history). ``text``: unit vectors ``[n_items, dim]``."""
    out = np.zeros((len(histories), text.shape[1]), dtype=np.float32)
    for row, items in enumerate(histories):
        recent = np.asarray(items, dtype=np.int64)[-TEXT_WINDOW:]
        if len(recent):
            out[row] = text[recent].mean(axis=0)
    return out


@dataclass(frozen=True)
class PickScale:
    """The scales that put model scores and text affinities of fresh items on one footing
    (mean and standard deviation of each over (user, fresh item) pairs)."""

    model_mean: float = 0.0
    model_std: float = 1.0
    text_mean: float = 0.0
    text_std: float = 1.0

    @classmethod
    def fit(cls, parts: Iterable[tuple[np.ndarray, np.ndarray]]) -> PickScale:
        """From chunks of (model scores, text affinities) of the same pairs, any shape;
        pairs with a non-finite model score (excluded) are left out. Chunked so that a
        large sample of users never sits in memory at once. A None text part (a pick
        without text affinity) leaves the text scale at (0, 1)."""
        n, sums = 0, np.zeros(4)  # model, model², text, text²
        for model, text in parts:
            model = np.asarray(model, np.float64)
            text = np.zeros_like(model) if text is None else np.asarray(text, np.float64)
            keep = np.isfinite(model)
            m, t = model[keep], text[keep]
            n += len(m)
            sums += (m.sum(), (m * m).sum(), t.sum(), (t * t).sum())
        if not n:
            return cls()
        mean_m, mean_t = sums[0] / n, sums[2] / n
        std_m = np.sqrt(max(sums[1] / n - mean_m**2, 0.0))
        std_t = np.sqrt(max(sums[3] / n - mean_t**2, 0.0))
        return cls(float(mean_m), max(float(std_m), 1e-9), float(mean_t), max(float(std_t), 1e-9))

    def blend(self, model: np.ndarray, text: np.ndarray, weight: float) -> np.ndarray:
        """``(1 - weight) * z(model) + weight * z(text)`` (``-inf`` model scores stay so;
        ``text`` may be None at weight 0)."""
        model = np.asarray(model, np.float64)
        with np.errstate(invalid="ignore"):  # -inf * 0 at weight 1: masked below
            z = (1.0 - weight) * (model - self.model_mean) / self.model_std
            if weight > 0:
                z = z + weight * (np.asarray(text, np.float64) - self.text_mean) / self.text_std
        return np.where(np.isfinite(model), z, -np.inf)


@dataclass(frozen=True)
class PopularityPrior:
    """The popularity an item's text predicts, z-scored over the fresh items: the fresh
    pick's item-level term (``prior_weight``, module docstring). ``z(text vectors)``."""

    weights: np.ndarray  # [dim]: unit text vector -> z-scored prediction
    bias: float

    @classmethod
    def fit(
        cls,
        text: np.ndarray,
        interactions: np.ndarray,
        fresh: np.ndarray,
        ridge: float = PRIOR_RIDGE,
        sample: int = PRIOR_SAMPLE,
    ) -> PopularityPrior | None:
        """Ridge regression of ``log1p(interactions)`` on ``text`` (unit vectors
        ``[n_items, dim]``) over the first ``sample`` items that are not ``fresh``, scaled
        so the fresh items' predictions have mean 0 and std 1. None when there are fewer
        than two items on either side (nothing to learn from, or nothing to rank)."""
        known = np.flatnonzero(~np.asarray(fresh, dtype=bool))[:sample]
        new = np.flatnonzero(fresh)
        if len(known) < 2 or len(new) < 2:
            return None
        x = np.asarray(text[known], dtype=np.float64)
        y = np.log1p(np.asarray(interactions, dtype=np.float64)[known])
        x_mean, y_mean = x.mean(axis=0), y.mean()
        xc = x - x_mean
        gram = xc.T @ xc + ridge * np.eye(x.shape[1])
        weights = np.linalg.solve(gram, xc.T @ (y - y_mean))
        bias = float(y_mean - x_mean @ weights)
        predicted = np.asarray(text[new], dtype=np.float64) @ weights + bias
        std = max(float(predicted.std()), 1e-9)
        return cls(weights / std, (bias - float(predicted.mean())) / std)

    def __call__(self, vectors: np.ndarray) -> np.ndarray:
        return np.asarray(vectors, dtype=np.float64) @ self.weights + self.bias


def prior_terms(
    text: np.ndarray, interactions: np.ndarray, fresh: np.ndarray, weight: float
) -> np.ndarray | None:
    """``weight`` times the prior of each fresh item (in index order), fitted on these
    items; None when the weight is 0 or the prior cannot be fitted. What the engine and
    the evaluation add to the pick score of the fresh items."""
    if weight <= 0:
        return None
    prior = PopularityPrior.fit(text, interactions, fresh)
    return None if prior is None else weight * prior(text[np.asarray(fresh, dtype=bool)])


def merge(top: Sequence[int], fresh_top: Sequence[int], k: int, reserved: int, fresh) -> list[int]:
    """One list with ``reserved`` slots for fresh items.

    Args:
        top: the model's best items, best first (at least ``k`` when the catalog allows).
        fresh_top: the model's best fresh items, best first (at least ``reserved``).
        k: list length.
        reserved: slots for fresh items (``ExposurePolicy.reserved(k)``).
        fresh: ``item -> bool`` (an array or any indexable) telling fresh items.

    Returns:
        At most ``k`` distinct items: ``top``'s first ``k`` with its lowest-ranked warm items
        replaced by the best fresh items it lacks, which take the last slots. Fresh items
        already listed keep their places.
    """
    head = [int(i) for i in top[:k]]
    if reserved <= 0:
        return head
    need = reserved - sum(1 for i in head if fresh[i])
    if need <= 0:
        return head
    listed = set(head)
    extra = [int(i) for i in fresh_top if int(i) not in listed][:need]
    room = k - len(head)  # a short list (small catalog) takes fresh items without dropping any
    drop = max(0, len(extra) - room)
    warm_positions = [p for p, i in enumerate(head) if not fresh[i]]
    dropped = set(warm_positions[len(warm_positions) - drop :]) if drop else set()
    return [i for p, i in enumerate(head) if p not in dropped] + extra


def score_threshold(best_fresh: np.ndarray, policy: ExposurePolicy) -> float:
    """The score a fresh item needs for a reserved slot, from the users' best fresh-item
    scores (one per user; non-finite values, users without a fresh candidate, ignored)."""
    values = np.asarray(best_fresh, dtype=np.float64)
    values = values[np.isfinite(values)]
    if policy.min_score_quantile == 0.0 or not len(values):
        return -np.inf
    return float(np.quantile(values, policy.min_score_quantile))


def best_fresh_scores(scores: np.ndarray, fresh: np.ndarray) -> np.ndarray:
    """Each score row's best fresh-item score (``-inf`` without fresh items)."""
    if not fresh.any():
        return np.full(len(scores), -np.inf)
    return np.asarray(scores, dtype=np.float64)[:, fresh].max(axis=1)


def apply_to_scores(
    scores: np.ndarray,
    excluded: np.ndarray,
    fresh: np.ndarray,
    k: int,
    policy: ExposurePolicy,
    threshold: float = -np.inf,
    pick: np.ndarray | None = None,
    choose: np.ndarray | None = None,
) -> np.ndarray:
    """Top-k lists ``[n, k]`` (``-1`` padded) after the policy, for a batch of score rows.

    Args:
        scores: float ``[n, n_items]``, higher is better.
        excluded: bool ``[n, n_items]``, True = never listed (the user's history).
        fresh: bool ``[n_items]``.
        k: list length.
        policy: the exposure policy.
        threshold: the pick score a fresh item needs for a reserved slot
            (``score_threshold`` over the same pick scores).
        pick: float: the scores compared with ``threshold`` (``PickScale.blend`` with
            ``policy.text_weight``), ``[n, n_fresh]`` over the fresh items in index order
            (``np.flatnonzero(fresh)``: only they can take a slot, so the evaluation need
            not blend the whole catalog) or ``[n, n_items]``; None: ``scores``.
        choose: the scores fresh items are chosen by (``pick`` plus the popularity prior),
            shaped as ``pick``; None: ``pick``. A row gets as many slots (at most the
            reserved ones) as it has fresh items whose ``pick`` reaches ``threshold``.
    """
    top = top_k(scores, k, excluded)
    reserved = policy.reserved(k)
    if reserved == 0 or not fresh.any():
        return top
    columns = np.flatnonzero(fresh)

    def fresh_columns(values: np.ndarray | None) -> np.ndarray | None:
        if values is None or values.shape[1] == len(columns):
            return values
        return values[:, columns]

    pick = fresh_columns(scores if pick is None else pick)
    choose = pick if choose is None else fresh_columns(choose)
    outside = excluded[:, columns]
    best = top_k(choose, reserved, outside)  # positions in ``columns``, -1 padded
    fresh_top = np.where(best >= 0, columns[np.maximum(best, 0)], _PAD)
    if threshold > -np.inf:  # too weak for a slot: not offered
        strong = ((pick >= threshold) & ~outside).sum(axis=1)
        fresh_top = np.where(np.arange(reserved)[None, :] < strong[:, None], fresh_top, _PAD)
    out = np.full_like(top, _PAD)
    for row in range(len(top)):
        listed = merge(
            top[row][top[row] >= 0], fresh_top[row][fresh_top[row] >= 0], k, reserved, fresh
        )
        out[row, : len(listed)] = listed
    return out


def list_ranks(lists: np.ndarray, targets: np.ndarray, miss: int) -> np.ndarray:
    """0-based position of each row's target in its list, ``miss`` when absent."""
    hit = lists == np.asarray(targets)[:, None]
    return np.where(hit.any(axis=1), hit.argmax(axis=1), miss).astype(np.int64)
