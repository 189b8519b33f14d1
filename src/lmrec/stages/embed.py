"""Embed stage: every item's text through the pretrained encoder, once, cached by DVC.

Reads ``item_text.parquet`` (catalog text only) from the preprocess split directory and
writes, atomically:

- ``item_embeddings.safetensors``: tensor ``embeddings``, float32 ``[n_items, dim]``,
  row ``i`` is item index ``i``;
- ``encoder.json``: what reloading and auditing need (encoder name,
  dim, max_length, normalize, n_items, and SHA-256 digests of the encoder's weights and
  of the embedded texts, so a swapped encoder or stale embeddings are detectable).
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

from lmrec.config import EmbedParams
from lmrec.features.dataset import ITEM_TEXT_FILE
from lmrec.io import DataError, atomic_dir, read_table, write_json
from lmrec.text.encoder import TextEncoder, weights_sha256

EMBEDDINGS_FILE = "item_embeddings.safetensors"
META_FILE = "encoder.json"


def _item_texts(items_path: Path) -> list[str]:
    items = read_table(items_path)
    missing = {"item_idx", "text"} - set(items.columns)
    if missing:
        raise DataError(f"{items_path}: missing column(s) {sorted(missing)}")
    items = items.sort_values("item_idx", kind="stable")
    if not np.array_equal(items["item_idx"].to_numpy(), np.arange(len(items))):
        raise DataError(f"{items_path}, column 'item_idx': not the dense range 0..n-1")
    return items["text"].where(items["text"].notna(), "").astype(str).tolist()


def texts_sha256(texts: list[str]) -> str:
    """Digest of the texts in order (NUL-separated), to tie embeddings to their catalog."""
    return hashlib.sha256("\0".join(texts).encode()).hexdigest()


def run(cfg: EmbedParams, split_dir: Path, out_dir: Path, progress: bool = True) -> dict:
    """Encode the split's item texts and write the embed directory; return its summary."""
    texts = _item_texts(Path(split_dir) / ITEM_TEXT_FILE)
    encoder = TextEncoder(cfg.encoder)
    start = time.perf_counter()
    embeddings = encoder.encode(
        texts, cfg.batch_size, cfg.max_length, normalize=cfg.normalize, progress=progress
    )
    seconds = time.perf_counter() - start
    meta = {
        "encoder": cfg.encoder,
        "weights_sha256": weights_sha256(encoder.path),
        "dim": encoder.dim,
        "max_length": cfg.max_length,
        "normalize": cfg.normalize,
        "pooling": "mean",
        "n_items": len(texts),
        "texts_sha256": texts_sha256(texts),
    }
    with atomic_dir(out_dir) as tmp:
        save_file({"embeddings": np.ascontiguousarray(embeddings)}, str(tmp / EMBEDDINGS_FILE))
        write_json(tmp / META_FILE, meta)
    return {
        "items": len(texts),
        "dim": encoder.dim,
        "encoder": cfg.encoder,
        "device": str(encoder.device),
        "seconds": round(seconds, 2),
    }


def load_embeddings(embed_dir: Path) -> tuple[np.ndarray, dict]:
    """Read what ``run`` wrote: the ``[n_items, dim]`` matrix and the encoder record."""
    embed_dir = Path(embed_dir)
    path = embed_dir / EMBEDDINGS_FILE
    if not path.exists():
        raise DataError(f"{path}: file not found (run `lmrec embed` first)")
    meta = json.loads((embed_dir / META_FILE).read_text())
    return load_file(str(path))["embeddings"], meta
