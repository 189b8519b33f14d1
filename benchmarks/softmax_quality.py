"""Validation quality and epoch time of the sequential model, full vs sampled softmax.

Trains ``train_sequential`` (the train stage's core: params.yaml ``train`` block, early
stopping on validation) on a prepared split twice: the full softmax for ``--full-epochs``
epochs, and the sampled softmax (logQ-corrected) for the block's own ``epochs``. Prints
one JSON line per run: per-epoch training seconds and validation NDCG@10, the best.

    lmrec ingest --source synthetic --n-users 5000 --n-items 20000 \
        --n-interactions 100000 --out /tmp/q/data
    lmrec preprocess --interactions /tmp/q/data/interactions.parquet \
        --items /tmp/q/data/items.parquet --out /tmp/q/preprocess
    lmrec embed --split /tmp/q/preprocess --out /tmp/q/embed
    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/softmax_quality.py \
        --split /tmp/q/preprocess --embed /tmp/q/embed
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from lmrec.artifacts import load_embeddings
from lmrec.config import load_params
from lmrec.features.dataset import load_split
from lmrec.train.trainer import train_sequential


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--split", type=Path, required=True)
    parser.add_argument("--embed", type=Path, required=True)
    parser.add_argument("--full-epochs", type=int, default=1)
    parser.add_argument("--only", choices=("full", "sampled"), help="run one of the two")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = load_params(args.params).train
    split, embeddings = load_split(args.split), load_embeddings(args.embed)[0]
    n_items = split.n_items
    runs = {
        "full": {"full_softmax_max_items": n_items, "epochs": args.full_epochs},
        "sampled": {"full_softmax_max_items": n_items - 1},
    }
    for name, override in runs.items():
        if args.only not in (None, name):
            continue
        run_cfg = cfg.model_copy(
            update={"sequential": cfg.sequential.model_copy(update=override), "device": "cpu"}
        )
        with tempfile.TemporaryDirectory() as checkpoints:
            result = train_sequential(split, embeddings, run_cfg, checkpoints)
        history = [
            {"epoch": r["epoch"] + 1, "seconds": round(r["epoch_seconds"], 1),
             "val_ndcg@10": round(r["val_ndcg@10"], 4)}
            for r in result.history
        ]  # fmt: skip
        row = {"softmax": name, "n_items": n_items, "n_users": split.n_users}
        row.update({"best_epoch": result.best_epoch + 1, "best_val_ndcg@10": result.best_value})
        print(json.dumps({**row, "history": history}), flush=True)


if __name__ == "__main__":
    main()
