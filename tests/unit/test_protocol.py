"""The evaluation protocol on a tiny hand-built split, with hand-written scorers."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmrec.evaluation import protocol as P
from lmrec.features.dataset import SplitData

N_ITEMS = 10
COLD = (8, 9)


def make_split(train, val, test, cold_pairs, n_items=N_ITEMS, cold_items=COLD) -> SplitData:
    """A SplitData from plain lists; ``n_train`` is counted from ``train``."""
    counts = np.bincount(
        np.concatenate([np.asarray(t, dtype=np.int64) for t in train]), minlength=n_items
    )
    items = pd.DataFrame(
        {
            "item_idx": np.arange(n_items),
            "item_id": [f"i{i}" for i in range(n_items)],
            "is_cold": np.isin(np.arange(n_items), cold_items),
            "n_train": counts,
        }
    )
    return SplitData(
        train=[np.asarray(t, dtype=np.int64) for t in train],
        val_items=np.asarray(val, dtype=np.int64),
        test_items=np.asarray(test, dtype=np.int64),
        train_times=[np.arange(len(t), dtype=np.int64) for t in train],
        user_ids=np.array([f"u{u}" for u in range(len(train))], dtype=object),
        items=items,
        cold=pd.DataFrame(cold_pairs, columns=["user_idx", "item_idx"]),
    )


@pytest.fixture
def split() -> SplitData:
    # u0 long history; u1 re-consumes its test item 0 (also a head item); u2 has no
    # validation item; u3 has no test item. Head items (top 20% of 10 by count): 1 and 0.
    return make_split(
        train=[[0, 1, 2, 3, 4, 5], [0, 1], [3], [1, 2]],
        val=[6, 2, -1, 4],
        test=[7, 0, 5, -1],
        cold_pairs=[(0, 8), (0, 9), (2, 9)],
    )


class Oracle:
    """Knows each user's target from its history; ``rest`` scores everything else."""

    def __init__(self, split: SplitData, stage: str, rest: float = 0.0, history: float = 0.0):
        targets = split.test_items if stage == "test" else split.val_items
        self.by_history = {
            tuple(split.history_for(u, stage).tolist()): int(t)
            for u, t in enumerate(targets)
            if t >= 0
        }
        self.rest, self.history, self.n_items = rest, history, split.n_items

    def score(self, histories: Sequence[np.ndarray]) -> np.ndarray:
        scores = np.full((len(histories), self.n_items), self.rest)
        for row, hist in enumerate(histories):
            scores[row, hist] = self.history
            target = self.by_history.get(tuple(hist.tolist()))
            if target is not None:
                scores[row, target] = 5.0
        return scores


class Constant:
    def score(self, histories: Sequence[np.ndarray]) -> np.ndarray:
        return np.ones((len(histories), N_ITEMS))


class Recorder(Constant):
    def __init__(self) -> None:
        self.seen: list[list[int]] = []

    def score(self, histories: Sequence[np.ndarray]) -> np.ndarray:
        self.seen.extend(h.tolist() for h in histories)
        return super().score(histories)


class Fixed:
    """The same score vector for every user."""

    def __init__(self, row: Sequence[float]) -> None:
        self.row = np.asarray(row, dtype=np.float64)

    def score(self, histories: Sequence[np.ndarray]) -> np.ndarray:
        return np.tile(self.row, (len(histories), 1))


def test_perfect_scorer_gets_hr_one(split):
    result = P.evaluate(Oracle(split, "test"), split, k=10)
    assert result["hr@10"] == result["ndcg@10"] == result["mrr@10"] == 1.0
    assert result["recall@20"] == 1.0
    assert result["n_users"] == 3 and result["n_nonfinite"] == 0


def test_constant_scorer_gets_nothing(split):
    # k=1: in this 10-item catalog every user has at least one tied rival for the top slot
    result = P.evaluate(Constant(), split, k=1, recall_k=1)
    assert result["hr@1"] == result["ndcg@1"] == result["mrr@1"] == result["recall@1"] == 0.0


def test_histories_follow_the_stage_and_skip_users_without_target(split):
    recorder = Recorder()
    P.evaluate(recorder, split, stage="test")
    assert recorder.seen == [[0, 1, 2, 3, 4, 5, 6], [0, 1, 2], [3]]
    recorder = Recorder()
    P.evaluate(recorder, split, stage="val")
    assert recorder.seen == [[0, 1, 2, 3, 4, 5], [0, 1], [1, 2]]


class PerUser:
    """A per-user scorer (like a factorisation model): one fixed row per user index."""

    def __init__(self, rows: np.ndarray) -> None:
        self.rows, self.calls = rows, []

    def score(self, histories: Sequence[np.ndarray]) -> np.ndarray:
        raise AssertionError("the protocol must prefer score_users")

    def score_users(self, users: np.ndarray, histories: Sequence[np.ndarray]) -> np.ndarray:
        self.calls.append((users.tolist(), [h.tolist() for h in histories]))
        return self.rows[users]


def test_per_user_scorers_get_user_indices_with_their_histories(split):
    targets = split.test_items
    rows = np.zeros((split.n_users, N_ITEMS))
    rows[np.flatnonzero(targets >= 0), targets[targets >= 0]] = 1.0  # each user's own target
    scorer = PerUser(rows)
    result = P.evaluate_protocol(scorer, split, "test")
    assert result["overall"]["hr@10"] == 1.0
    users, histories = scorer.calls[0]
    assert histories == [split.history_for(u, "test").tolist() for u in users]


def test_history_is_excluded_but_the_target_never_is(split):
    # History items outscore the target; only the exclusion lets the target reach rank 0.
    # u1's target (item 0) is also in its history: it must stay rankable and recommendable.
    result = P.evaluate(Oracle(split, "test", history=9.0), split, k=1)
    assert result["hr@1"] == 1.0
    assert result["coverage@1"] == pytest.approx(3 / N_ITEMS)  # top-1 lists are 7, 0, 5
    assert result["popularity_bias@1"] == pytest.approx(1 / 3)  # only item 0 is a head item


def test_exclusion_mask_keeps_targets():
    mask = P.exclusion_mask([np.array([0, 2]), np.array([], dtype=np.int64)], 4, np.array([2, 1]))
    assert mask.tolist() == [[True, False, False, False], [False, False, False, False]]


def test_cold_slice_only_ranks_cold_items(split):
    # Every warm item outscores the cold ones; item 9 beats item 8.
    scorer = Fixed([100.0] * 8 + [0.1, 0.9])
    cold = P.cold_item_slice(scorer, split, k=1)
    assert cold["n_users"] == 2 and cold["n_items"] == 2
    assert cold["hr@1"] == 1.0
    assert cold["recall@1"] == pytest.approx((0.5 + 1.0) / 2)  # u0 gets 9 not 8; u2 gets 9
    assert cold["ndcg@1"] == pytest.approx(1.0)
    assert P.cold_item_slice(Constant(), split, k=1)["hr@1"] == 0.0  # all cold items tie


def test_protocol_slices_select_the_right_users(split):
    result = P.evaluate_protocol(Oracle(split, "test"), split, k=10, short_history_max=5)
    assert set(result) == {"overall", "slices", "sample", "worst_user_group"}
    assert result["sample"]["users_evaluated"] == result["sample"]["users_total"] == 3
    quartiles = {name for name in P.ACTIVITY_GROUPS if name in result["slices"]}
    assert set(result["slices"]) == {
        "new_items", "cold_items", "short_history", "long_tail", "worst_user_group", *quartiles
    }  # fmt: skip
    assert sum(result["slices"][name]["n_users"] for name in quartiles) == 3
    assert result["overall"]["n_users"] == 3
    assert result["slices"]["short_history"]["n_users"] == 2  # u1, u2
    assert result["slices"]["long_tail"]["n_users"] == 2  # targets 7 and 5; 0 is head
    assert result["slices"]["cold_items"]["n_users"] == 2
    assert result["overall"] == P.evaluate(Oracle(split, "test"), split, k=10)


def test_activity_quartiles_partition_the_users_and_the_worst_is_named():
    """Users by quartile of training activity (least active first); the worst-served
    quartile's metrics are the ``worst_user_group`` slice, its name at the top level."""
    lengths = [1, 1, 2, 2, 4, 4, 8, 8]  # two users per quartile
    train = [list(range(n)) for n in lengths]
    # The oracle hits every target; u2 and u3 (second quartile) are given wrong targets.
    test = [8] * 8
    split = make_split(train, val=[-1] * 8, test=test, cold_pairs=[], n_items=9, cold_items=())
    scores = np.zeros((8, 9))
    scores[:, 8] = 1.0
    scores[[2, 3], 8] = -1.0  # their target last

    class ByLength:
        def score(self, histories, allow_nonfinite=False):
            return np.stack([scores[2] if len(h) == 2 else scores[0] for h in histories])

    result = P.evaluate_protocol(ByLength(), split, k=1)
    groups = [result["slices"][name] for name in P.ACTIVITY_GROUPS]
    assert [g["n_users"] for g in groups] == [2, 2, 2, 2]
    assert [g["hr@1"] for g in groups] == [1.0, 0.0, 1.0, 1.0]
    assert result["worst_user_group"] == "activity_q2"
    assert result["slices"]["worst_user_group"] == result["slices"]["activity_q2"]
    # A sample keeps the population's cut points: each sampled user stays in its quartile.
    sampled = P.evaluate_protocol(ByLength(), split, k=1, max_users=4, sample_seed=1)
    present = [sampled["slices"][n] for n in P.ACTIVITY_GROUPS if n in sampled["slices"]]
    assert all(group["users_total"] == 2 for group in present)
    assert sum(group["users_evaluated"] for group in present) == 4


def test_batching_does_not_change_results(split):
    scorer = Fixed(np.linspace(1.0, 0.0, N_ITEMS))
    one = P.evaluate_protocol(scorer, split, batch_size=1)
    many = P.evaluate_protocol(scorer, split, batch_size=256)
    assert one == many


def test_nonfinite_scores_are_counted_and_missed(split):
    result = P.evaluate(Fixed([math.nan] * N_ITEMS), split)
    assert result["n_nonfinite"] == 3 and result["hr@10"] == 0.0


def test_diversity_reported_with_embeddings(split):
    emb = np.eye(N_ITEMS)
    result = P.evaluate(Fixed(np.linspace(1.0, 0.0, N_ITEMS)), split, k=3, item_embeddings=emb)
    assert result["diversity@3"] == pytest.approx(1.0)


def test_bad_inputs_are_refused(split):
    with pytest.raises(ValueError, match="stage"):
        P.evaluate(Constant(), split, stage="train")
    with pytest.raises(ValueError, match="shape"):
        P.evaluate(Fixed([1.0, 2.0]), split)


def test_aggregate_seeds():
    runs = [
        {"hr@10": 0.1, "slices": {"cold": {"hr@10": 0.5}}},
        {"hr@10": 0.3, "slices": {"cold": {"hr@10": math.nan}}},
        {"hr@10": 0.2, "slices": {"cold": {"hr@10": 0.7}}},
    ]
    out = P.aggregate_seeds(runs)
    assert out["hr@10"]["mean"] == pytest.approx(0.2)
    assert out["hr@10"]["std"] == pytest.approx(0.1)
    assert out["hr@10"]["n"] == 3
    assert out["slices"]["cold"]["hr@10"] == {
        "mean": pytest.approx(0.6),
        "std": pytest.approx(math.sqrt(0.02)),
        "n": 2,
    }
    assert P.aggregate_seeds([{"x": 1.0}])["x"] == {"mean": 1.0, "std": 0.0, "n": 1}


# --------------------------------------------------------------------------- reference


class HashScorer:
    """Deterministic pseudo-random scores in {0, 1, 2} (many ties) keyed by the history."""

    def __init__(self, n_items: int) -> None:
        self.n_items = n_items

    def score(self, histories: Sequence[np.ndarray]) -> np.ndarray:
        rows = [
            np.random.default_rng([7, *h.tolist()]).integers(0, 3, self.n_items) for h in histories
        ]
        return np.array(rows, dtype=np.float64).reshape(len(histories), self.n_items)


def reference_hr_ndcg(scorer, split: SplitData, k: int) -> tuple[float, float, int]:
    """Leave-one-out by hand: loops, sets, no numpy tricks."""
    hits, gains = [], []
    for user in range(split.n_users):
        target = int(split.test_items[user])
        if target < 0:
            continue
        hist = split.history_for(user, "test").tolist()
        row = scorer.score([np.array(hist, dtype=np.int64)])[0].tolist()
        excluded = set(hist) - {target}
        rank = sum(
            1
            for j in range(len(row))
            if j != target and j not in excluded and row[j] >= row[target]
        )
        hits.append(1.0 if rank < k else 0.0)
        gains.append(1 / math.log2(rank + 2) if rank < k else 0.0)
    return sum(hits) / len(hits), sum(gains) / len(gains), len(hits)


@st.composite
def random_splits(draw):
    n_items = draw(st.integers(4, 12))
    n_users = draw(st.integers(1, 6))
    item = st.integers(0, n_items - 1)
    train = [draw(st.lists(item, min_size=1, max_size=6)) for _ in range(n_users)]
    val = [draw(st.integers(-1, n_items - 1)) for _ in range(n_users)]
    test = [draw(st.integers(0, n_items - 1)) for _ in range(n_users)]
    return make_split(train, val, test, [], n_items=n_items, cold_items=())


@settings(max_examples=40, deadline=None)
@given(random_splits(), st.integers(1, 5))
def test_evaluate_matches_reference_protocol(split, k):
    result = P.evaluate(HashScorer(split.n_items), split, k=k, batch_size=2)
    hr, ndcg, n = reference_hr_ndcg(HashScorer(split.n_items), split, k)
    assert result[f"hr@{k}"] == pytest.approx(hr)
    assert result[f"ndcg@{k}"] == pytest.approx(ndcg)
    assert result["n_users"] == n
