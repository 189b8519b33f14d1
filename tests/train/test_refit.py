"""The refit's pieces in process: all-events data (same order as the split, nothing held
out), its split-layout round trip, the chosen epoch count, and the refit core reproducing
the candidate's weights byte for byte when given the candidate's own data."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from lmrec.artifacts import TRAINING_FILE, chosen_epochs
from lmrec.config import TrainParams
from lmrec.features import split as splitting
from lmrec.features.dataset import load_split, write_all_events
from lmrec.io import DataError, LmrecError
from lmrec.train.refit import check_epochs, refit_sequential
from lmrec.train.trainer import train_sequential

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def world(synthetic_world, tiny_params):
    """The tiny profile's data: the split's events and cold events, and all events."""
    interactions, items, _ = synthetic_world
    events, cold, cold_ids, _ = splitting.split(interactions, items, tiny_params.preprocess)
    everything, counts = splitting.all_events(
        interactions, items["item_id"], tiny_params.preprocess
    )
    return {"events": events, "cold": cold, "cold_ids": cold_ids, "all": everything, "n": counts}


def test_all_events_keeps_every_event_in_the_splits_order(world):
    everything, events, cold = world["all"], world["events"], world["cold"]
    assert len(everything) == len(events) + len(cold)
    assert set(everything["item_id"]) >= world["cold_ids"]  # the holdout items are trained on
    # Without the cold items the order is the split's, event for event.
    warm = everything[~everything["item_id"].isin(world["cold_ids"])]
    pairs = ["user_id", "item_id", "timestamp"]
    pd.testing.assert_frame_equal(
        warm[pairs].reset_index(drop=True), events[pairs].reset_index(drop=True)
    )
    # ... and every user's validation and test events are in it.
    held = events[events["role"] != "train"]
    keys = set(zip(everything["user_id"], everything["item_id"], strict=True))
    assert all(k in keys for k in zip(held["user_id"], held["item_id"], strict=True))
    assert (everything.groupby("user_id")["timestamp"].diff().dropna() >= 0).all()


def test_all_events_data_reads_back_as_training_only(world, tiny_split_dir, tmp_path):
    split = load_split(tiny_split_dir)
    write_all_events(tmp_path / "data", world["all"], split.items, {"interactions": 1})
    data = load_split(tmp_path / "data")
    assert (data.val_items == -1).all() and (data.test_items == -1).all() and data.cold.empty
    assert data.items["item_id"].tolist() == split.items["item_id"].tolist()  # same index
    assert not data.items["is_cold"].any()
    assert int(data.items["n_train"].sum()) == len(world["all"]) == sum(map(len, data.train))
    ids = split.items["item_id"].to_numpy()
    by_user = dict(zip(data.user_ids, data.train, strict=True))
    for user, user_id in enumerate(split.user_ids):
        seen = by_user[user_id]
        full = split.history_for(user, "test").tolist() + [split.test_items[user]]
        assert [i for i in seen if not split.items["is_cold"][i]] == full, user_id
    cold = split.cold.assign(user_id=split.user_ids[split.cold["user_idx"]])
    for row in cold.itertuples():
        assert row.item_idx in by_user[row.user_id], (row.user_id, ids[row.item_idx])
    times = dict(zip(data.user_ids, data.train_times, strict=True))
    assert all(np.all(np.diff(t) >= 0) for t in times.values())


def test_write_all_events_refuses_an_item_outside_the_catalog(world, tiny_split_dir, tmp_path):
    split = load_split(tiny_split_dir)
    stray = world["all"].assign(item_id=world["all"]["item_id"].where(lambda s: s.index > 0, "x"))
    with pytest.raises(ValueError, match="missing from the catalog"):
        write_all_events(tmp_path / "data", stray, split.items, {})


def test_chosen_epochs_is_the_best_epoch_one_based(tmp_path):
    (tmp_path / TRAINING_FILE).write_text(json.dumps({"best_epoch": 4, "epochs_run": 8}))
    assert chosen_epochs(tmp_path) == 5
    (tmp_path / TRAINING_FILE).write_text(json.dumps({"best_epoch": -1}))
    with pytest.raises(DataError, match="no best epoch"):
        chosen_epochs(tmp_path)
    with pytest.raises(DataError, match="training.json: not found"):
        chosen_epochs(tmp_path / "missing")


def test_an_epoch_count_outside_the_schedule_is_refused():
    check_epochs(1, 1)
    check_epochs(20, 20)
    for bad in (0, 21):
        with pytest.raises(LmrecError, match="train.sequential.epochs is 20"):
            check_epochs(bad, 20)


def test_refit_on_the_candidates_data_reproduces_the_candidate(tiny_split_dir, tmp_path, capsys):
    """Same seed, params, schedule and epoch count: given the candidate's own data, the
    refit takes exactly the candidate's steps up to its best epoch."""
    split = load_split(tiny_split_dir)
    text = np.random.default_rng(0).normal(size=(split.n_items, 8)).astype(np.float32)
    cfg = TrainParams(
        device="cpu",
        sequential={
            "epochs": 6,
            "dim": 16,
            "layers": 1,
            "heads": 2,
            "lr": 0.02,
            # the rest: the SequentialParams defaults this test was written with
            "batch_size": 128,
            "id_dropout": 0.3,
            "weight_decay": 0.0,
            "lr_schedule": "constant",
            "window_jitter": False,
            "label_smoothing": 0.0,
        },
        early_stopping={"metric": "ndcg@10", "patience": 2, "min_delta": 0.0},
    )
    candidate = train_sequential(split, text, cfg, tmp_path / "ckpt")
    epochs = candidate.best_epoch + 1
    refit = refit_sequential(split, text, cfg, epochs)
    assert refit.epochs == refit.model.epochs_trained == epochs
    assert len(refit.losses) == epochs
    for key, value in candidate.model.net.state_dict().items():
        assert torch.equal(refit.model.net.state_dict()[key], value), key
    assert f"refit epoch {epochs}/{epochs}" in capsys.readouterr().out
