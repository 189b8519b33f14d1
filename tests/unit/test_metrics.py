"""Metrics against slow, obviously-correct pure-Python references (STYLE.md rule 7)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmrec.evaluation import metrics as M

NAN, INF = float("nan"), float("inf")
# A small value pool makes ties frequent; NaN and +-inf exercise the non-finite rules.
VALUES = [0.0, 0.5, 1.0, 1.0, 2.0, -1.0, NAN, INF, -INF]
FAST = settings(max_examples=80, deadline=None)


# --------------------------------------------------------------------------- references


def ref_rank(row: list[float], target: int, excluded: list[bool]) -> int:
    """Pessimistic rank: other candidates scoring at least as high as the target."""
    t = row[target]
    if not math.isfinite(t):
        return len(row)
    return sum(1 for j, s in enumerate(row) if j != target and not excluded[j] and s >= t)


def ref_nonfinite(row: list[float], excluded: list[bool], relevant: list[int]) -> bool:
    return any(not math.isfinite(s) for j, s in enumerate(row) if not excluded[j] or j in relevant)


def ref_top_k(row: list[float], k: int, excluded: list[bool]) -> list[int]:
    def key(j: int) -> tuple[float, int]:
        s = row[j]
        return (-(s if s == s else -INF), j)

    best = sorted((j for j in range(len(row)) if not excluded[j]), key=key)[:k]
    return best + [-1] * (k - len(best))


def ref_user_metrics(ranks: list[int], k: int) -> dict[str, float]:
    """HR, NDCG, MRR and recall for one user from the ranks of its relevant items."""
    hits = sorted(r for r in ranks if r < k)
    ideal = sum(1 / math.log2(i + 2) for i in range(min(len(ranks), k)))
    return {
        "hr": 1.0 if hits else 0.0,
        "ndcg": sum(1 / math.log2(r + 2) for r in hits) / ideal,
        "mrr": 1 / (hits[0] + 1) if hits else 0.0,
        "recall": len(hits) / len(ranks),
    }


def ref_mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else NAN


# --------------------------------------------------------------------------- strategies


@st.composite
def batches(draw, max_users: int = 5, max_items: int = 9):
    """(scores, exclude) with ties, NaN/inf and excluded items."""
    n = draw(st.integers(1, max_users))
    n_items = draw(st.integers(1, max_items))
    cell = st.sampled_from(VALUES) | st.floats(-3, 3)
    scores = [[draw(cell) for _ in range(n_items)] for _ in range(n)]
    exclude = [[draw(st.booleans()) for _ in range(n_items)] for _ in range(n)]
    return scores, exclude


@st.composite
def with_targets(draw):
    scores, exclude = draw(batches())
    n_items = len(scores[0])
    targets = [draw(st.integers(0, n_items - 1)) for _ in scores]
    return scores, exclude, targets


@st.composite
def with_relevant(draw):
    scores, exclude = draw(batches())
    n_items = len(scores[0])
    rel = [draw(st.lists(st.integers(0, n_items - 1), max_size=4)) for _ in scores]
    return scores, exclude, rel


@st.composite
def top_lists(draw):
    n_items = draw(st.integers(1, 8))
    k = draw(st.integers(1, 5))
    item = st.integers(-1, n_items - 1)
    lists = draw(st.lists(st.lists(item, min_size=k, max_size=k), min_size=0, max_size=5))
    return n_items, k, lists


def as_top(lists, k):
    return np.array(lists, dtype=np.int64).reshape(len(lists), k)


def as_arrays(scores, exclude, relevant):
    """Arguments in the (scores, targets, exclude_mask) order the rank functions take."""
    return np.array(scores, dtype=np.float64), relevant, np.array(exclude, dtype=bool)


# --------------------------------------------------------------------------- properties


@FAST
@given(with_targets())
def test_target_ranks_match_reference(case):
    scores, exclude, targets = case
    result = M.target_ranks(*as_arrays(scores, exclude, np.array(targets)))
    expected = [ref_rank(r, t, e) for r, t, e in zip(scores, targets, exclude, strict=True)]
    assert result.ranks.tolist() == expected
    flags = [ref_nonfinite(r, e, [t]) for r, t, e in zip(scores, targets, exclude, strict=True)]
    assert result.nonfinite.tolist() == flags
    assert result.n_nonfinite == sum(flags)


@FAST
@given(with_targets(), st.integers(1, 10))
def test_single_target_metrics_match_reference(case, k):
    scores, exclude, targets = case
    ranks = M.target_ranks(*as_arrays(scores, exclude, np.array(targets))).ranks
    per_user = [ref_user_metrics([r], k) for r in ranks.tolist()]
    assert M.hit_rate(ranks, k) == pytest.approx(ref_mean([u["hr"] for u in per_user]))
    assert M.ndcg(ranks, k) == pytest.approx(ref_mean([u["ndcg"] for u in per_user]))
    assert M.mrr(ranks, k) == pytest.approx(ref_mean([u["mrr"] for u in per_user]))
    assert M.recall_at_k(ranks, k) == pytest.approx(M.hit_rate(ranks, k))


@FAST
@given(with_relevant(), st.integers(1, 10))
def test_multi_relevant_metrics_match_reference(case, k):
    scores, exclude, relevant = case
    per_user = []
    for row, ex, rel in zip(scores, exclude, relevant, strict=True):
        if rel:
            ranks = [ref_rank(row, t, ex) for t in sorted(set(rel))]
            per_user.append(ref_user_metrics(ranks, k))
    result = M.relevant_ranks(*as_arrays(scores, exclude, [np.array(r) for r in relevant]))
    got = result.ranks
    for name, fn in [
        ("hr", M.hit_rate),
        ("ndcg", M.ndcg),
        ("mrr", M.mrr),
        ("recall", M.recall_at_k),
    ]:
        expected = ref_mean([u[name] for u in per_user])
        assert fn(got, k) == pytest.approx(expected, nan_ok=True)
    flags = [ref_nonfinite(r, e, rel) for r, e, rel in zip(scores, exclude, relevant, strict=True)]
    assert result.nonfinite.tolist() == flags


@FAST
@given(batches(), st.integers(1, 12))
def test_top_k_matches_reference(case, k):
    scores, exclude = case
    got = M.top_k(np.array(scores), k, np.array(exclude, dtype=bool))
    expected = [ref_top_k(r, k, e) for r, e in zip(scores, exclude, strict=True)]
    assert got.tolist() == expected


@FAST
@given(batches(), st.integers(1, 12))
def test_top_k_never_returns_excluded_items(case, k):
    scores, exclude = np.array(case[0]), np.array(case[1], dtype=bool)
    top = M.top_k(scores, k, exclude)
    for row, ex in zip(top, exclude, strict=True):
        items = row[row >= 0]
        assert not ex[items].any()
        assert len(set(items.tolist())) == len(items)
        assert len(items) == min(k, int((~ex).sum()))


@FAST
@given(top_lists())
def test_coverage_matches_reference(case):
    n_items, k, lists = case
    distinct = {i for row in lists for i in row if i >= 0}
    top = as_top(lists, k)
    assert M.coverage(top, n_items) == pytest.approx(len(distinct) / n_items)


@FAST
@given(top_lists(), st.data())
def test_novelty_matches_reference(case, data):
    n_items, k, lists = case
    counts = data.draw(st.lists(st.integers(0, 20), min_size=n_items, max_size=n_items))
    total = sum(counts)
    info = [-math.log2((c + 1) / (total + n_items)) for c in counts]
    expected = ref_mean([info[i] for row in lists for i in row if i >= 0])
    top = as_top(lists, k)
    assert M.novelty(top, np.array(counts)) == pytest.approx(expected, nan_ok=True)


@FAST
@given(top_lists(), st.data(), st.sampled_from([0.0, 0.2, 0.5, 1.0]))
def test_head_items_and_popularity_bias_match_reference(case, data, share):
    n_items, k, lists = case
    counts = data.draw(st.lists(st.integers(0, 5), min_size=n_items, max_size=n_items))
    n_head = math.ceil(round(share * n_items, 9))
    by_popularity = sorted(range(n_items), key=lambda i: (-counts[i], i))
    head = {i for i in by_popularity[:n_head] if counts[i] > 0}
    mask = M.head_items(np.array(counts), share)
    assert {i for i in range(n_items) if mask[i]} == head
    slots = [i for row in lists for i in row if i >= 0]
    expected = ref_mean([1.0 if i in head else 0.0 for i in slots])
    top = as_top(lists, k)
    assert M.popularity_bias(top, mask) == pytest.approx(expected, nan_ok=True)


@FAST
@given(top_lists(), st.data())
def test_intra_list_diversity_matches_reference(case, data):
    n_items, k, lists = case
    coord = st.sampled_from([0.0, 1.0, -1.0, 0.5])
    emb = [[data.draw(coord) for _ in range(3)] for _ in range(n_items)]

    def cos(a: list[float], b: list[float]) -> float:
        na, nb = math.sqrt(sum(x * x for x in a)), math.sqrt(sum(x * x for x in b))
        return (
            0.0 if na == 0 or nb == 0 else sum(x * y for x, y in zip(a, b, strict=True)) / (na * nb)
        )

    per_list = []
    for row in lists:
        items = [i for i in row if i >= 0]
        dists = [1 - cos(emb[a], emb[b]) for x, a in enumerate(items) for b in items[x + 1 :]]
        if dists:
            per_list.append(sum(dists) / len(dists))
    top = as_top(lists, k)
    got = M.intra_list_diversity(top, np.array(emb))
    assert got == pytest.approx(ref_mean(per_list), nan_ok=True, abs=1e-9)


# --------------------------------------------------------------------------- hand-computed


def test_ndcg_hand_computed():
    assert M.ndcg(np.array([0]), 10) == 1.0
    assert M.ndcg(np.array([2]), 10) == pytest.approx(0.5)  # 1 / log2(4)
    assert M.ndcg(np.array([10]), 10) == 0.0
    assert M.ndcg(np.array([0, 2]), 10) == pytest.approx(0.75)
    # two relevant items at ranks 0 and 2: (1 + 0.5) / (1 + 1/log2(3))
    assert M.ndcg(np.array([[0, 2]]), 10) == pytest.approx(1.5 / (1 + 1 / math.log2(3)))


def test_mrr_hr_recall_hand_computed():
    ranks = np.array([0, 1, 4, 9])
    assert M.mrr(ranks, 5) == pytest.approx((1 + 1 / 2 + 1 / 5 + 0) / 4)
    assert M.hit_rate(ranks, 5) == 0.75
    assert M.recall_at_k(np.array([[0, 7, -1], [3, -1, -1], [-1, -1, -1]]), 5) == 0.75


def test_target_ranks_hand_computed():
    scores = np.array([[0.1, 0.9, 0.5, 0.5], [1.0, 1.0, 1.0, 1.0], [NAN, 2.0, 3.0, 1.0]])
    exclude = np.array([[0, 1, 0, 0], [0, 0, 0, 0], [0, 0, 1, 0]], dtype=bool)
    result = M.target_ranks(scores, np.array([2, 0, 0]), exclude)
    # row 0: 0.9 excluded, other 0.5 ties above -> 1; row 1: all tie -> 3; row 2: NaN -> miss
    assert result.ranks.tolist() == [1, 3, 4]
    assert result.nonfinite.tolist() == [False, False, True]


def test_perfect_scorer_gets_full_credit():
    targets = np.array([3, 0, 7])
    scores = np.zeros((3, 8))
    scores[np.arange(3), targets] = 1.0
    ranks = M.target_ranks(scores, targets).ranks
    assert M.hit_rate(ranks, 1) == M.ndcg(ranks, 10) == M.mrr(ranks, 10) == 1.0


def test_constant_scorer_gets_no_credit():
    ranks = M.target_ranks(np.ones((4, 50)), np.array([0, 1, 2, 3])).ranks
    assert ranks.tolist() == [49] * 4
    assert M.hit_rate(ranks, 10) == M.ndcg(ranks, 10) == M.mrr(ranks, 10) == 0.0


def test_top_k_ties_by_item_index_and_pads():
    scores = np.array([[1.0, 2.0, 2.0, NAN, 0.0]])
    exclude = np.array([[False, False, False, False, True]])
    assert M.top_k(scores, 6, exclude).tolist() == [[1, 2, 0, 3, -1, -1]]


def test_metrics_of_no_users_are_nan():
    empty = np.zeros(0, dtype=np.int64)
    assert math.isnan(M.hit_rate(empty, 10))
    assert math.isnan(M.recall_at_k(np.full((2, 3), -1), 10))
    assert math.isnan(M.novelty(np.zeros((0, 3), dtype=np.int64), np.ones(4)))


def test_input_validation():
    with pytest.raises(ValueError, match="targets"):
        M.target_ranks(np.zeros((2, 3)), np.array([0, 3]))
    with pytest.raises(ValueError, match="exclude_mask"):
        M.top_k(np.zeros((2, 3)), 1, np.zeros((2, 2), dtype=bool))
    with pytest.raises(ValueError, match="k must be"):
        M.top_k(np.zeros((2, 3)), 0)
