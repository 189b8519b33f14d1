"""Parallel hyperparameter sweep of the LM-powered model on one GPU (or CPU).

Each grid entry overrides ``train.sequential`` of params.yaml; every entry is trained once per
seed with the train stage's core (``train_sequential``: validation, early stopping on val
NDCG@10) and scored on the test stage. Runs go to a pool of worker processes that share the
device, one JSON line per finished run, so a cut-off sweep keeps what it finished. Defaults
are chosen on the validation column; the test column is reported, never selected on.

    python benchmarks/sweep.py --grid grid.json --seeds 0 1 2 --workers 12 --out sweep.jsonl
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))


def _run(job: dict) -> dict:
    import torch

    from lmrec.artifacts import load_embeddings
    from lmrec.config import load_params
    from lmrec.evaluation.protocol import evaluate_protocol
    from lmrec.features.dataset import load_split
    from lmrec.train.trainer import train_sequential

    torch.set_num_threads(job["threads"])
    params = load_params(REPO / "params.yaml")
    sequential = {**params.train.sequential.model_dump(), **job["overrides"]}
    use_text = not sequential.pop("no_text", False)
    cfg = params.train.model_copy(
        update={
            "seed": job["seed"],
            "device": job["device"],
            "sequential": params.train.sequential.model_validate(sequential),
        }
    )
    split = load_split(Path(job["split"]))
    embeddings = load_embeddings(Path(job["embeddings"]))[0] if use_text else None
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        result = train_sequential(split, embeddings, cfg, Path(tmp))
    seconds = time.perf_counter() - start
    test = evaluate_protocol(result.model, split, "test")
    return {
        "name": job["name"],
        "overrides": job["overrides"],
        "seed": job["seed"],
        "epochs_run": result.epochs_run,
        "best_epoch": result.best_epoch + 1,
        "train_seconds": round(seconds, 1),
        "val_ndcg@10": round(result.best_value, 4),
        "test_ndcg@10": round(test["overall"]["ndcg@10"], 4),
        "test_hr@10": round(test["overall"]["hr@10"], 4),
        "cold_recall@10": round(test["slices"]["cold_items"]["recall@10"], 4),
    }


def summarise(rows: list[dict]) -> str:
    """Markdown table: one line per grid entry, mean ± std over its seeds, best val first."""
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(row["name"], []).append(row)

    def cell(values: list[float]) -> str:
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.fmean(values):.4f} ± {std:.4f}"

    lines = [
        "| overrides | seeds | val NDCG@10 | test NDCG@10 | test HR@10 | cold R@10 | best epoch "
        "| train s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    ranked = sorted(groups.items(), key=lambda g: -statistics.fmean(r["val_ndcg@10"] for r in g[1]))
    for name, group in ranked:
        lines.append(
            f"| {name} | {len(group)} | {cell([r['val_ndcg@10'] for r in group])} "
            f"| {cell([r['test_ndcg@10'] for r in group])} "
            f"| {cell([r['test_hr@10'] for r in group])} "
            f"| {cell([r['cold_recall@10'] for r in group])} "
            f"| {statistics.fmean(r['best_epoch'] for r in group):.1f} "
            f"| {statistics.fmean(r['train_seconds'] for r in group):.0f} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--grid", type=Path, required=True, help="JSON list of overrides")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads per worker")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--split", type=Path, default=REPO / "artifacts/preprocess")
    parser.add_argument("--embeddings", type=Path, default=REPO / "artifacts/embed")
    parser.add_argument("--out", type=Path, required=True, help="JSON lines, appended")
    args = parser.parse_args()
    grid = json.loads(args.grid.read_text())
    jobs = [
        {
            "name": " ".join(f"{k}={v}" for k, v in overrides.items()) or "defaults",
            "overrides": overrides,
            "seed": seed,
            "device": args.device,
            "threads": args.threads,
            "split": str(args.split),
            "embeddings": str(args.embeddings),
        }
        for seed in args.seeds
        for overrides in grid
    ]
    rows = []
    with mp.get_context("spawn").Pool(args.workers) as pool, args.out.open("a") as out:
        for row in pool.imap_unordered(_run, jobs):
            rows.append(row)
            out.write(json.dumps(row) + "\n")
            out.flush()
            print(json.dumps(row), flush=True)
    print(summarise(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
