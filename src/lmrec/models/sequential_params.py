"""The device and precision the sequential recommender's hyperparameters pick.

The hyperparameters themselves, their one set of defaults and their checks, are the
``train.sequential`` block: ``lmrec.config.SequentialParams`` (kept free of torch so that
loading params does not import it). ``resolve_device`` and ``resolve_precision`` turn its
``device`` and ``precision`` strings into torch objects. The model itself is in
``sequential``; see that module's docstring for the layout of the ``sequential*`` modules.
"""

from __future__ import annotations

import torch


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
