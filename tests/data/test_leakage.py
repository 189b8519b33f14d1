"""Leakage checks on the preprocess split (docs/design.md, evaluation protocol).

- no validation/test interaction appears in training;
- the cold items are absent from training, validation and test;
- same-second pairs are not ordered consistently across users;
- re-drawing the tie-break seed changes test items only within same-second groups.
"""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pandas as pd
import pytest

from lmrec.config import PreprocessParams
from lmrec.features import split as splitting
from lmrec.features.dataset import load_split
from lmrec.features.tiebreak import splitmix64, tiebreak_keys
from lmrec.stages import preprocess


@pytest.fixture()
def split_dir(contract_files, tmp_path):
    out = tmp_path / "split"
    preprocess.run(PreprocessParams(cold_item_share=0.1), *contract_files, out)
    return out


def test_no_validation_or_test_interaction_in_training(split_dir):
    s = load_split(split_dir)
    for u in range(s.n_users):
        train = set(s.train[u].tolist())
        assert s.val_items[u] not in train and s.test_items[u] not in train
        assert s.val_items[u] == -1 or s.val_items[u] != s.test_items[u]


def test_cold_items_are_absent_from_training(split_dir):
    s = load_split(split_dir)
    cold = set(s.items.loc[s.items["is_cold"], "item_idx"])
    assert len(cold) >= 1 and len(s.cold) >= 1
    seen = set(np.concatenate(s.train).tolist()) | set(s.val_items) | set(s.test_items)
    assert not cold & seen
    assert set(s.cold["item_idx"]) <= cold
    assert (s.items.loc[s.items["is_cold"], "n_train"] == 0).all()


def test_split_counts_add_up(split_dir, contract_files):
    s = load_split(split_dir)
    n_in = len(pd.read_parquet(contract_files[0]))
    n_train = sum(len(t) for t in s.train)
    n_eval = int((s.val_items >= 0).sum() + (s.test_items >= 0).sum())
    assert n_train + n_eval + len(s.cold) == n_in  # synthetic data: no duplicates, no k-core loss
    assert s.summary["train"] == n_train and s.summary["cold_interactions"] == len(s.cold)


def test_training_sequences_are_time_ordered(split_dir):
    s = load_split(split_dir)
    for times in s.train_times:
        assert (np.diff(times) >= 0).all()


def _shared_second_log(n_users: int = 400) -> pd.DataFrame:
    """Every user rates the same five items in the same second (MovieLens-style bulk rating)."""
    rows = [(f"u{u}", f"i{i}", 1_000 + u, "rate", 4.0) for u in range(n_users) for i in range(5)]
    return pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "event", "value"])


def test_same_second_pairs_are_not_ordered_consistently_across_users():
    log = _shared_second_log()
    ordered = splitting.order_events(log, seed=42)
    first_before = Counter()
    for _, events in ordered.groupby("user_id"):
        order = events["item_id"].tolist()
        for a, b in itertools.combinations(sorted(order), 2):
            first_before[(a, b)] += order.index(a) < order.index(b)
    shares = np.array(list(first_before.values())) / 400
    assert shares.min() > 0.35 and shares.max() < 0.65  # ~50/50 for every pair
    # ... unlike an item-id tie-break, which orders every pair the same way for all users.
    naive = log.sort_values(["user_id", "timestamp", "item_id"])
    assert naive.groupby("user_id")["item_id"].apply(tuple).nunique() == 1
    # and the test item is not the same item for everyone
    tests = splitting.leave_one_out(ordered).query("role == 'test'")["item_id"]
    assert tests.nunique() == 5 and tests.value_counts().max() < 0.3 * 400


def test_redrawing_the_seed_changes_test_items_only_within_same_second_groups(contract_files):
    interactions = pd.read_parquet(contract_files[0])
    a = splitting.leave_one_out(splitting.order_events(interactions, seed=1))
    b = splitting.leave_one_out(splitting.order_events(interactions, seed=2))
    test_a = a[a["role"] == "test"].set_index("user_id")
    test_b = b[b["role"] == "test"].set_index("user_id")
    changed = test_a.index[test_a["item_id"] != test_b.loc[test_a.index, "item_id"]]
    assert len(changed) > 0  # the synthetic data has last-second ties, so some users change
    last_second = interactions.groupby("user_id")["timestamp"].max()
    for user in changed:
        assert test_a.loc[user, "timestamp"] == test_b.loc[user, "timestamp"] == last_second[user]
        tied = interactions[
            (interactions["user_id"] == user) & (interactions["timestamp"] == last_second[user])
        ]
        assert len(tied) >= 2 and test_b.loc[user, "item_id"] in set(tied["item_id"])
    unchanged_ties = set(test_a.index) - set(changed)
    assert all(test_a.loc[u, "timestamp"] == last_second[u] for u in unchanged_ties)


def test_tiebreak_key_mixes_user_and_item():
    users = pd.Series(["u1", "u1", "u2", "u2"])
    items = pd.Series(["a", "b", "a", "b"])
    keys = tiebreak_keys(users, items, seed=0)
    assert len(set(keys.tolist())) == 4
    np.testing.assert_array_equal(keys, tiebreak_keys(users, items, seed=0))
    assert not np.array_equal(keys, tiebreak_keys(users, items, seed=1))


def _splitmix64_reference(x: int) -> int:
    m = (1 << 64) - 1
    z = (x + 0x9E3779B97F4A7C15) & m
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & m
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m
    return z ^ (z >> 31)


def test_splitmix64_matches_the_reference():
    xs = [0, 1, 2, 12345, (1 << 64) - 1, 0xDEADBEEFCAFEBABE]
    got = splitmix64(np.array(xs, dtype=np.uint64))
    assert [int(v) for v in got] == [_splitmix64_reference(x) for x in xs]
    assert _splitmix64_reference(0) == 0xE220A8397B1DCDAF  # published first output, seed 0


def test_cleaning_dedupes_and_drops_unknown_items():
    log = pd.DataFrame(
        {
            "user_id": ["u"] * 5,
            "item_id": ["a", "a", "b", "b", "zz"],
            "timestamp": [1, 1, 2, 3, 4],
            "event": ["v"] * 5,
            "value": [1.0] * 5,
        }  # fmt: skip
    )
    cleaned, counts = splitting.clean(log, pd.Series(["a", "b"]), keep="last")
    assert counts == {"duplicates_removed": 1, "repeats_removed": 1, "unknown_items_removed": 1}
    assert cleaned.sort_values("item_id")["timestamp"].tolist() == [1, 3]


def test_kcore_is_iterative():
    # u3 has 1 event on item c; dropping it leaves c with 1 event -> c's other user u2
    # falls below 2 events, and so on until a stable core remains.
    log = pd.DataFrame(
        {"user_id": ["u1", "u1", "u2", "u2", "u3"], "item_id": ["a", "b", "a", "c", "c"]}
    )
    core = splitting.kcore(log, min_user=2, min_item=2)
    assert core.empty
    dense = pd.DataFrame({"user_id": ["u1", "u1", "u2", "u2"], "item_id": ["a", "b", "a", "b"]})
    assert len(splitting.kcore(dense, 2, 2)) == 4
