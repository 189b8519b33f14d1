"""Intervals for metrics estimated on a seeded user sample (``protocol.sample_users``).

A per-user metric (HR, NDCG, MRR, Recall) is a mean over users; on a simple random sample
drawn without replacement its 95% interval is the normal approximation with the
finite-population correction, so a "sample" of every user has zero width.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from lmrec.evaluation.metrics import hit_values, mrr_values, ndcg_values, recall_values


def mean_interval(values: np.ndarray, population: int, z: float = 1.96) -> tuple[float, float]:
    """Normal-approximation interval of a population mean from a simple random sample.

    ``values`` are the sampled users' per-user metric values, drawn without replacement
    from ``population`` users; the standard error carries the finite-population correction
    ``sqrt((N - n) / (N - 1))``, so a "sample" of every user has zero width (the value is
    then exact, not an estimate). ``z`` 1.96 gives the 95% interval.

    Returns:
        (low, high); NaNs for an empty sample.
    """
    n = len(values)
    if n == 0:
        return float("nan"), float("nan")
    if population < n:
        raise ValueError(f"a sample of {n} users from a population of {population}")
    mean = float(np.mean(values))
    if n < 2 or population == n:
        return mean, mean
    fpc = math.sqrt((population - n) / (population - 1))
    half = z * float(np.std(values, ddof=1)) / math.sqrt(n) * fpc
    return mean - half, mean + half


_PER_USER = {"hr": hit_values, "ndcg": ndcg_values, "mrr": mrr_values, "recall": recall_values}


def rank_intervals(
    ranks: np.ndarray, population: int, metrics: Sequence[str]
) -> dict[str, dict[str, float]]:
    """95% intervals (``mean_interval``) of rank metrics named like ``"ndcg@10"``.

    Args:
        ranks: the sampled users' ranks (as for ``hit_rate``).
        population: how many users the sample was drawn from.
        metrics: names ``<hr|ndcg|mrr|recall>@<k>``.

    Returns:
        ``{name: {"low": float, "high": float}}``.
    """
    out = {}
    for name in metrics:
        kind, _, k = name.partition("@")
        low, high = mean_interval(_PER_USER[kind](ranks, int(k)), population)
        out[name] = {"low": low, "high": high}
    return out
