"""The served path, offline: the lists users get (the model's ranking after the exposure
policy of ``lmrec.serving.exposure``), judged on the evaluation protocol's rows.

The protocol (``lmrec.evaluation.protocol``) judges a model's raw ranking; users see what
the service sends, and with ``serve.exposure`` on, some slots of every list go to fresh
items. ``served_metrics`` scores the protocol's warm rows (every user's held-out item) and
its ``new_items`` rows (items without training interactions, against the whole catalog)
through the same list surgery the engine applies, so the evaluate stage, the gate and the
benchmarks measure what a user would get from ``POST /recommend``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from lmrec.evaluation import metrics as M
from lmrec.evaluation.item_slices import new_item_rows
from lmrec.evaluation.ranking import batches, exclusion_mask, train_counts
from lmrec.features.dataset import SplitData
from lmrec.serving.exposure import (
    ExposurePolicy,
    PickScale,
    apply_to_scores,
    best_fresh_scores,
    list_ranks,
    prior_terms,
    score_threshold,
    text_profiles,
)

_BATCH = 256

#: Warm rows whose scores set each policy's pick scale and threshold (the engine's
#: ``THRESHOLD_USERS``: a bounded sample, the first ones in user order).
CALIBRATION_USERS = 20_000


def _scored(
    model: Any, split: SplitData, stage: str, users: np.ndarray, histories: Sequence[np.ndarray]
) -> Iterator[tuple[slice, np.ndarray]]:
    """(rows, scores) for consecutive batches of these histories, as the protocol scores
    them (``ranking.batches``); scorers of fixed per-user rows (``score_rows``: benchmark
    peers) give their rows."""
    for start in range(0, len(users), _BATCH):
        rows = slice(start, start + _BATCH)
        if hasattr(model, "score_rows"):
            scores = np.asarray(model.score_rows(users[rows]), dtype=np.float64)
        else:
            batch = next(batches(model, split, users[rows], stage, _BATCH, histories[rows]))
            scores = batch[2].astype(np.float64)
        yield rows, scores


class _Calibration:
    """One policy's pick scale, threshold and popularity prior, from the calibration rows.

    ``chunks`` hold the calibration rows' scores and text affinities for the items of
    ``union`` only (every policy's fresh items: a few columns, not the catalog)."""

    def __init__(
        self,
        policy: ExposurePolicy,
        fresh: np.ndarray,
        union: np.ndarray,
        chunks,
        text: np.ndarray | None = None,
        counts: np.ndarray | None = None,
    ) -> None:
        self.policy, self.fresh = policy, fresh
        own = fresh[union]  # this policy's fresh items among the chunks' columns
        self.scale = None
        if (policy.text_weight > 0 or policy.prior_weight > 0) and own.any():
            self.scale = PickScale.fit(
                (s[:, own], None if t is None else t[:, own]) for s, t in chunks
            )
        best = [best_fresh_scores(self.pick(s, t), own) for s, t in chunks]
        self.threshold = score_threshold(np.concatenate(best) if best else np.zeros(0), policy)
        self.prior = None  # per fresh item: prior_weight * the text-predicted popularity
        if text is not None and counts is not None:
            self.prior = prior_terms(text, counts, fresh, policy.prior_weight)

    def pick(self, scores: np.ndarray, affinity: np.ndarray | None) -> np.ndarray:
        """The score compared with the threshold (of the same columns as ``scores``)."""
        if self.scale is None:
            return scores
        return self.scale.blend(scores, affinity, self.policy.text_weight)

    def choose(self, pick: np.ndarray) -> np.ndarray:
        """The score fresh items are chosen by: ``pick`` (``[n, n_fresh]``) plus the prior."""
        return pick if self.prior is None else pick + self.prior[None, :]


def _affinity(
    text: np.ndarray | None, histories: Sequence[np.ndarray], items: np.ndarray | None = None
) -> np.ndarray | None:
    """Text affinities of these histories to every item (or to the ``items`` mask's)."""
    if text is None:
        return None
    return text_profiles(text, histories) @ (text if items is None else text[items]).T


def served_metrics(
    model: Any,
    split: SplitData,
    policies: Sequence[ExposurePolicy],
    stage: str = "test",
    k: int = 10,
    text: np.ndarray | None = None,
    users: np.ndarray | None = None,
) -> list[dict[str, Any]]:
    """Per policy: warm rows' and new-item rows' HR/NDCG@k in the served lists.

    Every row is scored once, in batches; each policy only re-cuts the lists. Fresh items
    are those with fewer than the policy's ``max_interactions`` training interactions (the
    split has no addition times, so the age cut-off does not apply offline). A policy's
    pick scale and score threshold come from the first ``CALIBRATION_USERS`` warm rows
    (their best fresh items), as the service takes them from its known users.

    Args:
        text: unit item text vectors ``[n_items, dim]``, needed by a policy with a
            ``text_weight``.
        users: a user sample (``evaluation.protocol.sample_users``): only these users'
            rows are scored; None = every user.

    Returns:
        One dict per policy: ``slots``, ``max_interactions``, ``min_score_quantile``,
        ``text_weight``, ``prior_weight``, ``overall`` and ``new_items`` (each ``hr@k``, ``ndcg@k``,
        ``fresh_per_list``, ``n_users``).
    """
    if text is None and any(p.text_weight > 0 or p.prior_weight > 0 for p in policies):
        raise ValueError(
            "served_metrics: a policy with text_weight or prior_weight > 0 needs `text`"
        )
    targets_all = split.test_items if stage == "test" else split.val_items
    warm_users = np.flatnonzero(targets_all >= 0)
    new_users, new_targets, new_hist = new_item_rows(split, stage)
    if users is not None:
        warm_users = warm_users[np.isin(warm_users, users)]
        keep = np.isin(new_users, users)
        new_users, new_targets = new_users[keep], new_targets[keep]
        new_hist = [h for h, kept in zip(new_hist, keep, strict=True) if kept]
    warm_hist = [split.history_for(int(u), stage) for u in warm_users]
    counts = train_counts(split)
    masks = [p.fresh_mask(counts) for p in policies]
    union = np.logical_or.reduce(masks) if masks else np.zeros(split.n_items, dtype=bool)
    sample = warm_users[:CALIBRATION_USERS]
    chunks = [
        (scores[:, union], _affinity(text, warm_hist[rows], union))
        for rows, scores in _scored(model, split, stage, sample, warm_hist[: len(sample)])
    ]
    calibrations = [
        _Calibration(p, m, union, chunks, text, counts)
        for p, m in zip(policies, masks, strict=True)
    ]
    del chunks
    rows_of = {
        "overall": (warm_users, targets_all[warm_users], warm_hist),
        "new_items": (new_users, new_targets, new_hist),
    }
    found: dict[str, list[dict[str, list]]] = {}
    for name, (users, targets, histories) in rows_of.items():
        found[name] = [{"ranks": [], "fresh": []} for _ in policies]
        for rows, scores in _scored(model, split, stage, users, histories):
            excluded = exclusion_mask(histories[rows], scores.shape[1], keep=targets[rows])
            affinity = _affinity(text, histories[rows], union)  # fresh columns only
            for cal, out in zip(calibrations, found[name], strict=True):
                own = cal.fresh[union]
                pick = cal.pick(
                    scores[:, cal.fresh], None if affinity is None else affinity[:, own]
                )
                lists = apply_to_scores(
                    scores,
                    excluded,
                    cal.fresh,
                    k,
                    cal.policy,
                    cal.threshold,
                    pick,
                    cal.choose(pick),
                )
                out["ranks"].append(list_ranks(lists, targets[rows], miss=k))
                out["fresh"].append(np.isin(lists, np.flatnonzero(cal.fresh)).sum(axis=1))
    results = []
    for i, cal in enumerate(calibrations):
        entry: dict[str, Any] = {
            "slots": cal.policy.slots,
            "max_interactions": cal.policy.max_interactions,
            "min_score_quantile": cal.policy.min_score_quantile,
            "text_weight": cal.policy.text_weight,
            "prior_weight": cal.policy.prior_weight,
        }
        for name, (users, _, _) in rows_of.items():
            entry[name] = {**_list_metrics(found[name][i], k), "n_users": len(users)}
        results.append(entry)
    return results


def _list_metrics(found: dict[str, list], k: int) -> dict[str, float]:
    """HR/NDCG@k of the targets' ranks in the served lists, and fresh items per list."""
    if not found["ranks"]:
        return {f"hr@{k}": float("nan"), f"ndcg@{k}": float("nan"), "fresh_per_list": 0.0}
    ranks = np.concatenate(found["ranks"])
    return {
        f"hr@{k}": M.hit_rate(ranks, k),
        f"ndcg@{k}": M.ndcg(ranks, k),
        "fresh_per_list": float(np.concatenate(found["fresh"]).mean()),
    }
