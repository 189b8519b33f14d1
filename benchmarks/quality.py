"""Recommendation quality, side by side: lmrec's model, its baselines and open-source peers.

Every model is trained on the same split (``artifacts/preprocess``: the docs/design.md protocol,
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
import math
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.new_items import SETTINGS, tradeoff, unit_text  # noqa: E402
from benchmarks.peers import PEER_MODULES, evaluate_peer, get_peer  # noqa: E402

from lmrec.artifacts import load_embeddings  # noqa: E402
from lmrec.config import load_params  # noqa: E402
from lmrec.evaluation.protocol import evaluate_protocol  # noqa: E402
from lmrec.features.dataset import load_split  # noqa: E402
from lmrec.train.trainer import train_baselines, train_sequential  # noqa: E402

SEQUENTIAL_PEERS = ("recbole-sasrec", "recbole-gru4rec")
COLD_PEER = "lightfm-genre"
COLUMNS = ("hr@10", "ndcg@10", "mrr@10", "new_hr@10", "cold_recall@10", "fit_seconds")
TARGETS = {
    "ndcg_vs_best_sequential_peer": 1.1,
    "ndcg_vs_best_non_sequential_peer": 1.3,
    "cold_recall_vs_lightfm_genre": 1.5,
    "served_new_hr_vs_lightfm_genre": 3.0,
    "served_ndcg_vs_reference": 0.98,
}
MAX_TRAIN_SECONDS = 180.0


def _row(result: dict[str, Any], seconds: float) -> dict[str, float]:
    overall, cold = result["overall"], result["slices"]["cold_items"]
    return {
        "hr@10": overall["hr@10"],
        "ndcg@10": overall["ndcg@10"],
        "mrr@10": overall["mrr@10"],
        "new_hr@10": result["slices"]["new_items"]["hr@10"],
        "cold_recall@10": cold["recall@10"],
        "fit_seconds": seconds,
    }


class TextKNN:
    """The text content peer: cosine of each item's MiniLM vector to the mean vector of the
    user's last ``last`` history items (the same embeddings lmrec's model starts from)."""

    def __init__(self, embeddings: np.ndarray, last: int = 20) -> None:
        norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
        self.text = embeddings / np.maximum(norms, 1e-12)
        self.last = last

    def score(self, histories) -> np.ndarray:
        out = np.zeros((len(histories), len(self.text)), dtype=np.float32)
        for row, history in enumerate(histories):
            if len(history):
                out[row] = self.text @ self.text[history[-self.last :]].mean(axis=0)
        return out


def run_text_knn(split, embeddings, log) -> dict[str, Any]:
    start = time.perf_counter()
    model = TextKNN(embeddings)
    runs = [_row(evaluate_protocol(model, split, "test"), time.perf_counter() - start)]
    log(f"text-knn: NDCG@10 {runs[0]['ndcg@10']:.4f}  new HR@10 {runs[0]['new_hr@10']:.4f}")
    return _summarise("text-knn (MiniLM cosine to history)", "peer", runs)


def _summarise(name: str, kind: str, runs: list[dict[str, float]]) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, "kind": kind, "seeds": len(runs), "runs": runs}
    served = ("served_ndcg", "served_new_hr") if all("served_ndcg" in r for r in runs) else ()
    for column in (*COLUMNS, *served):
        values = np.array([r[column] for r in runs], dtype=np.float64)
        out[column] = float(values.mean())
        out[f"{column}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return out


def saved_fits(paths: list[Path], params) -> list[SimpleNamespace]:
    """Models saved by a run that trained them as the train stage does (``new_items.py
    --save-models``), as fits: each must have ``params``'s recipe (seed aside).

    Raises:
        SystemExit: a model was trained with another recipe.
    """
    from lmrec.models.registry import load_model

    recipe = params.train.sequential.model_dump().items()
    want = {k: v for k, v in recipe if k not in ("seed", "device")}
    fits = []
    for path in paths:
        model = load_model(path)
        have = {k: getattr(model.params, k) for k in want if hasattr(model.params, k)}
        differ = {k: (have[k], want[k]) for k in have if have[k] != want[k]}
        if differ:
            raise SystemExit(f"{path}: trained with another recipe (saved, wanted): {differ}")
        fits.append(
            SimpleNamespace(
                model=model, seed=model.params.seed, seconds=float("nan"), best_epoch=None,
                epochs_run=None,
            )
        )  # fmt: skip
    return fits


def run_lmrec(
    split,
    embeddings,
    params,
    seeds: list[int],
    log,
    name: str = "lmrec (LM-powered sequential)",
    saved: list[Path] | None = None,
) -> tuple[dict, dict]:
    """Train lmrec's model per seed as the train stage does (or take the ``saved`` fits);
    test metrics per seed, and the served path: the same lists after the serving exposure
    policy (``serve.exposure``)."""
    runs, extra = [], {"best_epochs": [], "epochs_run": [], "tradeoff": []}
    exposure = params.serve.exposure
    default = (
        exposure.slots,
        exposure.min_score_quantile,
        exposure.text_weight,
        exposure.prior_weight,
    )
    settings = sorted({*SETTINGS, default})
    text = unit_text(embeddings)
    fits = (
        saved_fits(saved, params) if saved else (_fit(split, embeddings, params, s) for s in seeds)
    )
    for result in fits:
        seed = result.seed
        test = evaluate_protocol(result.model, split, "test")
        runs.append(_row(test, result.seconds))
        curve = tradeoff(result.model, split, "test", settings, exposure.max_interactions, text)
        served = next(r for r in curve if _setting(r) == default)
        runs[-1].update(served_ndcg=served["warm_ndcg@10"], served_new_hr=served["new_hr@10"])
        extra["tradeoff"] += [{**r, "seed": seed} for r in curve]
        best = None if result.best_epoch is None else result.best_epoch + 1
        extra["best_epochs"].append(best)
        extra["epochs_run"].append(result.epochs_run)
        log(
            f"lmrec seed {seed}: NDCG@10 {runs[-1]['ndcg@10']:.4f}  "
            f"cold R@10 {runs[-1]['cold_recall@10']:.4f}  {result.seconds:.0f} s "
            f"({result.epochs_run} epochs, best {best})"
        )
    return _summarise(name, "lmrec", runs), extra


def _fit(split, embeddings, params, seed: int):
    cfg = params.train.model_copy(update={"seed": seed})
    with tempfile.TemporaryDirectory(prefix="lmrec-bench-") as tmp:
        result = train_sequential(split, embeddings, cfg, Path(tmp), progress=False)
    result.seed = seed
    return result


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


def checks(
    lmrec: dict[str, Any], peers: list[dict[str, Any]], reference: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The acceptance ratios (None where the peer or the reference was not run).

    ``served_*`` use lmrec's lists after the serving exposure policy: new-item HR@10 over the
    whole catalog against LightFM genre-only's on the same rows, and warm NDCG@10 against
    the ``reference`` model (today's default recipe, raw lists) trained in the same run.
    """

    def best(rows):
        return max(rows, key=lambda r: r["ndcg@10"]) if rows else None

    seq = best([r for r in peers if r["name"] in SEQUENTIAL_PEERS])
    non_seq = best([r for r in peers if r["name"] not in SEQUENTIAL_PEERS])
    cold = next((r for r in peers if r["name"] == COLD_PEER), None)
    out: dict[str, Any] = {}
    for key, ref, column, ref_column in (
        ("ndcg_vs_best_sequential_peer", seq, "ndcg@10", "ndcg@10"),
        ("ndcg_vs_best_non_sequential_peer", non_seq, "ndcg@10", "ndcg@10"),
        ("cold_recall_vs_lightfm_genre", cold, "cold_recall@10", "cold_recall@10"),
        ("served_new_hr_vs_lightfm_genre", cold, "served_new_hr", "new_hr@10"),
        ("served_ndcg_vs_reference", reference, "served_ndcg", "ndcg@10"),
    ):
        have = ref is not None and ref[ref_column] > 0 and column in lmrec
        ratio = lmrec[column] / ref[ref_column] if have else None
        out[key] = {
            "against": None if ref is None else ref["name"],
            "ratio": ratio,
            "target": TARGETS[key],
            "passed": None if ratio is None else ratio >= TARGETS[key],
        }
    seconds = max(r["fit_seconds"] for r in lmrec["runs"])
    timed = not math.isnan(seconds)  # saved fits (--models) were not timed here
    out["train_seconds_max"] = {
        "value": seconds if timed else None,
        "target": MAX_TRAIN_SECONDS,
        "passed": seconds <= MAX_TRAIN_SECONDS if timed else None,
    }
    return out


def _setting(row: dict[str, Any]) -> tuple[int, float, float, float]:
    return (
        row["slots"],
        row["min_score_quantile"],
        row.get("text_weight", 0.0),
        row.get("prior_weight", 0.0),
    )


def tradeoff_markdown(
    curve: list[dict[str, Any]], default: tuple[int, float, float, float]
) -> list[str]:
    """The exposure trade-off: mean ± std over seeds per (slots, score quantile, text
    weight, prior weight)."""
    lines = [
        "",
        "Exposure trade-off (lmrec, test stage, lists of 10 after `serve.exposure`; default "
        f"slots {default[0]}, min_score_quantile {default[1]:g}, text_weight {default[2]:g}, "
        f"prior_weight {default[3]:g}):",
        "",
        "| slots | score quantile | text weight | prior weight | warm NDCG@10 | warm HR@10 "
        "| new-item HR@10 | new-item NDCG@10 | fresh/list |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for setting in sorted({_setting(r) for r in curve}):
        group = [r for r in curve if _setting(r) == setting]
        cells = [str(setting[0]), f"{setting[1]:g}", f"{setting[2]:g}", f"{setting[3]:g}"]
        for key in ("warm_ndcg@10", "warm_hr@10", "new_hr@10", "new_ndcg@10", "fresh_per_list"):
            values = np.array([r[key] for r in group], dtype=np.float64)
            std = values.std(ddof=1) if len(values) > 1 else 0.0
            cells.append(f"{values.mean():.4f} ± {std:.4f}")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _fmt(row: dict[str, Any], column: str) -> str:
    mean, std = row[column], row[f"{column}_std"]
    if column == "fit_seconds":
        if math.isnan(mean):
            return "saved"
        return f"{mean:.1f}" if row["seeds"] == 1 else f"{mean:.1f} ± {std:.1f}"
    return f"{mean:.4f}" if row["seeds"] == 1 else f"{mean:.4f} ± {std:.4f}"


def markdown(rows: list[dict[str, Any]], result_checks: dict[str, Any], facts: dict) -> str:
    peers = [r for r in rows if r["kind"] in ("peer", "sequential peer")]
    best_peer = max((r["ndcg@10"] for r in peers), default=0.0)
    head = (
        "| model | seeds | HR@10 | NDCG@10 | MRR@10 | new-item HR@10 | cold-only Recall@10 "
        "| fit s | NDCG ÷ best peer |"
    )
    lines = [
        "# Quality benchmark (MovieLens-100K, test stage, full ranking)",
        "",
        f"Data: {facts['users']} users, {facts['items']} items "
        f"({facts['cold_items']} cold), split {facts['split_fingerprint'][:12]}; "
        f"torch threads {facts['threads']}; {facts['date']}.",
        "",
        "New-item HR@10: each user's latest interaction with an item that has no training "
        "interactions, ranked against the whole catalog (raw model lists). Cold-only "
        "Recall@10: the same items ranked among themselves only (a diagnostic).",
        "",
        head,
        "|" + "---|" * 9,
    ]
    for row in rows:
        ratio = f"{row['ndcg@10'] / best_peer:.2f}×" if best_peer > 0 else "n/a"
        cells = [row["name"], str(row["seeds"]), *(_fmt(row, c) for c in COLUMNS), ratio]
        lines.append("| " + " | ".join(cells) + " |")
    served = [r for r in rows if "served_ndcg" in r]
    if served:
        lines += ["", "Served path (lists after `serve.exposure`):", ""]
        lines += ["| model | warm NDCG@10 | new-item HR@10 |", "|---|---|---|"]
        lines += [
            f"| {r['name']} | {_fmt(r, 'served_ndcg')} | {_fmt(r, 'served_new_hr')} |"
            for r in served
        ]
    if facts.get("lmrec", {}).get("tradeoff"):
        exposure = facts["exposure"]
        default = (
            exposure["slots"],
            exposure["min_score_quantile"],
            exposure.get("text_weight", 0.0),
            exposure.get("prior_weight", 0.0),
        )
        lines += tradeoff_markdown(facts["lmrec"]["tradeoff"], default)
    lines += ["", "| check | against | ratio / value | target | passed |", "|---|---|---|---|---|"]
    for key, check in result_checks.items():
        if key == "train_seconds_max":
            value = "saved fits" if check["value"] is None else f"{check['value']:.0f} s"
            against = "-"
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
    parser.add_argument(
        "--reference-params",
        type=Path,
        help="also train this params file's recipe (e.g. the previous default) as the "
        "reference of the served_ndcg_vs_reference check",
    )
    parser.add_argument(
        "--models",
        type=Path,
        nargs="+",
        help="judge these saved lmrec models (one per seed, trained with --params' recipe, "
        "e.g. by new_items.py --save-models) instead of training them",
    )
    parser.add_argument(
        "--reference-models",
        type=Path,
        nargs="+",
        help="the same for the --reference-params recipe",
    )
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
    lmrec, extra = run_lmrec(split, embeddings, params, args.seeds, log, saved=args.models)
    rows = [lmrec]
    reference = None
    if args.reference_params is not None:
        name = f"lmrec reference ({args.reference_params.name})"
        ref_params = load_params(args.reference_params)
        if ref_params.train == params.train:  # the same fits: only the serving policy differs
            runs = [{c: r[c] for c in COLUMNS} for r in lmrec["runs"]]
            reference = _summarise(f"{name}: the same fits, raw lists", "lmrec", runs)
        else:
            reference, _ = run_lmrec(
                split, embeddings, ref_params, args.seeds, log, name, args.reference_models
            )
        rows.append(reference)
    rows.append(run_text_knn(split, embeddings, log))
    if not args.no_baselines:
        rows += run_baselines(split, params, args.seeds, log)
    peer_seeds = {
        n: (args.recbole_seeds if n in SEQUENTIAL_PEERS else args.seeds) for n in args.peers
    }
    peers = run_peers(split, args.peers, peer_seeds, not args.no_cache, log)
    rows += peers
    result_checks = checks(lmrec, peers, reference)
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
        "exposure": params.serve.exposure.model_dump(),
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
