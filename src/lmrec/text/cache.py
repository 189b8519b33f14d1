"""Text embeddings already computed, kept by text SHA-256, so a grown catalog encodes only its
new texts and an interrupted embed run resumes.

Layout: ``<root>/<key>/<shard>.safetensors``, one folder per encoder setting. ``key`` digests
what decides a vector: the encoder's weights and tokenizer files, ``max_length``,
``normalize``, the pooling and the torch and transformers versions (``cache_key``). A shard
holds ``sha256`` (uint8 ``[n, 32]``, the UTF-8 text's digest) and ``embeddings`` (float32
``[n, dim]``), is written whole (temporary file, then rename) and never changed, and is named
by the digest of its contents, so two runs writing the same shard agree and a killed run
leaves only whole shards. Nothing is evicted: delete the folder to reclaim the space.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from lmrec.io import DataError

#: Small files of an encoder directory that change its output besides the weights.
TOKENIZER_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt")


def text_sha256(texts: Sequence[str]) -> np.ndarray:
    """uint8 ``[len(texts), 32]``: each text's SHA-256 (UTF-8)."""
    out = np.zeros((len(texts), 32), dtype=np.uint8)
    for row, text in enumerate(texts):
        out[row] = np.frombuffer(hashlib.sha256(text.encode()).digest(), dtype=np.uint8)
    return out


def cache_key(
    model_dir: Path,
    weights: str,
    max_length: int,
    normalize: bool,
    pooling: str = "mean",
    prompt: str = "",
) -> str:
    """The folder name of one encoder setting's vectors (a SHA-256, hex): the pooling and
    the prompt the encoder's folder declares are part of it (``TextEncoder.layout``)."""
    import torch
    import transformers

    files = {}
    for name in TOKENIZER_FILES:
        if (model_dir / name).is_file():
            files[name] = hashlib.sha256((model_dir / name).read_bytes()).hexdigest()
    setting = {
        "weights_sha256": weights,
        "files": files,
        "max_length": max_length,
        "normalize": normalize,
        "pooling": pooling,
        **({"prompt": prompt} if prompt else {}),  # unprompted keys are what they always were
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    return hashlib.sha256(json.dumps(setting, sort_keys=True).encode()).hexdigest()


class EmbeddingCache:
    """The vectors stored under ``root/key``, looked up by text digest.

    Raises:
        DataError: a shard is unreadable or malformed (the message names the file).
    """

    def __init__(self, root: Path, key: str) -> None:
        self.folder = Path(root) / key
        self._rows: dict[bytes, int] = {}
        self._vectors: list[np.ndarray] = []
        for path in sorted(self.folder.glob("*.safetensors")):
            self._add(*_read_shard(path))

    def __len__(self) -> int:
        return len(self._rows)

    def lookup(self, digests: np.ndarray) -> np.ndarray:
        """Row of each digest among the stored vectors, -1 where none is stored."""
        return np.array([self._rows.get(d.tobytes(), -1) for d in digests], dtype=np.int64)

    def vectors(self, rows: np.ndarray) -> np.ndarray:
        """The stored vectors of ``rows`` (from ``lookup``, all >= 0)."""
        return np.concatenate(self._vectors)[rows] if len(rows) else np.zeros((0, 0), np.float32)

    def store(self, digests: np.ndarray, vectors: np.ndarray) -> None:
        """Write one shard of (digest, vector) pairs and keep them for lookups."""
        self.folder.mkdir(parents=True, exist_ok=True)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        digests = np.ascontiguousarray(digests, dtype=np.uint8)
        name = hashlib.sha256(digests.tobytes() + vectors.tobytes()).hexdigest()[:32]
        path = self.folder / f"{name}.safetensors"
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        save_file({"sha256": digests, "embeddings": vectors}, str(tmp))
        os.replace(tmp, path)
        self._add(digests, vectors)

    def _add(self, digests: np.ndarray, vectors: np.ndarray) -> None:
        base = sum(len(v) for v in self._vectors)
        new = [d.tobytes() for d in digests]
        self._rows.update((d, base + i) for i, d in enumerate(new) if d not in self._rows)
        self._vectors.append(vectors)


def _read_shard(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        tensors = load_file(str(path))
    except (OSError, SafetensorError) as err:
        raise DataError(f"{path}: unreadable embedding cache shard ({err}); delete it") from err
    digests, vectors = tensors.get("sha256"), tensors.get("embeddings")
    if (
        digests is None
        or vectors is None
        or digests.shape != (len(vectors), 32)
        or vectors.ndim != 2
    ):
        raise DataError(f"{path}: not an embedding cache shard (sha256 [n, 32], embeddings [n, d])")
    return digests, vectors
