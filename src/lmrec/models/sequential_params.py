"""Hyperparameters of the sequential recommender, and the device and precision they pick.

The one typed home of the model's defaults (``SequentialParams``, validated on
construction); ``resolve_device`` and ``resolve_precision`` turn its ``device`` and
``precision`` strings into torch objects. The model itself is in ``sequential``; see that
module's docstring for the layout of the ``sequential*`` modules.
"""

from __future__ import annotations

import dataclasses

import torch

from lmrec.models.base import Params
from lmrec.text.tuning import FINETUNE_MODES

PRECISIONS = ("auto", "fp32", "bf16")
LR_SCHEDULES = ("constant", "cosine")


@dataclasses.dataclass(frozen=True)
class SequentialParams(Params):
    """Hyperparameters of ``SequentialRecommender``.

    Attributes:
        max_len: most recent history items a user vector is computed from.
        dim: width of item and user vectors and of the transformer.
        heads: attention heads (must divide ``dim``).
        layers: transformer layers.
        dropout: dropout on input embeddings and inside the transformer.
        id_embeddings: learn an ID embedding per item on top of the text projection.
        id_dropout: probability that an item's ID embedding is zeroed in a training step.
        epochs: training epochs (a callback may stop earlier).
        batch_size: training sequences per step.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        full_softmax_max_items: largest catalog trained with a full softmax; larger ones
            use a sampled softmax (on CPU a full step costs ~1.9x a sampled one at 5k items,
            5.4x at 20k: benchmarks/results/scale_training.md).
        n_negatives: negatives per step in the sampled softmax (shared across the batch).
        lr_schedule: "constant", or "cosine" (decay to 0 over ``epochs``, set per step).
        grad_accum_steps: batches whose gradients are summed before one optimizer step.
        precision: "auto" (bf16 autocast on CUDA with bf16 support, else fp32), "fp32"
            or "bf16" (autocast on any device).
        encoder_finetune: "frozen" (train on the precomputed text embeddings), "lora"
            (train LoRA adapters on the encoder) or "full" (train the whole encoder).
        encoder_lr: AdamW learning rate of the encoder's trained weights.
        text_max_length: tokens per item text when the encoder is fine-tuned.
        lora_r: LoRA rank.
        lora_alpha: LoRA scaling numerator.
        lora_dropout: dropout inside the LoRA adapters.
        window_stride: items between the ends of a sequence's training windows; 0 means
            ``max_len + 1`` (no overlap). Smaller strides give every predicted item at
            least ``max_len + 1 - window_stride`` items of context, at proportional cost.
        window_jitter: move the training windows before a sequence's most recent one back
            by a random offset each epoch, so items are predicted from varying contexts
            instead of always after the same fixed boundary.
        label_smoothing: label smoothing of the next-item cross-entropy (0 = none).
        seed: seeds initialisation, shuffling, dropout and sampling.
        device: "auto" (CUDA when available, else CPU), "cpu", "cuda" or "cuda:N".
    """

    max_len: int = 50
    dim: int = 64
    heads: int = 2
    layers: int = 2
    dropout: float = 0.2
    id_embeddings: bool = True
    id_dropout: float = 0.3
    epochs: int = 30
    batch_size: int = 128
    lr: float = 1.0e-3
    weight_decay: float = 0.0
    full_softmax_max_items: int = 4_000
    n_negatives: int = 1024
    lr_schedule: str = "constant"
    grad_accum_steps: int = 1
    precision: str = "auto"
    encoder_finetune: str = "frozen"
    encoder_lr: float = 5.0e-5
    text_max_length: int = 64
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.1
    window_stride: int = 0
    window_jitter: bool = False
    label_smoothing: float = 0.0
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        counts = (self.max_len, self.dim, self.heads, self.layers, self.epochs, self.batch_size)
        if min(counts) < 1 or self.full_softmax_max_items < 1 or self.n_negatives < 1:
            raise ValueError(f"sequential: sizes and counts must be >= 1, got {self}")
        if self.dim % self.heads:
            raise ValueError(f"sequential: heads ({self.heads}) must divide dim ({self.dim})")
        if not (0.0 <= self.dropout < 1.0 and 0.0 <= self.id_dropout < 1.0):
            raise ValueError(f"sequential: dropout and id_dropout must be in [0, 1), got {self}")
        if self.lr <= 0 or self.weight_decay < 0:
            raise ValueError(f"sequential: need lr > 0 and weight_decay >= 0, got {self}")
        if min(self.grad_accum_steps, self.text_max_length, self.lora_r, self.lora_alpha) < 1:
            raise ValueError(f"sequential: accumulation and encoder sizes must be >= 1: {self}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"sequential: lr_schedule must be one of {LR_SCHEDULES}: {self}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"sequential: precision must be one of {PRECISIONS}: {self}")
        if self.encoder_finetune not in FINETUNE_MODES:
            raise ValueError(f"sequential: encoder_finetune must be one of {FINETUNE_MODES}")
        if not 0 <= self.window_stride <= self.max_len + 1:
            raise ValueError(f"sequential: window_stride must be in 0..max_len + 1: {self}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"sequential: label_smoothing must be in [0, 1), got {self}")
        if self.encoder_lr <= 0 or not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"sequential: need encoder_lr > 0, lora_dropout in [0, 1): {self}")
        if self.device != "auto" and _device_type(self.device) not in ("cpu", "cuda"):
            raise ValueError(f"sequential: device must be auto, cpu or cuda[:N], got {self}")


def _device_type(name: str) -> str | None:
    try:
        return torch.device(name).type
    except RuntimeError:
        return None


def resolve_device(name: str) -> torch.device:
    """The torch device for a ``device`` param ("auto" picks CUDA when available)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for a ``precision`` param on ``device`` (None: plain fp32)."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    bf16_ok = device.type == "cuda" and torch.cuda.is_bf16_supported()
    return torch.bfloat16 if bf16_ok else None
