"""The embed stage on the tiny synthetic catalog: real encoder, real files, atomic writes."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from lmrec.cli import app
from lmrec.config import EmbedParams
from lmrec.features.dataset import load_split
from lmrec.io import LmrecError
from lmrec.stages import embed
from lmrec.text.encoder import TextEncoder, resolve_encoder, weights_sha256

torch.set_num_threads(1)  # two shared CPU cores


@pytest.fixture(scope="module")
def split_dir(tiny_split_dir) -> Path:
    """The tiny profile's preprocess output (80 items)."""
    return tiny_split_dir


@pytest.fixture(scope="module")
def tiny_encoder_dir(tmp_path_factory) -> Path:
    """A small random BERT saved as a local Hugging Face directory (not the default)."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    path = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = AutoTokenizer.from_pretrained(resolve_encoder("default"), local_files_only=True)
    tokenizer.save_pretrained(path)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
    )
    BertModel(config).save_pretrained(path)
    return path


@pytest.mark.slow
def test_stage_writes_embeddings_and_encoder_record_deterministically(split_dir, tmp_path):
    cfg = EmbedParams(batch_size=16)
    start = time.perf_counter()
    summary = embed.run(cfg, split_dir, tmp_path / "a", progress=False)
    print(f"embed stage on 80 items (load + encode): {time.perf_counter() - start:.1f}s")
    assert summary["items"] == 80 and summary["dim"] == 384
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [
        "encoder.json",
        "item_embeddings.safetensors",
    ]
    vectors, meta = embed.load_embeddings(tmp_path / "a")
    assert vectors.shape == (80, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert meta["encoder"] == "all-MiniLM-L6-v2" and meta["dim"] == 384
    assert meta["n_items"] == 80 and meta["max_length"] == 128 and meta["normalize"] is True
    assert "path" not in meta  # no machine-specific path: the record hashes the same anywhere
    assert len(meta["weights_sha256"]) == 64
    # A fresh load gives the very same bytes on disk; another batch size, the same values.
    embed.run(cfg, split_dir, tmp_path / "b", progress=False)
    for name in ("item_embeddings.safetensors", "encoder.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    embed.run(EmbedParams(batch_size=64), split_dir, tmp_path / "c", progress=False)
    np.testing.assert_allclose(embed.load_embeddings(tmp_path / "c")[0], vectors, atol=1e-5)


def test_a_local_encoder_directory_works_and_is_recorded(split_dir, tiny_encoder_dir, tmp_path):
    summary = embed.run(
        EmbedParams(encoder=str(tiny_encoder_dir)), split_dir, tmp_path / "out", progress=False
    )
    assert summary["dim"] == 32
    vectors, meta = embed.load_embeddings(tmp_path / "out")
    assert vectors.shape == (80, 32)
    assert meta["encoder"] == str(tiny_encoder_dir)
    assert meta["weights_sha256"] != weights_sha256(resolve_encoder("default"))
    # Row i is item index i.
    texts = load_split(split_dir).items["text"].tolist()
    assert meta["texts_sha256"] == embed.texts_sha256(texts)
    picked = [5, 0, 79]
    direct = TextEncoder(str(tiny_encoder_dir)).encode([texts[i] for i in picked])
    np.testing.assert_allclose(vectors[picked], direct, atol=1e-5)


def test_bad_encoder_leaves_nothing_half_written(split_dir, tmp_path):
    out = tmp_path / "embed"
    with pytest.raises(LmrecError, match="encoder '/no/such/encoder'"):
        embed.run(EmbedParams(encoder="/no/such/encoder"), split_dir, out, progress=False)
    assert list(tmp_path.iterdir()) == []
    # An earlier good output survives a failed rerun untouched.
    out.mkdir()
    (out / "encoder.json").write_text("{}")
    with pytest.raises(LmrecError):
        embed.run(EmbedParams(encoder=str(tmp_path)), split_dir, out, progress=False)
    assert [p.name for p in tmp_path.iterdir()] == ["embed"]
    assert json.loads((out / "encoder.json").read_text()) == {}


def test_cli_reports_a_bad_encoder_in_one_line(split_dir, tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("embed:\n  encoder: /no/such/encoder\n")
    result = CliRunner().invoke(
        app, ["embed", "--params", str(params), "--split", str(split_dir), "--out", "x"]
    )
    assert result.exit_code == 1
    assert "error: encoder '/no/such/encoder': not a packaged encoder" in result.output


def test_split_without_items_is_a_data_error(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("")
    args = [
        "embed",
        "--params",
        str(params),
        "--split",
        str(tmp_path),
        "--out",
        str(tmp_path / "x"),
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert "item_text.parquet: file not found" in result.output
