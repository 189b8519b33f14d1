"""How fast a model goes stale: the same future window scored by models trained up to T − age.

Time-ordered, on one interaction log (default: MovieLens-100K as ``lmrec ingest`` writes it):
for each model age ``a`` the LM-powered model is trained exactly as the train stage trains it
(preprocess's split and early stopping, params.yaml's recipe) on the events up to ``T − a``,
then every event of the window ``(T, T + window]`` is predicted from everything its user did
before it (the events after ``T − a`` included, as the service would see them in a posted or
stored history): HR@10 and NDCG@10 over the whole catalog, the history's items excluded.
Items the older models never trained on are ranked from their text, as served. The curve
(quality against age) is what ``monitor.max_model_age_days`` should be set from.

    python benchmarks/staleness.py --data data --cutoff 1998-03-29 --ages 0 7 14 28 \\
        --window-days 14 --out benchmarks/results
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
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lmrec.config import load_params  # noqa: E402
from lmrec.evaluation import metrics as M  # noqa: E402
from lmrec.evaluation.metrics import top_k  # noqa: E402
from lmrec.evaluation.ranking import exclusion_mask  # noqa: E402
from lmrec.features.dataset import load_split  # noqa: E402

DAY = 86_400
K = 10
BATCH = 256


def window_rows(events: pd.DataFrame, start: float, end: float):
    """(user id, item id, history item ids) per event in ``(start, end]``, the history being
    the user's events before it (timestamp, then log order)."""
    ordered = events.sort_values(["timestamp"], kind="stable")
    rows = []
    for user, group in ordered.groupby("user_id", sort=False):
        items, stamps = group["item_id"].to_numpy(), group["timestamp"].to_numpy()
        for pos in np.flatnonzero((stamps > start) & (stamps <= end)):
            rows.append((user, items[pos], items[:pos]))
    return rows


def score_window(model, split, rows) -> dict[str, float]:
    """HR@K / NDCG@K of the window's events for a model trained on ``split``."""
    index = {str(item): i for i, item in enumerate(split.items["item_id"].astype(str))}
    histories, targets = [], []
    for _, item, history in rows:
        if str(item) not in index:
            continue  # not in the catalog at all (never the case for a fixed catalog)
        mapped = [index[str(i)] for i in history if str(i) in index]
        histories.append(np.asarray(mapped, dtype=np.int64))
        targets.append(index[str(item)])
    targets = np.asarray(targets, dtype=np.int64)
    ranks = np.empty(len(targets), dtype=np.int64)
    for start in range(0, len(targets), BATCH):
        hist, tgt = histories[start : start + BATCH], targets[start : start + BATCH]
        scores = model.score(hist, allow_nonfinite=True)
        excluded = exclusion_mask(hist, scores.shape[1], keep=tgt)
        top = top_k(scores, K, excluded)
        hit = top == tgt[:, None]
        ranks[start : start + BATCH] = np.where(hit.any(axis=1), hit.argmax(axis=1), K)
    known = split.items["n_train"].to_numpy() > 0
    unseen = ~known[targets]
    return {
        "events": int(len(targets)),
        f"hr@{K}": M.hit_rate(ranks, K),
        f"ndcg@{K}": M.ndcg(ranks, K),
        "unseen_item_share": float(unseen.mean()),
        f"hr@{K}_unseen_items": M.hit_rate(ranks[unseen], K) if unseen.any() else float("nan"),
    }


def fit_at(
    cutoff: float, events: pd.DataFrame, data: Path, params_path: Path, work: Path, seed: int
):
    """The model of the events up to ``cutoff``: preprocess, embed and train as the stages do."""
    from lmrec.artifacts import load_embeddings
    from lmrec.stages import embed as embed_stage
    from lmrec.stages import preprocess
    from lmrec.train.trainer import train_sequential

    params = load_params(params_path)
    work.mkdir(parents=True, exist_ok=True)
    events[events["timestamp"] <= cutoff].to_parquet(work / "interactions.parquet")
    preprocess.run(params.preprocess, work / "interactions.parquet", data / "items.parquet",
                   work / "split")  # fmt: skip
    embed_stage.run(params.embed, work / "split", work / "embed", progress=False)
    split = load_split(work / "split")
    embeddings, _ = load_embeddings(work / "embed")
    cfg = params.train.model_copy(update={"seed": seed})
    result = train_sequential(split, embeddings, cfg, work / "train", progress=False)
    return split, result


def markdown(rows: list[dict[str, Any]], facts: dict[str, Any]) -> str:
    fresh = {r["seed"]: r for r in rows if r["age_days"] == 0}
    lines = [
        "# Model staleness (MovieLens-100K, time-ordered)",
        "",
        f"Cutoff T = {facts['cutoff']}; the window ({facts['cutoff']}, +{facts['window_days']} "
        f"days] holds {facts['events']} events by {facts['users']} users; each model trained "
        f"on the events up to T − age with params.yaml's recipe (early stopping on its own "
        f"split), seeds {facts['seeds']}; {facts['date']}. Every window event is predicted "
        "from its user's earlier events, over the whole catalog.",
        "",
        f"| model age (days) | seed | trained on events | best epoch | HR@{K} | NDCG@{K} "
        f"| NDCG ÷ age 0 | window items it never trained on | HR@{K} on those |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: (r["age_days"], r["seed"])):
        base = fresh.get(r["seed"], {}).get(f"ndcg@{K}")
        ratio = f"{r[f'ndcg@{K}'] / base:.3f}" if base else "-"
        lines.append(
            f"| {r['age_days']:g} | {r['seed']} | {r['train_events']:,} | {r['best_epoch']} "
            f"| {r[f'hr@{K}']:.4f} | {r[f'ndcg@{K}']:.4f} | {ratio} "
            f"| {r['unseen_item_share']:.3f} | {r[f'hr@{K}_unseen_items']:.4f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=REPO / "data", help="ingest's output")
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    parser.add_argument("--cutoff", default="1998-03-29", help="T, a date (UTC)")
    parser.add_argument("--ages", type=float, nargs="+", default=[0, 7, 14, 28])
    parser.add_argument("--window-days", type=float, default=14.0)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results")
    args = parser.parse_args(argv)
    if not (args.data / "interactions.parquet").is_file():
        parser.error(f"{args.data}: no interactions.parquet (run `lmrec ingest` first)")
    import torch

    torch.set_num_threads(args.threads)
    cutoff = pd.Timestamp(args.cutoff, tz="UTC").timestamp()
    events = pd.read_parquet(args.data / "interactions.parquet")
    window = window_rows(events, cutoff, cutoff + args.window_days * DAY)
    results = []
    for age in args.ages:
        for seed in args.seeds:
            with tempfile.TemporaryDirectory(prefix="lmrec-stale-") as tmp:
                split, fit = fit_at(
                    cutoff - age * DAY, events, args.data, args.params, Path(tmp), seed
                )
                row = {
                    "age_days": age,
                    "seed": seed,
                    "train_events": int(sum(map(len, split.train))),
                }
                row |= {"best_epoch": fit.best_epoch + 1, "fit_seconds": round(fit.seconds, 1)}
                row |= score_window(fit.model, split, window)
            results.append(row)
            print(json.dumps(row), flush=True)
    facts = {
        "cutoff": args.cutoff,
        "window_days": args.window_days,
        "events": len(window),
        "users": len({u for u, _, _ in window}),
        "seeds": args.seeds,
        "date": time.strftime("%Y-%m-%d"),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "staleness.json").write_text(
        json.dumps({"facts": facts, "rows": results}, indent=2)
    )
    table = markdown(results, facts)
    (args.out / "staleness.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
