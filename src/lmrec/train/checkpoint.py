"""Per-epoch training checkpoints: safetensors + JSON, written atomically, never pickle.

A checkpoint directory holds:

- ``module.safetensors``: the training module's tensors (network, and the encoder when it
  is fine-tuned);
- ``optimizer.safetensors``: the optimizer's per-parameter tensors, keyed
  ``state.<param index>.<name>``;
- ``checkpoint.json``: the optimizer's hyperparameter groups and non-tensor state, the
  completed epochs and their losses, and the trainer's own record (``meta``: early-stopping
  state, metric history, MLflow run id, and the fingerprint of the params and data the run
  was started with, so ``--resume`` never continues a different run).

The directory is replaced whole (write to a temporary sibling, then rename), so a kill at
any moment leaves either the previous epoch's checkpoint or the new one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from lmrec.io import LmrecError, atomic_dir, write_json
from lmrec.models.sequential import TrainState

MODULE_FILE = "module.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
META_FILE = "checkpoint.json"
FORMAT_VERSION = 1


class CheckpointError(LmrecError):
    """A checkpoint is missing, unreadable or belongs to another run."""


def _split_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors, scalars = {}, {}
    for index, values in state["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[name] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _join_optimizer(tensors: dict[str, torch.Tensor], record: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, index, name = key.split(".", 2)
        state.setdefault(int(index), {})[name] = value
    for index, values in record["scalars"].items():
        state.setdefault(int(index), {}).update(values)
    return {"state": state, "param_groups": record["param_groups"]}


def save_checkpoint(directory: str | Path, state: TrainState, meta: dict[str, Any]) -> None:
    """Write ``state`` and the trainer's ``meta`` (JSON-able) to ``directory`` atomically."""
    module = {key: value.detach().cpu().contiguous() for key, value in state.module.items()}
    optimizer, optimizer_record = _split_optimizer(state.optimizer)
    record = {
        "format_version": FORMAT_VERSION,
        "epochs_done": state.epochs_done,
        "epoch_losses": state.epoch_losses,
        "optimizer": optimizer_record,
        "meta": meta,
    }
    with atomic_dir(directory) as tmp:
        save_file(module, str(tmp / MODULE_FILE))
        save_file(optimizer, str(tmp / OPTIMIZER_FILE))
        write_json(tmp / META_FILE, record)


def _read_record(directory: Path) -> dict[str, Any]:
    try:
        record = json.loads((directory / META_FILE).read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{directory / META_FILE}: unreadable: {err}") from err
    if record.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{directory / META_FILE}: format_version {record.get('format_version')!r}, "
            f"expected {FORMAT_VERSION}"
        )
    return record


def read_meta(directory: str | Path) -> dict[str, Any]:
    """The trainer's ``meta`` of a checkpoint, without loading its tensors."""
    return _read_record(Path(directory))["meta"]


def load_checkpoint(directory: str | Path) -> tuple[TrainState, dict[str, Any]]:
    """Read a checkpoint written by ``save_checkpoint``: (train state, trainer meta).

    Raises:
        CheckpointError: the directory is missing, incomplete or of another format.
    """
    directory = Path(directory)
    files = [directory / name for name in (MODULE_FILE, OPTIMIZER_FILE, META_FILE)]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise CheckpointError(f"{directory}: no complete checkpoint (missing {missing})")
    record = _read_record(directory)
    try:
        module = load_file(str(directory / MODULE_FILE))
        optimizer = _join_optimizer(load_file(str(directory / OPTIMIZER_FILE)), record["optimizer"])
        state = TrainState(
            epochs_done=int(record["epochs_done"]),
            module=module,
            optimizer=optimizer,
            epoch_losses=[float(x) for x in record["epoch_losses"]],
        )
    except (OSError, ValueError, KeyError) as err:
        raise CheckpointError(f"{directory}: unreadable checkpoint: {err}") from err
    return state, record["meta"]
