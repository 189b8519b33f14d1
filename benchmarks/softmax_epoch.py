"""Training step time of the sequential model: full vs sampled softmax, by catalog size.

One optimizer step (forward, backward, AdamW) of ``NextItemObjective`` on a batch of full
``max_len + 1`` windows (the worst case: real windows are often shorter), with the
params.yaml ``train.sequential`` sizes and random 384-d item texts (the encoder's width),
with the full softmax and with the sampled one, alternating.
Prints one JSON line per catalog size with the median milliseconds per step of each and
their ratio.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/softmax_epoch.py \
        --items 2000 5000 10000 20000 60000 --steps 12
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time

import numpy as np
import torch

from lmrec.config import load_params
from lmrec.models.base import params_from_dict
from lmrec.models.sequential_loss import NextItemObjective
from lmrec.models.sequential_net import BOS, N_SPECIAL, SequentialNet
from lmrec.models.sequential_params import SequentialParams


def _objective(p: SequentialParams, n_items: int, popularity: torch.Tensor):
    net = SequentialNet(
        n_items, p.dim, p.heads, p.layers, p.dropout, p.max_len,
        item_text=torch.randn(n_items, 384), id_known=torch.ones(n_items, dtype=torch.bool),
        id_embeddings=p.id_embeddings,
    )  # fmt: skip
    optimizer = torch.optim.AdamW([q for q in net.parameters() if q.requires_grad], lr=p.lr)
    return NextItemObjective(net, None, popularity, p), optimizer


def step_ms(p: SequentialParams, n_items: int, steps: int, seed: int = 0) -> tuple[float, float]:
    """Median milliseconds of one full-softmax and one sampled-softmax training step.

    The two alternate step by step, so that load from other processes on a shared machine
    slows both alike; the first step of each is a warm-up and not counted.
    """
    torch.manual_seed(seed)
    popularity = 1.0 / np.arange(1, n_items + 1) ** 0.8  # Zipf-like, as logs are
    popularity = torch.from_numpy(popularity / popularity.sum()).float()
    runs = [
        _objective(dataclasses.replace(p, full_softmax_max_items=n_items), n_items, popularity),
        _objective(dataclasses.replace(p, full_softmax_max_items=1), n_items, popularity),
    ]
    times: list[list[float]] = [[], []]
    for _ in range(steps + 1):
        items = torch.multinomial(popularity, p.batch_size * (p.max_len + 1), replacement=True)
        items = items.view(p.batch_size, p.max_len + 1)
        tokens = torch.cat([torch.full((p.batch_size, 1), BOS), items[:, :-1] + N_SPECIAL], 1)
        for (objective, optimizer), spent in zip(runs, times, strict=True):
            start = time.perf_counter()
            loss, _ = objective(tokens, items, 1.0 / items.numel())
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            spent.append(time.perf_counter() - start)
    full, sampled = (1000 * statistics.median(t[1:]) for t in times)
    return full, sampled


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--items", type=int, nargs="+", default=[2000, 5000, 10000, 20000])
    parser.add_argument("--steps", type=int, default=12)
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = load_params(args.params).train
    p = params_from_dict(SequentialParams, {**cfg.sequential, "device": "cpu"})
    for n_items in args.items:
        full, sampled = step_ms(p, n_items, args.steps)
        row = {"n_items": n_items, "full_ms": round(full, 1), "sampled_ms": round(sampled, 1)}
        row["ratio"] = round(full / sampled, 2)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
