"""The GPU training path, exercised and timed: bf16 autocast, LoRA/full encoder fine-tuning.

Runs ``lmrec.train.trainer.train_sequential`` (the train stage's core, without MLflow) on
CUDA for the tiny synthetic profile and for the MovieLens-100K split, frozen vs LoRA vs full
encoder, and prints/writes epoch seconds and validation/test NDCG@10. Optionally sweeps a few
hyperparameter sets on the frozen-encoder model (``--sweep``).

    python benchmarks/gpu_check.py --split artifacts/preprocess --embeddings artifacts/embed \
        --encoder all-MiniLM-L6-v2 --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from lmrec.artifacts import load_embeddings  # noqa: E402
from lmrec.config import (  # noqa: E402
    EarlyStoppingParams,
    PreprocessParams,
    SyntheticParams,
    TrainParams,
)
from lmrec.data import synthetic  # noqa: E402
from lmrec.evaluation.protocol import evaluate_protocol  # noqa: E402
from lmrec.features.dataset import load_split  # noqa: E402
from lmrec.stages import preprocess  # noqa: E402
from lmrec.text.encoder import TextEncoder  # noqa: E402
from lmrec.train.trainer import train_sequential  # noqa: E402

#: The SequentialParams defaults that the runs of results/gpu_check.json were made with (a
#: run's ``sequential`` lists what it changed): a row reruns as recorded.
RECORDED_DEFAULTS = {
    "dim": 64,
    "layers": 2,
    "id_dropout": 0.3,
    "epochs": 30,
    "batch_size": 128,
    "lr": 1.0e-3,
    "weight_decay": 0.0,
    "lr_schedule": "constant",
    "window_jitter": False,
    "label_smoothing": 0.0,
}


def one_run(
    name, split, embeddings, texts, encoder, sequential, seed=0, patience=5, log=print
) -> dict:
    cfg = TrainParams(
        seed=seed,
        device="cuda",
        sequential={**RECORDED_DEFAULTS, **sequential},
        early_stopping=EarlyStoppingParams(patience=patience),
    )
    torch.cuda.synchronize()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        result = train_sequential(
            split, embeddings, cfg, Path(tmp), item_texts=texts, encoder=encoder
        )
    seconds = time.perf_counter() - start
    test = evaluate_protocol(result.model, split, "test")
    epoch_s = [row["epoch_seconds"] for row in result.history]
    row = {
        "name": name,
        "seed": seed,
        "sequential": sequential,
        "epochs_run": result.epochs_run,
        "best_epoch": result.best_epoch + 1,
        "epoch_seconds_median": sorted(epoch_s)[len(epoch_s) // 2],
        "train_seconds": seconds,
        "val_ndcg@10": result.best_value,
        "test_ndcg@10": test["overall"]["ndcg@10"],
        "test_hr@10": test["overall"]["hr@10"],
        "cold_recall@10": test["slices"]["cold_items"]["recall@10"],
        "peak_gpu_mib": torch.cuda.max_memory_allocated() / 2**20,
    }
    torch.cuda.reset_peak_memory_stats()
    log(json.dumps(row))
    return row


def tiny_split(root: Path):
    interactions, items, _ = synthetic.generate(
        SyntheticParams(n_users=120, n_items=80, n_interactions=2400)
    )
    interactions.to_parquet(root / "i.parquet", index=False)
    items.to_parquet(root / "it.parquet", index=False)
    preprocess.run(PreprocessParams(), root / "i.parquet", root / "it.parquet", root / "split")
    return root / "split"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--split", type=Path, default=REPO / "artifacts/preprocess")
    parser.add_argument("--embeddings", type=Path, default=REPO / "artifacts/embed")
    parser.add_argument("--encoder", default="all-MiniLM-L6-v2")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results")
    parser.add_argument("--sweep", action="store_true")
    parser.add_argument("--grid", help="JSON list of SequentialParams overrides to sweep")
    parser.add_argument("--patience", type=int, default=5)
    parser.add_argument("--skip-finetune", action="store_true")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check", file=sys.stderr)
        return 2
    print(torch.cuda.get_device_name(0), torch.__version__, flush=True)
    rows = []
    split = load_split(args.split)
    embeddings, _ = load_embeddings(args.embeddings)
    texts = split.item_texts()
    if not args.skip_finetune:
        with tempfile.TemporaryDirectory() as tmp:
            tiny_dir = tiny_split(Path(tmp))
            tiny = load_split(tiny_dir)
            tiny_texts = tiny.item_texts()
            tiny_emb = TextEncoder(args.encoder, device="cuda").encode(tiny_texts)
            for mode in ("frozen", "lora"):
                seq = {"epochs": 3, "dim": 32, "precision": "bf16", "encoder_finetune": mode}
                rows.append(
                    one_run(f"tiny-{mode}-bf16", tiny, tiny_emb, tiny_texts, args.encoder, seq)
                )
        base = {"epochs": 5, "batch_size": 64, "lr": 0.002, "lr_schedule": "cosine"}
        for mode in ("frozen", "lora", "full"):
            seq = {**base, "precision": "bf16", "encoder_finetune": mode}
            rows.append(one_run(f"ml100k-{mode}-bf16", split, embeddings, texts, args.encoder, seq))
    if args.sweep:
        grid = (
            json.loads(args.grid)
            if args.grid
            else [
                {"dropout": 0.2, "max_len": 50, "epochs": 25},
                {"dropout": 0.5, "max_len": 50, "epochs": 25},
                {"dropout": 0.5, "max_len": 50, "epochs": 40},
                {"dropout": 0.2, "max_len": 200, "epochs": 25},
                {"dropout": 0.5, "max_len": 200, "epochs": 25},
                {"dropout": 0.3, "max_len": 100, "epochs": 25},
                {"dropout": 0.5, "max_len": 50, "epochs": 25, "dim": 128},
                {"dropout": 0.5, "max_len": 50, "epochs": 25, "batch_size": 32, "lr": 0.001},
            ]
        )
        for values in grid:
            seq = {"batch_size": 64, "lr": 0.002, "lr_schedule": "cosine", "precision": "fp32"}
            seq.update(values)
            embeddings_used = None if seq.pop("no_text", False) else embeddings
            for seed in (0, 1):
                name = "sweep " + " ".join(f"{k}={v}" for k, v in values.items())
                rows.append(
                    one_run(name, split, embeddings_used, None, None, seq, seed, args.patience)
                )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_check.json").write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
