"""The text tower: peft's default LoRA targets, their override, and the encoder's pooling."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from lmrec.io import LmrecError
from lmrec.text.encoder import TextEncoder, resolve_encoder
from lmrec.text.tuning import LoraSettings, TextTower

torch.set_num_threads(1)  # two shared CPU cores

TEXTS = ["a space adventure with starships", "a cooking show about pasta", "", "Heat"]


def adapted(tower: TextTower) -> list[str]:
    """The names of the modules LoRA adapted, without the peft wrapper's prefix."""
    return sorted(
        name.removeprefix("base_model.model.").removesuffix(".lora_A")
        for name, _ in tower.model.named_modules()
        if name.endswith(".lora_A")
    )


def test_default_targets_are_peft_s_bert_default_query_and_value():
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as DEFAULTS

    encoder = TextEncoder(device="cpu")
    assert encoder.model.config.model_type == "bert"
    assert set(DEFAULTS["bert"]) == {"query", "value"}
    default = TextTower(encoder, TEXTS, "lora")
    names = adapted(default)
    assert len(names) == 12  # 6 layers x (query, value): as the hard-coded list was
    assert {name.rsplit(".", 1)[-1] for name in names} == {"query", "value"}
    explicit = TextTower(
        TextEncoder(device="cpu"),
        TEXTS,
        "lora",
        lora=LoraSettings(target_modules=("query", "value")),
    )
    assert adapted(explicit) == names
    assert default.trainable_parameters() == explicit.trainable_parameters() == 73_728


def test_target_modules_override():
    tower = TextTower(
        TextEncoder(device="cpu"), TEXTS, "lora", lora=LoraSettings(target_modules=("key",))
    )
    assert {name.rsplit(".", 1)[-1] for name in adapted(tower)} == {"key"}


def test_an_architecture_without_a_peft_default_needs_an_override():
    encoder = TextEncoder(device="cpu")
    encoder.model.config.model_type = "no-such-architecture"
    with pytest.raises(LmrecError, match="no default target modules for model type"):
        TextTower(encoder, TEXTS, "lora")


def test_the_tower_pools_as_the_encoder_declares(tmp_path):
    src, folder = resolve_encoder("default"), tmp_path / "cls"
    shutil.copytree(src, folder, ignore=shutil.ignore_patterns("model.safetensors"))
    (folder / "model.safetensors").symlink_to(src / "model.safetensors")
    pooling = folder / "1_Pooling" / "config.json"
    config = json.loads(pooling.read_text())
    pooling.write_text(
        json.dumps({**config, "pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False})
    )
    encoder = TextEncoder(str(folder), device="cpu")
    expected = encoder.encode(TEXTS, max_length=32)
    tower = TextTower(encoder, TEXTS, "full", max_length=32)
    np.testing.assert_allclose(tower.embed_all().numpy(), expected, atol=1e-5)
