"""Fine-tuning the item-text encoder inside recommender training (GPU workers).

``TextTower`` wraps a ``TextEncoder`` so that the whole catalog's text embeddings are a
differentiable function of the encoder weights. Modes:

* ``lora``: the encoder's weights stay frozen; low-rank adapters (peft) are trained, on
  the modules peft picks for the architecture (``query`` and ``value`` for BERT-family
  encoders such as MiniLM) unless ``LoraSettings.target_modules`` names others.
* ``full``: every encoder weight is trained.

The catalog is tokenized once (after the encoder's declared prompt) and pooled as the
encoder declares (``TextEncoder.layout``); every ``forward`` re-embeds all items (a full
softmax needs all of them anyway), in chunks so that activation memory stays bounded.
After training, ``embed_all`` gives the final embeddings, which the recommender stores
like precomputed ones, so a fine-tuned model is saved and served exactly like a
frozen-encoder model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from lmrec.io import LmrecError
from lmrec.text.encoder import TextEncoder

FINETUNE_MODES = ("frozen", "lora", "full")


@dataclass(frozen=True)
class LoraSettings:
    """LoRA adapter shape (peft ``LoraConfig``).

    Attributes:
        target_modules: module names to adapt; None: peft's default for the encoder's
            ``model_type`` (``TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING``).
    """

    r: int = 8
    alpha: int = 16
    dropout: float = 0.1
    target_modules: tuple[str, ...] | None = None


class TextTower(nn.Module):
    """All item texts → ``[n_items, dim]`` embeddings, differentiable in the encoder.

    Args:
        encoder: the loaded pretrained encoder (its ``model`` is adapted in place).
        texts: item text per item index.
        mode: ``lora`` or ``full``.
        max_length: tokens per text.
        normalize: L2-normalise each embedding, as the embed stage does.
        chunk: texts per encoder pass.
        lora: adapter settings for ``lora`` mode.
    """

    def __init__(
        self,
        encoder: TextEncoder,
        texts: Sequence[str],
        mode: str,
        max_length: int = 64,
        normalize: bool = True,
        chunk: int = 256,
        lora: LoraSettings | None = None,
    ) -> None:
        super().__init__()
        if mode not in ("lora", "full"):
            raise ValueError(f"text tower: mode must be 'lora' or 'full', got {mode!r}")
        self.mode, self.normalize, self.chunk = mode, normalize, max(1, chunk)
        model = encoder.model
        if mode == "lora":
            from peft import LoraConfig, get_peft_model

            lora = lora or LoraSettings()
            config = LoraConfig(
                r=lora.r,
                lora_alpha=lora.alpha,
                lora_dropout=lora.dropout,
                target_modules=_target_modules(model, lora),
                bias="none",
            )
            model = get_peft_model(model, config)
        else:
            model.requires_grad_(True)
        self.model, self.layout = model, encoder.layout
        batch = encoder.tokenizer(
            encoder.prompted(["" if t is None else str(t) for t in texts]),
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        )
        self.register_buffer("input_ids", batch["input_ids"], persistent=False)
        self.register_buffer("attention_mask", batch["attention_mask"], persistent=False)

    @property
    def n_items(self) -> int:
        return int(self.input_ids.shape[0])

    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def forward(self) -> torch.Tensor:
        """Embeddings of every item, float32 ``[n_items, dim]``, with gradients."""
        parts = []
        for start in range(0, self.n_items, self.chunk):
            ids = self.input_ids[start : start + self.chunk]
            mask = self.attention_mask[start : start + self.chunk]
            width = int(mask.sum(1).max())  # trim the chunk's common padding
            hidden = self.model(input_ids=ids[:, :width], attention_mask=mask[:, :width])
            parts.append(self.layout.pool(hidden.last_hidden_state, mask[:, :width]).float())
        pooled = torch.cat(parts)
        return nn.functional.normalize(pooled, p=2, dim=1) if self.normalize else pooled

    @torch.no_grad()
    def embed_all(self) -> torch.Tensor:
        """The current embeddings without gradients (eval mode, then back)."""
        was_training = self.training
        self.eval()
        try:
            return self.forward().detach()
        finally:
            self.train(was_training)

    def save_adapter(self, directory: str | Path) -> None:
        """Write the fine-tuned encoder (LoRA adapter or full weights) as safetensors."""
        self.model.save_pretrained(str(directory), safe_serialization=True)


def _target_modules(model: nn.Module, lora: LoraSettings) -> list[str] | None:
    """``lora.target_modules``, or None for peft's default, which must exist for the model.

    Raises:
        LmrecError: no override and peft knows no default for the model's architecture.
    """
    if lora.target_modules is not None:
        return list(lora.target_modules)
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as DEFAULTS

    model_type = getattr(model.config, "model_type", None)
    if model_type not in DEFAULTS:
        raise LmrecError(
            f"LoRA: peft has no default target modules for model type {model_type!r}; "
            "name them in LoraSettings.target_modules"
        )
    return None
