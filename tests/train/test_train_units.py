"""Train-layer pieces in isolation: checkpoints, early stopping, params, fingerprints."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from tests.model.conftest import TEST_RECIPE, make_split

from lmrec.config import EarlyStoppingParams, SequentialParams, TrainParams
from lmrec.io import LmrecError
from lmrec.models.sequential import SequentialRecommender
from lmrec.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from lmrec.train.tracking import flatten
from lmrec.train.trainer import EarlyStopping, fingerprint, sequential_params

torch.set_num_threads(1)

#: A small ID-only model: two epochs, the rest the defaults of before they were params.yaml's.
SMALL = {"epochs": 2, "dim": 16, "layers": 2, "batch_size": 128, "lr": 1.0e-3, **TEST_RECIPE}


def random_split(seed: int):
    rng = np.random.default_rng(seed)
    train = [rng.integers(0, 30, size=12) for _ in range(40)]
    return make_split(train, 30, val=rng.integers(0, 30, 40), test=rng.integers(0, 30, 40))


@pytest.fixture(scope="module")
def split():
    return random_split(3)


def test_early_stopping_waits_patience_epochs_and_keeps_the_best():
    stopper = EarlyStopping(patience=2, min_delta=0.01)
    assert stopper.update(0.10, 0) == (True, False)
    assert stopper.update(0.105, 1) == (False, False)  # below min_delta: not a gain
    assert stopper.update(0.20, 2) == (True, False)
    assert stopper.update(0.19, 3) == (False, False)
    assert stopper.update(0.18, 4) == (False, True)
    assert (stopper.best, stopper.best_epoch) == (0.20, 2)
    restored = EarlyStopping.restore(
        EarlyStoppingParams(patience=2, min_delta=0.01), json.loads(json.dumps(stopper.state()))
    )
    assert restored == stopper


def test_checkpoint_round_trip_restores_the_optimizer_exactly(split, tmp_path):
    states = []

    def keep(epoch, model):
        states.append(model.train_state())
        return False

    model = SequentialRecommender(SequentialParams(**SMALL, device="cpu"))
    model.fit(split, on_epoch_end=keep)
    save_checkpoint(tmp_path / "ck", states[0], {"fingerprint": "abc"})
    state, meta = load_checkpoint(tmp_path / "ck")
    assert meta == {"fingerprint": "abc"} and state.epochs_done == 1
    assert state.epoch_losses == pytest.approx(states[0].epoch_losses)
    for key, value in states[0].module.items():
        assert torch.equal(state.module[key], value), key
    original = states[0].optimizer
    assert state.optimizer["param_groups"][0]["lr"] == original["param_groups"][0]["lr"]
    for index, values in original["state"].items():
        for name, value in values.items():
            assert torch.equal(state.optimizer["state"][index][name], value), (index, name)
    # Resuming from epoch 1 reproduces the uninterrupted second epoch exactly.
    resumed = SequentialRecommender(SequentialParams(**SMALL, device="cpu"))
    resumed.fit(split, resume=state)
    assert resumed.epoch_losses == pytest.approx(model.epoch_losses, abs=1e-7)
    histories = [split.history_for(u, "test") for u in range(5)]
    np.testing.assert_allclose(resumed.score(histories), model.score(histories), atol=1e-6)


def test_incomplete_or_foreign_checkpoints_are_refused(tmp_path):
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        load_checkpoint(tmp_path / "missing")
    (tmp_path / "bad").mkdir()
    for name in ("module.safetensors", "optimizer.safetensors"):
        (tmp_path / "bad" / name).write_bytes(b"")
    (tmp_path / "bad" / "checkpoint.json").write_text('{"format_version": 99}')
    with pytest.raises(CheckpointError, match="format_version 99"):
        load_checkpoint(tmp_path / "bad")


def test_train_params_name_the_bad_key():
    with pytest.raises(ValidationError, match=r"sequential\.epoch\n  Extra inputs"):
        TrainParams(sequential={"epoch": 3})
    with pytest.raises(ValidationError, match=r"sequential\.precision\n"):
        TrainParams(sequential={"precision": "fp8"})
    with pytest.raises(ValidationError, match=r"set train\.seed, not train\.sequential\.seed"):
        TrainParams(sequential={"seed": 3})
    with pytest.raises(LmrecError, match=r"train\.sequential: .*\ndevice\n"):
        sequential_params(TrainParams(), device="tpu")
    params = sequential_params(TrainParams(seed=5, sequential={"epochs": 2}), device="cpu")
    assert (params.seed, params.epochs, params.device) == (5, 2, "cpu")


def test_fingerprint_follows_params_and_data_but_not_the_device(split):
    base = SequentialParams(epochs=2, device="cpu")
    same = fingerprint(SequentialParams(epochs=2, device="cuda"), split, None)
    assert fingerprint(base, split, None) == same
    assert fingerprint(SequentialParams(epochs=3), split, None) != same
    other = random_split(4)
    assert fingerprint(base, other, None) != same


def test_flatten_nested_params_for_mlflow():
    flat = flatten({"a": {"b": 1, "c": {"d": "x"}}, "e": [1, 2], "f": None})
    assert flat == {"a.b": 1, "a.c.d": "x", "e": "[1, 2]", "f": "None"}
