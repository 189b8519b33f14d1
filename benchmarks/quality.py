"""Recommendation quality, side by side: lmrec's model, its baselines and open-source peers.

Every model is trained on the same split (``artifacts/preprocess``: the DESIGN.md protocol,
per-user tie-break, cold items held out) and scored by the same code
(``lmrec.evaluation.protocol.evaluate_protocol``, test stage, full ranking):

* ``lmrec`` — the LM-powered sequential model, trained exactly as ``lmrec train`` trains it
  (params.yaml ``train`` block, early stopping on validation), one run per seed;
* in-house baselines — popularity, item-KNN, MF (``train.baselines``);
* peers — implicit ALS/BPR, LightFM WARP (identity + genre features), LightFM genre-only
  (the content peer for cold items), RecBole SASRec and GRU4Rec (in ``.venv-recbole``).

Peer results are cached by data hash (``benchmarks/peers/common.py``), so a rerun only
retrains lmrec. The table reports HR@10, NDCG@10, MRR@10, cold-item Recall@10 (only the
held-out cold items ranked, for the users who interacted with them) and fit seconds, each
as mean ± std over seeds, with NDCG@10 as a ratio to the best peer; then the acceptance
checks of issue 3. Writes ``<out>/quality.json`` and ``<out>/quality.md``.

    python benchmarks/quality.py                      # everything (RecBole: ~1 h uncached)
    python benchmarks/quality.py --peers implicit-als lightfm-genre --seeds 0
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.peers import PEER_MODULES, evaluate_peer, get_peer  # noqa: E402

from lmrec.config import load_params  # noqa: E402
from lmrec.evaluation.protocol import evaluate_protocol  # noqa: E402
from lmrec.features.dataset import load_split  # noqa: E402
from lmrec.stages.embed import load_embeddings  # noqa: E402
from lmrec.train.trainer import train_baselines, train_sequential  # noqa: E402

SEQUENTIAL_PEERS = ("recbole-sasrec", "recbole-gru4rec")
COLD_PEER = "lightfm-genre"
COLUMNS = ("hr@10", "ndcg@10", "mrr@10", "cold_recall@10", "fit_seconds")
TARGETS = {
    "ndcg_vs_best_sequential_peer": 1.1,
    "ndcg_vs_best_non_sequential_peer": 1.3,
    "cold_recall_vs_lightfm_genre": 1.5,
}
MAX_TRAIN_SECONDS = 180.0


def _row(result: dict[str, Any], seconds: float) -> dict[str, float]:
    overall, cold = result["overall"], result["slices"]["cold_items"]
    return {
        "hr@10": overall["hr@10"],
        "ndcg@10": overall["ndcg@10"],
        "mrr@10": overall["mrr@10"],
        "cold_recall@10": cold["recall@10"],
        "fit_seconds": seconds,
    }


def _summarise(name: str, kind: str, runs: list[dict[str, float]]) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, "kind": kind, "seeds": len(runs), "runs": runs}
    for column in COLUMNS:
        values = np.array([r[column] for r in runs], dtype=np.float64)
        out[column] = float(values.mean())
        out[f"{column}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return out


def run_lmrec(split, embeddings, params, seeds: list[int], log) -> tuple[dict, dict]:
    """Train lmrec's model per seed as the train stage does; test metrics per seed."""
    runs, extra = [], {"best_epochs": [], "epochs_run": []}
    for seed in seeds:
        cfg = params.train.model_copy(update={"seed": seed})
        with tempfile.TemporaryDirectory(prefix="lmrec-bench-") as tmp:
            result = train_sequential(split, embeddings, cfg, Path(tmp), progress=False)
        test = evaluate_protocol(result.model, split, "test")
        runs.append(_row(test, result.seconds))
        extra["best_epochs"].append(result.best_epoch + 1)
        extra["epochs_run"].append(result.epochs_run)
        log(
            f"lmrec seed {seed}: NDCG@10 {runs[-1]['ndcg@10']:.4f}  "
            f"cold R@10 {runs[-1]['cold_recall@10']:.4f}  {result.seconds:.0f} s "
            f"({result.epochs_run} epochs, best {result.best_epoch + 1})"
        )
    return _summarise("lmrec (LM-powered sequential)", "lmrec", runs), extra


def run_baselines(split, params, seeds: list[int], log) -> list[dict[str, Any]]:
    rows = []
    per_name: dict[str, list[dict[str, float]]] = {}
    for seed in seeds:
        cfg = params.train
        values = {
            name: ({**hp, "seed": seed} if name == "mf" else hp)
            for name, hp in cfg.baselines.items()
        }
        fitted = train_baselines(split, cfg.model_copy(update={"baselines": values}))
        for name, (model, _, seconds) in fitted.items():
            per_name.setdefault(name, []).append(
                _row(evaluate_protocol(model, split, "test"), seconds)
            )
    for name, runs in per_name.items():
        rows.append(_summarise(f"lmrec baseline: {name}", "baseline", runs))
        log(f"baseline {name}: NDCG@10 {rows[-1]['ndcg@10']:.4f}")
    return rows


def run_peers(split, names: list[str], seeds: dict[str, list[int]], cache: bool, log):
    rows = []
    for name in names:
        runs = []
        for seed in seeds[name]:
            start = time.perf_counter()
            result = get_peer(name)(split, seed, "test", cache=cache)
            metrics = evaluate_peer(result, split, cache=cache)
            runs.append(_row(metrics, result.fit_seconds))
            source = "cached" if result.cached else f"{time.perf_counter() - start:.0f} s"
            log(f"{name} seed {seed}: NDCG@10 {runs[-1]['ndcg@10']:.4f} ({source})")
        kind = "sequential peer" if name in SEQUENTIAL_PEERS else "peer"
        rows.append(_summarise(name, kind, runs))
    return rows


def checks(lmrec: dict[str, Any], peers: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's acceptance ratios (None where the peer was not run)."""

    def best(rows):
        return max(rows, key=lambda r: r["ndcg@10"]) if rows else None

    seq = best([r for r in peers if r["name"] in SEQUENTIAL_PEERS])
    non_seq = best([r for r in peers if r["name"] not in SEQUENTIAL_PEERS])
    cold = next((r for r in peers if r["name"] == COLD_PEER), None)
    out: dict[str, Any] = {}
    for key, ref, column in (
        ("ndcg_vs_best_sequential_peer", seq, "ndcg@10"),
        ("ndcg_vs_best_non_sequential_peer", non_seq, "ndcg@10"),
        ("cold_recall_vs_lightfm_genre", cold, "cold_recall@10"),
    ):
        ratio = None if ref is None or ref[column] <= 0 else lmrec[column] / ref[column]
        out[key] = {
            "against": None if ref is None else ref["name"],
            "ratio": ratio,
            "target": TARGETS[key],
            "passed": None if ratio is None else ratio >= TARGETS[key],
        }
    seconds = max(r["fit_seconds"] for r in lmrec["runs"])
    out["train_seconds_max"] = {
        "value": seconds,
        "target": MAX_TRAIN_SECONDS,
        "passed": seconds <= MAX_TRAIN_SECONDS,
    }
    return out


def _fmt(row: dict[str, Any], column: str) -> str:
    mean, std = row[column], row[f"{column}_std"]
    if column == "fit_seconds":
        return f"{mean:.1f}" if row["seeds"] == 1 else f"{mean:.1f} ± {std:.1f}"
    return f"{mean:.4f}" if row["seeds"] == 1 else f"{mean:.4f} ± {std:.4f}"


def markdown(rows: list[dict[str, Any]], result_checks: dict[str, Any], facts: dict) -> str:
    peers = [r for r in rows if r["kind"] in ("peer", "sequential peer")]
    best_peer = max((r["ndcg@10"] for r in peers), default=0.0)
    head = (
        "| model | seeds | HR@10 | NDCG@10 | MRR@10 | cold Recall@10 | fit s | NDCG ÷ best peer |"
    )
    lines = [
        "# Quality benchmark (MovieLens-100K, test stage, full ranking)",
        "",
        f"Data: {facts['users']} users, {facts['items']} items "
        f"({facts['cold_items']} cold), split {facts['split_fingerprint'][:12]}; "
        f"torch threads {facts['threads']}; {facts['date']}.",
        "",
        head,
        "|" + "---|" * 8,
    ]
    for row in rows:
        ratio = f"{row['ndcg@10'] / best_peer:.2f}×" if best_peer > 0 else "n/a"
        cells = [row["name"], str(row["seeds"]), *(_fmt(row, c) for c in COLUMNS), ratio]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "| check | against | ratio / value | target | passed |", "|---|---|---|---|---|"]
    for key, check in result_checks.items():
        if key == "train_seconds_max":
            value, against = f"{check['value']:.0f} s", "-"
            target = f"≤ {check['target']:.0f} s"
        else:
            value = "n/a" if check["ratio"] is None else f"{check['ratio']:.2f}×"
            against, target = str(check["against"]), f"≥ {check['target']}×"
        passed = {True: "yes", False: "NO", None: "not run"}[check["passed"]]
        lines.append(f"| {key} | {against} | {value} | {target} | {passed} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--split", type=Path, default=REPO / "artifacts/preprocess")
    parser.add_argument("--embeddings", type=Path, default=REPO / "artifacts/embed")
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--recbole-seeds",
        type=int,
        nargs="+",
        default=[0],
        help="seeds for the RecBole peers (slow: ~3 min per SASRec epoch on 2 cores)",
    )
    parser.add_argument("--peers", nargs="*", default=list(PEER_MODULES))
    parser.add_argument("--no-baselines", action="store_true")
    parser.add_argument("--no-cache", action="store_true", help="refit every peer")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads for lmrec")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.peers) - set(PEER_MODULES))
    if unknown:
        parser.error(f"unknown peers {unknown}; known: {sorted(PEER_MODULES)}")
    for path in (args.split, args.embeddings):
        if not path.is_dir():
            parser.error(f"{path}: not found; run `make demo` (or `dvc repro embed`) first")
    torch.set_num_threads(args.threads)

    def log(message: str) -> None:
        print(message, flush=True)

    split = load_split(args.split)
    embeddings, _ = load_embeddings(args.embeddings)
    params = load_params(args.params)
    lmrec, extra = run_lmrec(split, embeddings, params, args.seeds, log)
    rows = [lmrec]
    if not args.no_baselines:
        rows += run_baselines(split, params, args.seeds, log)
    peer_seeds = {
        n: (args.recbole_seeds if n in SEQUENTIAL_PEERS else args.seeds) for n in args.peers
    }
    peers = run_peers(split, args.peers, peer_seeds, not args.no_cache, log)
    rows += peers
    result_checks = checks(lmrec, peers)
    from benchmarks.peers import split_fingerprint

    facts = {
        "users": split.n_users,
        "items": split.n_items,
        "cold_items": int(split.items["is_cold"].sum()),
        "split_fingerprint": split_fingerprint(split),
        "threads": args.threads,
        "date": time.strftime("%Y-%m-%d"),
        "lmrec": extra,
        "params": params.train.model_dump(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    report = markdown(rows, result_checks, facts)
    payload = {"rows": rows, "checks": result_checks, "facts": facts}
    (args.out / "quality.json").write_text(json.dumps(payload, indent=2) + "\n")
    (args.out / "quality.md").write_text(report)
    print()
    print(report)
    return 0 if all(c["passed"] is not False for c in result_checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
