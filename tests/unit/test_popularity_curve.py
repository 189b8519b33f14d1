"""Popularity curves against slow, obviously-correct pure-Python references (STYLE.md rule 7)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmrec.evaluation import metrics as M

NAN = float("nan")
FAST = settings(max_examples=50, deadline=None)


# --------------------------------------------------------------------------- references


def ref_bins(counts: list[int], n_bins: int) -> dict[int, int]:
    """Item -> bin: most popular first (ties to lower index), sizes as np.array_split."""
    order = sorted(range(len(counts)), key=lambda i: (-counts[i], i))
    small, extra = divmod(len(counts), n_bins)
    bins, start = {}, 0
    for b in range(n_bins):
        size = small + (1 if b < extra else 0)
        for item in order[start : start + size]:
            bins[item] = b
        start += size
    return bins


def ref_curve(lists: list[list[int]], counts: list[int], n_bins: int) -> list[float]:
    bins = ref_bins(counts, n_bins)
    slots = [i for row in lists for i in row if i >= 0]
    if not slots:
        return [NAN] * n_bins
    return [sum(1 for i in slots if bins[i] == b) / len(slots) for b in range(n_bins)]


def ref_catalog_curve(counts: list[int], n_bins: int) -> list[float]:
    bins = ref_bins(counts, n_bins)
    total = sum(counts)
    if total == 0:
        return [NAN] * n_bins
    return [sum(c for i, c in enumerate(counts) if bins[i] == b) / total for b in range(n_bins)]


# --------------------------------------------------------------------------- strategies


@st.composite
def cases(draw):
    """(lists, k, counts, n_bins): tied counts, zero counts and -1 padding are all common."""
    n_items = draw(st.integers(1, 12))
    k = draw(st.integers(1, 5))
    counts = draw(st.lists(st.integers(0, 4), min_size=n_items, max_size=n_items))
    item = st.integers(-1, n_items - 1)
    lists = draw(st.lists(st.lists(item, min_size=k, max_size=k), max_size=6))
    n_bins = draw(st.integers(1, n_items))
    return lists, k, counts, n_bins


def as_top(lists: list[list[int]], k: int) -> np.ndarray:
    return np.array(lists, dtype=np.int64).reshape(len(lists), k)


# --------------------------------------------------------------------------- properties


@FAST
@given(cases())
def test_popularity_curve_matches_reference(case):
    lists, k, counts, n_bins = case
    got = M.popularity_curve(as_top(lists, k), np.array(counts), n_bins)
    assert got.dtype == np.float64
    assert got.shape == (n_bins,)
    assert got.tolist() == pytest.approx(ref_curve(lists, counts, n_bins), nan_ok=True)


@FAST
@given(cases())
def test_catalog_popularity_curve_matches_reference(case):
    _, _, counts, n_bins = case
    got = M.catalog_popularity_curve(np.array(counts), n_bins)
    assert got.dtype == np.float64
    assert got.tolist() == pytest.approx(ref_catalog_curve(counts, n_bins), nan_ok=True)


@pytest.mark.parametrize("seed", range(5))
def test_curves_sum_to_one_on_larger_random_data(seed):
    rng = np.random.default_rng(seed)
    n_items, n_bins = int(rng.integers(10, 200)), int(rng.integers(1, 10))
    counts = rng.integers(0, 50, size=n_items)
    top = rng.integers(-1, n_items, size=(30, 10))
    got = M.popularity_curve(top, counts, n_bins)
    assert got.sum() == pytest.approx(1.0)
    assert got.tolist() == pytest.approx(ref_curve(top.tolist(), counts.tolist(), n_bins))
    catalog = M.catalog_popularity_curve(counts, n_bins)
    assert catalog.sum() == pytest.approx(1.0)
    assert catalog.tolist() == pytest.approx(ref_catalog_curve(counts.tolist(), n_bins))


# --------------------------------------------------------------------------- hand-computed


def test_hand_computed_curve():
    # popularity order: 3 (9), 1 (5), 0 (5, tie -> lower index first), 4 (2), 2 (0)
    # 2 bins via array_split of 5 items: {3, 1, 0} and {4, 2}
    counts = np.array([5, 5, 0, 9, 2])
    top = np.array([[3, 2, -1], [0, 4, 1], [-1, -1, -1]])
    # 5 filled slots: 3, 0, 1 in bin 0; 2, 4 in bin 1
    assert M.popularity_curve(top, counts, 2).tolist() == pytest.approx([0.6, 0.4])
    # 5 bins = one item each, in popularity order 3, 1, 0, 4, 2
    assert M.popularity_curve(top, counts, 5).tolist() == pytest.approx([0.2] * 5)
    assert M.popularity_curve(top, counts, 1).tolist() == [1.0]
    assert M.catalog_popularity_curve(counts, 2).tolist() == pytest.approx([19 / 21, 2 / 21])


def test_padding_is_ignored():
    counts = np.array([3, 2, 1, 0])
    padded = np.array([[0, -1, -1], [3, -1, -1]])
    assert M.popularity_curve(padded, counts, 2).tolist() == [0.5, 0.5]


def test_no_slots_gives_nan():
    counts = np.array([3, 2, 1])
    for top in (np.full((3, 4), -1), np.zeros((0, 10), dtype=np.int64)):
        got = M.popularity_curve(top, counts, 3)
        assert got.shape == (3,)
        assert all(math.isnan(v) for v in got)
    assert np.isnan(M.catalog_popularity_curve(np.zeros(4), 2)).all()


@pytest.mark.parametrize("n_bins", [0, -1, 4])
def test_bad_n_bins_rejected(n_bins):
    with pytest.raises(ValueError, match="n_bins"):
        M.popularity_curve(np.array([[0, 1]]), np.array([1, 2, 3]), n_bins)
    with pytest.raises(ValueError, match="n_bins"):
        M.catalog_popularity_curve(np.array([1, 2, 3]), n_bins)


def test_bad_inputs_rejected():
    with pytest.raises(ValueError, match="n_bins"):
        M.popularity_curve(np.zeros((1, 1), dtype=np.int64), np.array([]), 1)
    with pytest.raises(ValueError, match="item_counts"):
        M.catalog_popularity_curve(np.ones((2, 2)), 1)
    with pytest.raises(ValueError, match="non-negative"):
        M.catalog_popularity_curve(np.array([1, -1]), 1)
    with pytest.raises(ValueError, match="item 5"):
        M.popularity_curve(np.array([[0, 5]]), np.array([1, 2, 3]), 2)
