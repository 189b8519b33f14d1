"""One set of model defaults: ``SequentialParams`` is params.yaml's ``train.sequential``
block, typed in ``lmrec.config``; unknown blocks and keys are errors that name them; a saved
model's config.json is what the dataclass it replaced wrote."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import get_args

import numpy as np
import pytest
import yaml
from pydantic import ValidationError

from lmrec.config import FinetuneMode, SequentialParams, TrainParams, load_params
from lmrec.io import LmrecError

REPO = Path(__file__).resolve().parents[2]
PARAMS_FILES = ["params.yaml", *sorted(p.name for p in (REPO / "profiles").glob("*.yaml"))]
#: Set from train.seed and train.device, never in the train.sequential block.
FROM_THE_TRAIN_BLOCK = {"seed", "device"}


def _path(name: str) -> Path:
    return REPO / name if name == "params.yaml" else REPO / "profiles" / name


def test_params_yaml_sequential_block_is_the_typed_defaults_key_by_key():
    block = yaml.safe_load((REPO / "params.yaml").read_text())["train"]["sequential"]
    defaults = SequentialParams().model_dump()
    assert set(block) == set(defaults) - FROM_THE_TRAIN_BLOCK
    for key, value in block.items():
        assert (key, defaults[key], type(defaults[key])) == (key, value, type(value))
    assert load_params(REPO / "params.yaml").train.sequential == SequentialParams()
    assert TrainParams().sequential == SequentialParams()


@pytest.mark.parametrize("name", PARAMS_FILES)
def test_every_committed_params_file_loads_its_sequential_block_as_written(name):
    params = load_params(_path(name))
    block = yaml.safe_load(_path(name).read_text())["train"]["sequential"]
    assert params.train.sequential.model_dump(include=set(block)) == block


@pytest.mark.parametrize("name", PARAMS_FILES)
def test_the_train_block_dumps_as_its_file_writes_it_and_loads_back(name):
    train = load_params(_path(name)).train
    block = yaml.safe_load(_path(name).read_text())["train"]["sequential"]
    # What MLflow logs and params_hash hashes: the file's keys, not the block's unused seed
    # and device (train.seed / train.device are the ones trained with).
    assert train.model_dump()["sequential"] == block
    assert TrainParams.model_validate(train.model_dump()) == train


def test_an_unknown_top_level_block_is_an_error_naming_it(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("trian:\n  seed: 1\n")
    with pytest.raises(LmrecError, match=r"trian: .*unknown block \(did you mean 'train'\?\)"):
        load_params(bad)
    bad.write_text("serving:\n  max_k: 10\n")
    with pytest.raises(LmrecError, match=r"\n  serving: .*unknown block.*ingest, validate"):
        load_params(bad)


def test_an_unknown_sequential_key_is_an_error_naming_it(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("train:\n  sequential:\n    epoch: 3\n")
    with pytest.raises(
        LmrecError, match=r"train\.sequential\.epoch: .*unknown key \(did you mean 'epochs'\?\)"
    ):
        load_params(bad)
    with pytest.raises(ValidationError, match=r"sequential\.epoch\n"):
        TrainParams(sequential={"epoch": 3})


def test_seed_and_device_belong_to_the_train_block(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("train:\n  sequential:\n    seed: 3\n")
    with pytest.raises(LmrecError, match=r"set train\.seed, not train\.sequential\.seed"):
        load_params(bad)


def test_a_bad_value_names_its_key(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("train:\n  sequential:\n    heads: 3\n")
    with pytest.raises(LmrecError, match=r"train\.sequential: .*heads \(3\) must divide dim"):
        load_params(bad)


BAD = [
    {"heads": 3},
    {"dim": 0},
    {"epochs": 0},
    {"n_negatives": 0},
    {"dropout": 1.0},
    {"id_dropout": -0.1},
    {"lr": 0.0},
    {"weight_decay": -1.0},
    {"grad_accum_steps": 0},
    {"lora_r": 0},
    {"lr_schedule": "linear"},
    {"precision": "fp16"},
    {"encoder_finetune": "qlora"},
    {"window_stride": -1},
    {"window_stride": 52},  # max_len 50: at most 51
    {"label_smoothing": 1.0},
    {"encoder_lr": 0.0},
    {"lora_dropout": 1.0},
    {"device": "tpu"},
    {"device": "cuda:01"},
    {"device": "cuda:"},
]


@pytest.mark.parametrize("changes", BAD)
def test_bad_values_are_refused(changes):
    with pytest.raises(ValidationError):
        SequentialParams(**changes)


GOOD = [
    *({"device": d} for d in ("auto", "cpu", "cuda", "cuda:0", "cuda:12", "cpu:0")),
    {"window_stride": 51},
    {"heads": 4, "dim": 64},
    {"lr_schedule": "constant", "precision": "bf16", "encoder_finetune": "lora"},
]


@pytest.mark.parametrize("changes", GOOD)
def test_good_values_are_kept(changes):
    assert SequentialParams(**changes).model_dump(include=set(changes)) == changes


def test_the_params_are_frozen_and_hashable():
    params = SequentialParams()
    with pytest.raises(ValidationError):
        params.dim = 8
    assert hash(params) == hash(SequentialParams())


def test_finetune_modes_match_the_encoder_tuning():
    from lmrec.text.tuning import FINETUNE_MODES

    assert get_args(FinetuneMode) == FINETUNE_MODES


def test_loading_params_does_not_import_torch():
    code = "import sys, lmrec.config; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0


#: config.json's ``params`` for the tiny profile as the SequentialParams dataclass wrote it
#: before it became a pydantic block (artifacts/train/model/config.json of a tiny run).
#: ``ADDED_SINCE`` are the keys added after it, with their defaults.
ADDED_SINCE = {"lazy_id_updates": False}
DATACLASS_CONFIG_PARAMS = {
    "batch_size": 64,
    "device": "auto",
    "dim": 32,
    "dropout": 0.2,
    "encoder_finetune": "frozen",
    "encoder_lr": 5e-05,
    "epochs": 20,
    "full_softmax_max_items": 4000,
    "grad_accum_steps": 1,
    "heads": 2,
    "id_dropout": 0.1,
    "id_embeddings": True,
    "label_smoothing": 0.0,
    "layers": 2,
    "lora_alpha": 16,
    "lora_dropout": 0.1,
    "lora_r": 8,
    "lr": 0.005,
    "lr_schedule": "cosine",
    "max_len": 50,
    "n_negatives": 1024,
    "precision": "auto",
    "seed": 0,
    "text_max_length": 64,
    "weight_decay": 0.0,
    "window_jitter": False,
    "window_stride": 0,
}


def test_saved_config_json_is_the_dataclass_one_and_round_trips_byte_for_byte(tmp_path):
    import torch
    from tests.model.conftest import make_split

    from lmrec.models.base import CONFIG_FILE
    from lmrec.models.registry import load_model
    from lmrec.models.sequential import SequentialRecommender
    from lmrec.train.trainer import sequential_params

    torch.set_num_threads(1)
    params = sequential_params(load_params(REPO / "profiles" / "tiny.yaml").train)
    rng = np.random.default_rng(0)
    split = make_split([rng.integers(0, 20, size=8) for _ in range(10)], 20)
    model = SequentialRecommender(params).fit(split, on_epoch_end=lambda epoch, m: True)
    model.save(tmp_path / "a")
    text = (tmp_path / "a" / CONFIG_FILE).read_text()
    saved = json.loads(text)["params"]
    # Same keys, values and JSON types (0.0 stays 0.0, not 0; true is not 1): the same bytes.
    as_written = json.dumps(saved, indent=2, sort_keys=True)
    expected = {**DATACLASS_CONFIG_PARAMS, **ADDED_SINCE}
    assert as_written == json.dumps(expected, indent=2, sort_keys=True)
    loaded = load_model(tmp_path / "a")
    assert loaded.params == params and type(loaded.params) is SequentialParams
    loaded.save(tmp_path / "b")
    assert (tmp_path / "b" / CONFIG_FILE).read_text() == text


def test_a_config_saved_before_keys_were_added_loads_with_their_defaults():
    from lmrec.models.sequential import SequentialRecommender

    model = SequentialRecommender.from_config(DATACLASS_CONFIG_PARAMS)
    for key, default in ADDED_SINCE.items():
        assert getattr(model.params, key) == default
