"""Fit peers on a split and print their protocol metrics (a quick check, not the benchmark).

Usage, from the repository root::

    .venv/bin/python -m benchmarks.peers.smoke                       # all peers, ML-100K
    .venv/bin/python -m benchmarks.peers.smoke --peers implicit-als lightfm-genre
    .venv/bin/python -m benchmarks.peers.smoke --stage val --no-cache

Results go through the peer cache, so a second run only re-reads them. ``--json PATH``
also writes the per-peer numbers as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from lmrec.features.dataset import load_split

from . import PEER_MODULES, evaluate_peer, get_peer
from .common import REPO


def run(names: list[str], split_dir: Path, seed: int, stage: str, cache: bool) -> list[dict]:
    """Fit (or load) each peer and evaluate it; return one summary row per peer."""
    split = load_split(split_dir)
    rows: list[dict[str, Any]] = []
    for name in names:
        start = time.perf_counter()
        result = get_peer(name)(split, seed, stage, cache=cache)
        metrics = evaluate_peer(result, split, cache=cache)
        overall, cold = metrics["overall"], metrics["slices"]["cold_items"]
        row = {
            "peer": name,
            "stage": stage,
            "seed": seed,
            "hr@10": overall["hr@10"],
            "ndcg@10": overall["ndcg@10"],
            "mrr@10": overall["mrr@10"],
            "recall@20": overall["recall@20"],
            "cold_recall@10": cold["recall@10"],
            "fit_seconds": result.fit_seconds,
            "cached": result.cached,
            "wall_seconds": time.perf_counter() - start,
            "metrics": metrics,
            "info": result.info,
        }
        rows.append(row)
        print(_format(row), flush=True)
    return rows


def _format(row: dict[str, Any]) -> str:
    cols = ["hr@10", "ndcg@10", "mrr@10", "recall@20", "cold_recall@10"]
    numbers = "  ".join(f"{c} {row[c]:.4f}" for c in cols)
    cached = " (cached)" if row["cached"] else ""
    return f"{row['peer']:<16} {numbers}  fit {row['fit_seconds']:.1f}s{cached}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", nargs="+", default=list(PEER_MODULES), choices=PEER_MODULES)
    parser.add_argument("--split", type=Path, default=REPO / "artifacts" / "preprocess")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stage", choices=("val", "test"), default="test")
    parser.add_argument("--no-cache", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    rows = run(args.peers, args.split, args.seed, args.stage, not args.no_cache)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2, sort_keys=True, default=str))
        print(f"wrote {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
