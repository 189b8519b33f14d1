"""Embed stage: every item's text through the pretrained encoder, once, cached by DVC.

Reads ``item_text.parquet`` (catalog text only) from the preprocess split directory and
writes, atomically:

- ``item_embeddings.safetensors``: tensor ``embeddings``, float32 ``[n_items, dim]``,
  row ``i`` is item index ``i``;
- ``encoder.json``: what reloading and auditing need (encoder name,
  dim, max_length, normalize, n_items, and SHA-256 digests of the encoder's weights and
  of the embedded texts, so a swapped encoder or stale embeddings are detectable).

With ``embed.cache_dir`` set, vectors are also kept by text SHA-256 in that folder
(``lmrec.text.cache``): a run encodes only the texts missing there, in shards of
``shard_texts`` texts written as they finish, so a catalog grown by 1% encodes 1% and a
killed run resumes at its last whole shard. The cache is deliberately not a DVC dependency
or output: it never changes the result beyond float rounding (a text's vector is computed in
other batch company than in a cold run: within 1e-5, see tests/pipeline/test_embed_stage.py),
and declaring it would re-run the stage whenever it grows.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from lmrec.artifacts import ITEM_TEXT_FILE, write_embeddings
from lmrec.config import EmbedParams
from lmrec.io import DataError, read_table
from lmrec.text.cache import EmbeddingCache, cache_key, text_sha256
from lmrec.text.encoder import TextEncoder, weights_sha256

#: Texts encoded, then written to the cache, at a time (what a killed run can lose).
SHARD_TEXTS = 4096


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


def run(
    cfg: EmbedParams,
    split_dir: Path,
    out_dir: Path,
    progress: bool = True,
    shard_texts: int = SHARD_TEXTS,
) -> dict:
    """Encode the split's item texts and write the embed directory; return its summary
    (``encoded``: texts run through the encoder, ``cached``: texts taken from the cache)."""
    texts = _item_texts(Path(split_dir) / ITEM_TEXT_FILE)
    encoder = TextEncoder(cfg.encoder)
    weights = weights_sha256(encoder.path)
    start = time.perf_counter()
    if cfg.cache_dir is None:
        embeddings = encoder.encode(
            texts, cfg.batch_size, cfg.max_length, normalize=cfg.normalize, progress=progress
        )
        encoded = len(texts)
    else:
        key = cache_key(
            encoder.path, weights, cfg.max_length, cfg.normalize,
            encoder.pooling, encoder.layout.prompt,
        )  # fmt: skip
        cache = EmbeddingCache(Path(cfg.cache_dir), key)
        embeddings, encoded = _encode_cached(encoder, cache, texts, cfg, progress, shard_texts)
    seconds = time.perf_counter() - start
    meta = {
        "encoder": cfg.encoder,
        "weights_sha256": weights,
        "dim": encoder.dim,
        "max_length": cfg.max_length,
        "normalize": cfg.normalize,
        "pooling": encoder.pooling,
        **({"prompt": encoder.layout.prompt} if encoder.layout.prompt else {}),
        "n_items": len(texts),
        "texts_sha256": texts_sha256(texts),
    }
    write_embeddings(out_dir, embeddings, meta)
    return {
        "items": len(texts),
        "dim": encoder.dim,
        "encoder": cfg.encoder,
        "device": str(encoder.device),
        "encoded": encoded,
        "cached": len(texts) - encoded,
        "seconds": round(seconds, 2),
    }


def _encode_cached(
    encoder: TextEncoder,
    cache: EmbeddingCache,
    texts: list[str],
    cfg: EmbedParams,
    progress: bool,
    shard_texts: int,
) -> tuple[np.ndarray, int]:
    """Every text's vector, encoding (longest first) and caching only the missing ones.

    Returns:
        (float32 ``[len(texts), dim]`` in item order, how many distinct texts were encoded).
    """
    digests = text_sha256(texts)
    _, first, inverse = np.unique(digests, axis=0, return_index=True, return_inverse=True)
    missing = first[cache.lookup(digests[first]) < 0]  # one row per distinct new text
    lengths = encoder.token_lengths([texts[i] for i in missing], cfg.max_length)
    missing = missing[np.argsort(-lengths, kind="stable")]
    with tqdm(total=len(missing), desc="embed", unit="text", disable=not progress) as bar:
        for start in range(0, len(missing), shard_texts):
            rows = missing[start : start + shard_texts]
            texts_in = [texts[i] for i in rows]
            vectors = encoder.encode(texts_in, cfg.batch_size, cfg.max_length, cfg.normalize)
            cache.store(digests[rows], vectors)
            bar.update(len(rows))
    rows = cache.lookup(digests[first])[inverse.reshape(-1)]
    return cache.vectors(rows), len(missing)
