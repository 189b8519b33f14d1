"""``FreshItems.best``: the served path's fresh pick, against a brute-force pick."""

from __future__ import annotations

import numpy as np
import pytest

from lmrec.serving.exposure import ExposurePolicy, PickScale
from lmrec.serving.fresh import ROW_SUMS, FreshItems

N_ITEMS, DIM = 1200, 16


@pytest.fixture()
def catalog():
    rng = np.random.default_rng(7)
    matrix = rng.normal(size=(N_ITEMS, DIM)).astype(np.float32)
    user = rng.normal(size=DIM).astype(np.float32)
    affinity = rng.normal(size=N_ITEMS)
    popularity = np.where(rng.random(N_ITEMS) < 0.6, 0.0, 5.0)  # ~720 fresh: > ROW_SUMS
    excluded = np.sort(rng.choice(N_ITEMS, 50, replace=False))
    return matrix, user, affinity, popularity, excluded


def fresh_items(popularity, prior: np.ndarray | None) -> FreshItems:
    fresh = FreshItems(ExposurePolicy(slots=2, max_age_days=None, text_weight=0.3))
    fresh.update(popularity, np.full(N_ITEMS, np.nan), N_ITEMS)
    fresh.scale = PickScale(model_mean=0.1, model_std=2.0, text_mean=-0.2, text_std=0.5)
    fresh.prior = prior
    return fresh


@pytest.mark.parametrize("with_prior", [False, True])
def test_the_narrowed_pick_is_the_brute_force_pick(catalog, with_prior):
    """More fresh candidates than ``ROW_SUMS``: narrowed by a matrix product first, the
    chosen items (best by pick + prior) and the bars (the best pick scores of any
    candidate) are those of scoring every unseen fresh item."""
    matrix, user, affinity, popularity, excluded = catalog
    prior = np.random.default_rng(1).normal(size=N_ITEMS) * 2.0 if with_prior else None
    fresh = fresh_items(popularity, prior)
    assert len(fresh.scored) > ROW_SUMS
    items, values, bars = fresh.best(2, excluded, user, None, matrix, text=lambda c: affinity[c])
    candidates = np.setdiff1d(fresh.scored, excluded)
    model = matrix[candidates] @ user
    pick = 0.7 * (model - 0.1) / 2.0 + 0.3 * (affinity[candidates] + 0.2) / 0.5
    choose = pick + (prior[candidates] if with_prior else 0.0)
    best = candidates[np.argsort(-choose)[:2]]
    assert items == best.tolist()
    assert values == pytest.approx((matrix[best] @ user).tolist(), rel=1e-5)
    expected_bars = np.sort(pick)[::-1][:2] if with_prior else pick[np.argsort(-choose)[:2]]
    assert bars == pytest.approx(expected_bars.tolist(), rel=1e-5)
    if with_prior:  # the prior moved the choice away from the best pick
        assert items != candidates[np.argsort(-pick)[:2]].tolist()
