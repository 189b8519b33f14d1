"""Early stopping validates a bounded, seeded sample of users; small data validates everyone."""

from __future__ import annotations

import numpy as np

from lmrec.config import TrainParams, load_params
from lmrec.features.dataset import load_split
from lmrec.train.trainer import validation_split


def test_the_sample_keeps_a_seeded_subset_of_validation_targets(tiny_split_dir) -> None:
    split = load_split(tiny_split_dir)
    sampled = validation_split(split, 100, seed=0)
    kept = np.flatnonzero(sampled.val_items >= 0)
    assert len(kept) == 100
    np.testing.assert_array_equal(sampled.val_items[kept], split.val_items[kept])
    np.testing.assert_array_equal(sampled.test_items, split.test_items)
    assert all(a is b for a, b in zip(sampled.train, split.train, strict=True))
    again = validation_split(split, 100, seed=0).val_items
    np.testing.assert_array_equal(again, sampled.val_items)  # resume sees the same users
    other = validation_split(split, 100, seed=1).val_items
    assert not np.array_equal(other, sampled.val_items)


def test_small_splits_and_zero_validate_every_user(tiny_split_dir) -> None:
    split = load_split(tiny_split_dir)
    n_val = int((split.val_items >= 0).sum())
    assert validation_split(split, 0, seed=0) is split
    assert validation_split(split, n_val, seed=0) is split
    # The shipped defaults validate every user of the tiny profile and of MovieLens-100K.
    for path in ("params.yaml", "profiles/tiny.yaml"):
        assert load_params(path).train.validation_max_users >= 943 > n_val
    assert TrainParams().validation_max_users >= 943
