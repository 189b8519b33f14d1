"""Multi-process training under ``torchrun``: process group, DDP wrapping, rank-0 decisions.

``torchrun --nproc_per_node N -m lmrec.cli train ...`` starts N copies of the train stage
with ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` set. Each joins one process group (NCCL on
CUDA, gloo on CPU), wraps the training module in ``DistributedDataParallel`` and trains
its share of every batch. Rank 0 alone evaluates, checkpoints, writes outputs and talks to
MLflow; its early-stopping decision is broadcast so every rank stops at the same epoch.
Without those variables everything here is a no-op for a single process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from lmrec.models.sequential import DataParallel


@dataclass(frozen=True)
class Distributed:
    """This process's place in the run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def from_environment() -> Distributed:
    """Read torchrun's variables (a single process when they are absent)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    return Distributed(rank=rank, world_size=world, local_rank=local)


def setup(info: Distributed, device: torch.device) -> DataParallel:
    """Join the process group (when multi-process) and describe this rank's share."""
    if not info.enabled:
        return DataParallel()
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
    if device.type == "cuda":
        torch.cuda.set_device(device)

    def wrap(module: nn.Module) -> nn.Module:
        ids = [device.index] if device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(module, device_ids=ids)

    return DataParallel(rank=info.rank, world_size=info.world_size, wrap=wrap)


def device_for(info: Distributed, requested: str) -> str:
    """Under torchrun on CUDA each rank takes its own GPU (``cuda:LOCAL_RANK``)."""
    if info.enabled and requested in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{info.local_rank}"
    return requested


def broadcast_flag(info: Distributed, flag: bool) -> bool:
    """Rank 0's ``flag`` on every rank."""
    if not info.enabled:
        return flag
    payload = [flag]
    dist.broadcast_object_list(payload, src=0)
    return bool(payload[0])


def barrier(info: Distributed) -> None:
    if info.enabled:
        dist.barrier()


def teardown(info: Distributed) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
