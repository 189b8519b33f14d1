"""The embed stage on the tiny synthetic catalog: real encoder, real files, atomic writes."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from lmrec import artifacts
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
    vectors, meta = artifacts.load_embeddings(tmp_path / "a")
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
    np.testing.assert_allclose(artifacts.load_embeddings(tmp_path / "c")[0], vectors, atol=1e-5)


def test_a_local_encoder_directory_works_and_is_recorded(split_dir, tiny_encoder_dir, tmp_path):
    summary = embed.run(
        EmbedParams(encoder=str(tiny_encoder_dir)), split_dir, tmp_path / "out", progress=False
    )
    assert summary["dim"] == 32
    vectors, meta = artifacts.load_embeddings(tmp_path / "out")
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


# ---------------------------------------------------------------- the text-hash cache
WORDS = ["space", "drama", "love", "war", "robot", "city", "night", "river", "song"]


def _catalog(tmp_path: Path, name: str, texts: list[str]) -> Path:
    """A split directory holding only what the embed stage reads."""
    split = tmp_path / name
    split.mkdir()
    pd.DataFrame({"item_idx": np.arange(len(texts)), "text": texts}).to_parquet(
        split / "item_text.parquet"
    )
    return split


def _texts(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [
        f"title {seed}-{i}: " + " ".join(rng.choice(WORDS, int(rng.integers(2, 60))))
        for i in range(n)
    ]


@pytest.fixture()
def encoded_texts(monkeypatch) -> list[int]:
    """Counts the texts every ``embed_batch`` call runs through the encoder."""
    counts: list[int] = []
    original = TextEncoder.embed_batch

    def counted(self, texts, *args, **kwargs):
        counts.append(len(texts))
        return original(self, texts, *args, **kwargs)

    monkeypatch.setattr(TextEncoder, "embed_batch", counted)
    return counts


def test_a_catalog_grown_by_one_percent_encodes_one_percent(
    tiny_encoder_dir, tmp_path, encoded_texts
):
    old = _texts(400, seed=0)
    grown = old + _texts(4, seed=1)  # 1% new texts, and the catalog re-indexed
    grown = [grown[i] for i in np.random.default_rng(2).permutation(len(grown))]
    cache = tmp_path / "cache"
    cfg = EmbedParams(encoder=str(tiny_encoder_dir), batch_size=16, cache_dir=str(cache))
    first = embed.run(cfg, _catalog(tmp_path, "old", old), tmp_path / "e1", progress=False)
    assert (first["encoded"], first["cached"], sum(encoded_texts)) == (400, 0, 400)
    encoded_texts.clear()
    second = embed.run(cfg, _catalog(tmp_path, "grown", grown), tmp_path / "e2", progress=False)
    assert (second["encoded"], second["cached"], sum(encoded_texts)) == (4, 400, 4)
    # Every old text keeps its very vector; the whole equals a cold run within float rounding.
    warm, meta = artifacts.load_embeddings(tmp_path / "e2")
    before = dict(zip(old, artifacts.load_embeddings(tmp_path / "e1")[0], strict=True))
    for text, vector in zip(grown, warm, strict=True):
        if text in before:
            assert vector.tobytes() == before[text].tobytes()
    cold_cfg = cfg.model_copy(update={"cache_dir": None})
    embed.run(cold_cfg, tmp_path / "grown", tmp_path / "cold", progress=False)
    cold, cold_meta = artifacts.load_embeddings(tmp_path / "cold")
    np.testing.assert_allclose(warm, cold, atol=1e-5, rtol=0)
    assert meta == cold_meta  # the record does not depend on the cache
    # Nothing new: nothing encoded, the same bytes again.
    encoded_texts.clear()
    third = embed.run(cfg, tmp_path / "grown", tmp_path / "e3", progress=False)
    assert (third["encoded"], sum(encoded_texts)) == (0, 0)
    for name in (artifacts.EMBEDDINGS_FILE, artifacts.ENCODER_FILE):
        assert (tmp_path / "e2" / name).read_bytes() == (tmp_path / "e3" / name).read_bytes()


def test_a_killed_run_resumes_from_its_last_whole_shard(tiny_encoder_dir, tmp_path, monkeypatch):
    texts = _texts(200, seed=3)
    split = _catalog(tmp_path, "split", texts)
    cfg = EmbedParams(encoder=str(tiny_encoder_dir), batch_size=10, cache_dir=str(tmp_path / "c"))
    original, calls = TextEncoder.embed_batch, []

    def dies_at_the_fifth_batch(self, batch, *args, **kwargs):
        calls.append(len(batch))
        if len(calls) == 5:
            raise KeyboardInterrupt  # as a Ctrl-C mid-shard
        return original(self, batch, *args, **kwargs)

    monkeypatch.setattr(TextEncoder, "embed_batch", dies_at_the_fifth_batch)
    with pytest.raises(KeyboardInterrupt):
        embed.run(cfg, split, tmp_path / "out", progress=False, shard_texts=20)
    assert not (tmp_path / "out").exists()
    assert len(list((tmp_path / "c").rglob("*.safetensors"))) == 2  # batches 1-4: 2 shards
    monkeypatch.setattr(TextEncoder, "embed_batch", original)
    resumed = embed.run(cfg, split, tmp_path / "out", progress=False, shard_texts=20)
    assert (resumed["encoded"], resumed["cached"]) == (160, 40)
    cold_cfg = cfg.model_copy(update={"cache_dir": None})
    embed.run(cold_cfg, split, tmp_path / "cold", progress=False)
    np.testing.assert_allclose(
        artifacts.load_embeddings(tmp_path / "out")[0],
        artifacts.load_embeddings(tmp_path / "cold")[0],
        atol=1e-5,
        rtol=0,
    )


def test_a_damaged_cache_shard_is_named(tiny_encoder_dir, tmp_path):
    split = _catalog(tmp_path, "split", _texts(30, seed=4))
    cfg = EmbedParams(encoder=str(tiny_encoder_dir), cache_dir=str(tmp_path / "c"))
    embed.run(cfg, split, tmp_path / "out", progress=False)
    (shard,) = (tmp_path / "c").rglob("*.safetensors")
    shard.write_bytes(b"not a safetensors file")
    with pytest.raises(LmrecError, match=f"{shard}: unreadable embedding cache shard"):
        embed.run(cfg, split, tmp_path / "again", progress=False)


@pytest.mark.slow
def test_token_length_batches_match_the_old_character_length_batches(split_dir, tmp_path):
    """The embed stage before token-length batching sorted texts by characters, longest
    first, in batches of 64; the vectors agree within float rounding."""
    embed.run(EmbedParams(), split_dir, tmp_path / "new", progress=False)
    new = artifacts.load_embeddings(tmp_path / "new")[0]
    texts = load_split(split_dir).item_texts()
    encoder = TextEncoder()
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    old = np.zeros_like(new)
    with torch.inference_mode():
        for start in range(0, len(order), 64):
            rows = order[start : start + 64]
            old[rows] = encoder.embed_batch([texts[i] for i in rows], 128, True).numpy()
    print(f"max |new - old| = {np.abs(new - old).max():.2e}")
    np.testing.assert_allclose(new, old, atol=1e-5, rtol=0)
