"""Training step time of the sequential model: full vs sampled softmax, by catalog size.

One optimizer step (forward, backward, AdamW) of ``NextItemObjective`` on a batch of full
``max_len + 1`` windows (the worst case: real windows are often shorter), with the
params.yaml ``train.sequential`` sizes and random 384-d item texts (the encoder's width),
with the full softmax and with the sampled one, alternating.
Prints one JSON line per catalog size with the median milliseconds per step of each and
their ratio.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/softmax_epoch.py \
        --items 2000 5000 10000 20000 60000 --steps 12

With ``--updates`` the lines compare, for the sampled softmax only, how the parameters are
updated: ``adamw`` (unfused AdamW with dense ID gradients: the training loop before
2026-12-04), ``fused`` (fused AdamW, dense ID gradients), ``sparse`` (the loop's default:
fused AdamW, the sparse ID gradient densified once a step) and ``lazy`` (the loop with
``lazy_id_updates``: SparseAdam on the rows a step used), alternating step by step:

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/softmax_epoch.py \
        --items 20000 60000 200000 --steps 12 --updates adamw fused sparse lazy

With ``--split`` (a preprocess directory) and ``--embed`` (its embed directory) the steps
run instead on that split's real training windows and text embeddings (the first
``--steps`` batches of epoch 0's shuffled order, the same batches for both softmaxes), and
the line adds the epoch's batch count and the epoch seconds each step time implies.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from lmrec.artifacts import load_embeddings
from lmrec.config import SequentialParams, load_params
from lmrec.features.dataset import load_split
from lmrec.models.sequential_fit import DataParallel, TrainingLoop
from lmrec.models.sequential_loss import NextItemObjective
from lmrec.models.sequential_net import BOS, N_SPECIAL, SequentialNet
from lmrec.models.sequential_windows import StreamedWindows


def _objective(
    p: SequentialParams, n_items: int, popularity: torch.Tensor, text: torch.Tensor | None = None
):
    net = SequentialNet(
        n_items, p.dim, p.heads, p.layers, p.dropout, p.max_len,
        item_text=torch.randn(n_items, 384) if text is None else text,
        id_known=popularity > 0, id_embeddings=p.id_embeddings,
    )  # fmt: skip
    optimizer = torch.optim.AdamW([q for q in net.parameters() if q.requires_grad], lr=p.lr)
    return NextItemObjective(net, None, popularity, p), optimizer


def _zipf(n_items: int) -> torch.Tensor:
    """Zipf-like item popularity (as logs are), summing to 1."""
    popularity = 1.0 / np.arange(1, n_items + 1) ** 0.8
    return torch.from_numpy(popularity / popularity.sum()).float()


def _alternate(steppers: list, p: SequentialParams, popularity: torch.Tensor, steps: int):
    """Median step milliseconds of each ``(objective, step)`` on the same random batches.

    They alternate step by step, so that load from other processes on a shared machine
    slows all alike; the first step of each is a warm-up and not counted.
    """
    times: list[list[float]] = [[] for _ in steppers]
    for _ in range(steps + 1):
        items = torch.multinomial(popularity, p.batch_size * (p.max_len + 1), replacement=True)
        items = items.view(p.batch_size, p.max_len + 1)
        tokens = torch.cat([torch.full((p.batch_size, 1), BOS), items[:, :-1] + N_SPECIAL], 1)
        for (objective, step), spent in zip(steppers, times, strict=True):
            start = time.perf_counter()
            loss, _ = objective(tokens, items, 1.0 / items.numel())
            loss.backward()
            step()
            spent.append(time.perf_counter() - start)
    return [1000 * statistics.median(t[1:]) for t in times]


def _optimizer_stepper(optimizer: torch.optim.Optimizer):
    def step() -> None:
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def step_ms(p: SequentialParams, n_items: int, steps: int, seed: int = 0) -> tuple[float, float]:
    """Median milliseconds of one full-softmax and one sampled-softmax training step."""
    torch.manual_seed(seed)
    popularity = _zipf(n_items)
    steppers = []
    for max_full in (n_items, 1):
        objective, optimizer = _objective(
            p.model_copy(update={"full_softmax_max_items": max_full}), n_items, popularity
        )
        steppers.append((objective, _optimizer_stepper(optimizer)))
    full, sampled = _alternate(steppers, p, popularity, steps)
    return full, sampled


def update_step_ms(p: SequentialParams, n_items: int, steps: int, modes: list[str]) -> dict:
    """Median sampled-softmax step milliseconds per update mode (see the module docstring)."""
    torch.manual_seed(0)
    popularity = _zipf(n_items)
    sampled = p.model_copy(update={"full_softmax_max_items": 1})
    text = torch.randn(n_items, 384)
    steppers = []
    for mode in modes:
        net = SequentialNet(
            n_items, p.dim, p.heads, p.layers, p.dropout, p.max_len, item_text=text,
            id_known=popularity > 0, id_embeddings=p.id_embeddings,
        )  # fmt: skip
        if mode == "adamw":
            objective = NextItemObjective(net, None, popularity, sampled)
            params = list(net.parameters())
            adamw = torch.optim.AdamW(params, lr=p.lr, weight_decay=p.weight_decay, foreach=True)
            steppers.append((objective, _optimizer_stepper(adamw)))
            continue
        q = sampled.model_copy(update={"lazy_id_updates": mode == "lazy"})
        loop = TrainingLoop(net, None, popularity.numpy(), q, torch.device("cpu"), DataParallel())
        if mode == "fused" and net.item_id is not None:  # dense ID gradients
            net.item_id.sparse, loop.sparse_ids = False, None
        steppers.append((loop.objective, lambda loop=loop: loop._optimizer_step(0.5)))
    medians = _alternate(steppers, p, popularity, steps)
    row: dict = {"n_items": n_items}
    row.update({f"{mode}_ms": round(ms, 1) for mode, ms in zip(modes, medians, strict=True)})
    return row


def split_step_ms(p: SequentialParams, split_dir: Path, embed_dir: Path, steps: int) -> dict:
    """Full vs sampled step times on a split's real windows (alternating, same batches)."""
    torch.manual_seed(p.seed)
    split = load_split(split_dir)
    text = torch.from_numpy(load_embeddings(embed_dir)[0])
    _, items = split.train_pairs()
    counts = np.bincount(items, minlength=split.n_items).astype(np.float64)
    popularity = torch.from_numpy(counts / counts.sum()).float()
    windows = StreamedWindows(split.train, p.max_len, p.window_stride)
    order = np.random.default_rng([p.seed, 0]).permutation(len(windows))
    n_batches = -(-len(windows) // p.batch_size)
    runs = [
        _objective(p.model_copy(update={"full_softmax_max_items": split.n_items}), split.n_items,
                   popularity, text),
        _objective(p.model_copy(update={"full_softmax_max_items": 1}), split.n_items, popularity,
                   text),
    ]  # fmt: skip
    times: list[list[float]] = [[], []]
    for step in range(min(steps + 1, n_batches)):
        tokens, targets = windows.batch(order[step * p.batch_size : (step + 1) * p.batch_size])
        width = int((tokens != 0).sum(1).max())
        tokens, targets = tokens[:, :width], targets[:, :width]
        for (objective, optimizer), spent in zip(runs, times, strict=True):
            start = time.perf_counter()
            loss, _ = objective(tokens, targets, 1.0 / int((targets >= 0).sum()))
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            spent.append(time.perf_counter() - start)
    full, sampled = (1000 * statistics.median(t[1:]) for t in times)
    return {
        "n_items": split.n_items, "n_users": split.n_users, "batches_per_epoch": n_batches,
        "full_ms": round(full, 1), "sampled_ms": round(sampled, 1),
        "ratio": round(full / sampled, 2),
        "full_epoch_s": round(full * n_batches / 1000),
        "sampled_epoch_s": round(sampled * n_batches / 1000),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--items", type=int, nargs="+", default=[2000, 5000, 10000, 20000])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument(
        "--updates",
        nargs="+",
        choices=("adamw", "fused", "sparse", "lazy"),
        help="compare update modes of the sampled softmax instead",
    )
    parser.add_argument("--split", type=Path, help="a preprocess directory: real windows")
    parser.add_argument("--embed", type=Path, help="its embed directory (with --split)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = load_params(args.params).train
    p = cfg.sequential.model_copy(update={"device": "cpu"})
    if args.split is not None:
        print(json.dumps(split_step_ms(p, args.split, args.embed, args.steps)), flush=True)
        return
    for n_items in args.items if args.updates else []:
        print(json.dumps(update_step_ms(p, n_items, args.steps, args.updates)), flush=True)
    for n_items in args.items if not args.updates else []:
        full, sampled = step_ms(p, n_items, args.steps)
        row = {"n_items": n_items, "full_ms": round(full, 1), "sampled_ms": round(sampled, 1)}
        row["ratio"] = round(full / sampled, 2)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
