"""The served model, judged through the HTTP API: refit on all data against the held-out candidate.

Each user's last interaction (in the protocol's order: timestamp, then the per-user tie-break)
never enters ingest. The pipeline runs on the rest exactly as ``dvc repro`` runs it (every
stage's command from ``dvc.yaml``, in a copy of the repository's files): validate,
preprocess, embed, train, evaluate, gate, refit, register, package. Then a real
``lmrec serve`` answers ``POST /recommend`` with each user's ingested history (oldest first,
``k`` 10, seen items excluded), and HR@10 / NDCG@10 / MRR@10 of the held-out item are
computed from the answers, for:

* ``refit``: the packaged champion (the gated recipe refit on all ingested data);
* ``candidate``: the model the gate judged (trained without each user's last two ingested
  interactions and the cold holdout), served from a bundle of its own;

each with the exposure policy as configured (``serve.exposure``) and with it off. The peer
row is RecBole SASRec fitted on the same events (every user's history but the held-out
item), from ``--sasrec`` (the JSON ``sasrec`` mode of this script writes; slow: ~45 min on
2 cores). Writes ``<out>/served.{json,md}``.

    python benchmarks/served.py sasrec --workspace /tmp/served      # the peer (slow)
    python benchmarks/served.py run --workspace /tmp/served         # pipeline + HTTP
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.workspace import copy_repository, start_service  # noqa: E402

from lmrec.config import load_params  # noqa: E402
from lmrec.features import split as splitting  # noqa: E402
from lmrec.io import read_table  # noqa: E402

STAGES = (
    "validate",
    "preprocess",
    "embed",
    "train",
    "evaluate",
    "gate",
    "refit",
    "register",
    "package",
)
K = 10
BIN = Path(sys.executable).parent


def held_out(interactions: pd.DataFrame, items: pd.DataFrame, params_file: Path) -> pd.DataFrame:
    """Each user's last event in the protocol's order (cleaning, k-core, tie-break as in
    preprocess, with no cold holdout): columns user_id, item_id."""
    cfg = load_params(params_file).preprocess.model_copy(update={"cold_item_share": 0.0})
    events, _, _, _ = splitting.split(interactions, items, cfg)
    return events.loc[events["role"] == "test", ["user_id", "item_id"]].reset_index(drop=True)


def prepare(workspace: Path, source: Path) -> pd.DataFrame:
    """Copy the repository's files into ``workspace``, write ``data/`` without the held-out
    events and return them (with each user's ingested history, oldest first)."""
    copy_repository(workspace)
    interactions = read_table(source / "interactions.parquet")
    items = read_table(source / "items.parquet")
    last = held_out(interactions, items, workspace / "params.yaml")
    key = interactions["user_id"] + "\x00" + interactions["item_id"]
    dropped = key.isin(set(last["user_id"] + "\x00" + last["item_id"]))
    (workspace / "data").mkdir(parents=True, exist_ok=True)
    interactions[~dropped].to_parquet(workspace / "data/interactions.parquet", index=False)
    items.to_parquet(workspace / "data/items.parquet", index=False)
    cfg = load_params(workspace / "params.yaml").preprocess
    kept = splitting.order_events(interactions[~dropped], cfg.tiebreak_seed)
    histories = kept.groupby("user_id")["item_id"].agg(list)
    last["history"] = last["user_id"].map(histories)
    return last[last["history"].map(lambda h: isinstance(h, list) and len(h) > 0)]


def run_pipeline(workspace: Path, env: dict[str, str]) -> dict[str, float]:
    """Every stage's ``dvc.yaml`` command, in order; seconds per stage."""
    stages = yaml.safe_load((workspace / "dvc.yaml").read_text())["stages"]
    seconds = {}
    for name in STAGES:
        start = time.perf_counter()
        print(f"== {name}: {stages[name]['cmd']}", flush=True)
        subprocess.run(stages[name]["cmd"], shell=True, cwd=workspace, env=env, check=True)
        seconds[name] = round(time.perf_counter() - start, 1)
    return seconds


def _post(port: int, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/recommend",
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.loads(answer.read())


def serve_and_score(
    workspace: Path, env: dict[str, str], rows: pd.DataFrame, port: int
) -> dict[str, Any]:
    """Start ``lmrec serve``, post every history, stop; metrics of the held-out items."""
    log = open(workspace / f"serve-{port}.log", "w")  # noqa: SIM115 - closed below
    server = start_service(workspace, env, port, log)
    try:
        for _ in range(300):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            time.sleep(1)
        else:
            raise RuntimeError(f"the service did not become ready: {workspace}/serve-{port}.log")
        ranks, versions, start = [], set(), time.perf_counter()
        for history, target in zip(rows["history"], rows["item_id"], strict=True):
            answer = _post(port, {"history": list(history), "k": K})
            items = [i["item_id"] for i in answer["items"]]
            versions.add(answer["model_version"])
            ranks.append(items.index(target) if target in items else K)
        seconds = time.perf_counter() - start
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
        log.close()
    ranks_arr = np.array(ranks)
    hit = ranks_arr < K
    return {
        "hr@10": float(hit.mean()),
        "ndcg@10": float(np.where(hit, 1.0 / np.log2(ranks_arr + 2), 0.0).mean()),
        "mrr@10": float(np.where(hit, 1.0 / (ranks_arr + 1), 0.0).mean()),
        "users": len(ranks),
        "model_versions": sorted(versions),
        "requests_per_s": len(ranks) / seconds,
    }


def _params_variant(workspace: Path, name: str, slots: int) -> Path:
    params = yaml.safe_load((workspace / "params.yaml").read_text())
    params["serve"]["exposure"]["slots"] = slots
    path = workspace / f"params-{name}.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def run(args: argparse.Namespace) -> int:
    workspace = args.workspace.resolve()
    workspace.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "BENTOML_HOME": str(workspace / "bentoml"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{workspace / 'mlflow.db'}",
        "LMREC_FEEDBACK_DB": str(workspace / "feedback.db"),
    }
    rows = prepare(workspace, args.source)
    seconds = run_pipeline(workspace, env)
    bundle = workspace / "artifacts/candidate-bundle"
    subprocess.run(
        [
            str(BIN / "lmrec"),
            "bundle",
            "--model",
            "artifacts/train/model",
            "--out",
            str(bundle),
            "--version",
            "candidate",
        ],
        cwd=workspace,
        env=env,
        check=True,
    )
    default_slots = load_params(workspace / "params.yaml").serve.exposure.slots
    results: dict[str, Any] = {}
    for slots in sorted({default_slots, 0}, reverse=True):
        params = _params_variant(workspace, f"slots{slots}", slots)
        for name, extra in (("refit", {}), ("candidate", {"LMREC_BUNDLE": str(bundle)})):
            run_env = {**env, **extra, "LMREC_PARAMS": str(params)}
            key = f"{name} (exposure slots {slots})"
            results[key] = serve_and_score(workspace, run_env, rows, args.port)
            print(key, results[key], flush=True)
    sasrec = json.loads(args.sasrec.read_text()) if args.sasrec and args.sasrec.is_file() else None
    payload = {
        "results": results,
        "sasrec": sasrec,
        "stage_seconds": seconds,
        "users": len(rows),
        "date": time.strftime("%Y-%m-%d"),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "served.json").write_text(json.dumps(payload, indent=2) + "\n")
    (args.out / "served.md").write_text(markdown(payload, default_slots))
    print(markdown(payload, default_slots))
    return 0


def markdown(payload: dict[str, Any], default_slots: int) -> str:
    sasrec = (payload["sasrec"] or {}).get("overall")
    lines = [
        "# The served model through the HTTP API (MovieLens-100K, each user's last event held out)",
        "",
        f"{payload['users']} users, one `POST /recommend` each with their ingested history; "
        f"{payload['date']}. Default exposure slots: {default_slots}.",
        "",
        "| model served | HR@10 | NDCG@10 | MRR@10 | NDCG ÷ SASRec | req/s |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in payload["results"].items():
        ratio = f"{r['ndcg@10'] / sasrec['ndcg@10']:.2f}×" if sasrec else "n/a"
        lines.append(
            f"| {name} | {r['hr@10']:.4f} | {r['ndcg@10']:.4f} | {r['mrr@10']:.4f} | {ratio} "
            f"| {r['requests_per_s']:.0f} |"
        )
    if sasrec:
        lines.append(
            f"| RecBole SASRec (in process, same events) | {sasrec['hr@10']:.4f} | "
            f"{sasrec['ndcg@10']:.4f} | {sasrec['mrr@10']:.4f} | 1.00× | - |"
        )
    lines += [
        "",
        "Stage seconds: " + ", ".join(f"{k} {v}" for k, v in payload["stage_seconds"].items()),
    ]
    return "\n".join(lines) + "\n"


def sasrec(args: argparse.Namespace) -> int:
    """RecBole SASRec on every user's events but the held-out one (the full split's test
    stage: cold holdout off), scored on the held-out item."""
    from benchmarks.peers import evaluate_peer, get_peer

    from lmrec.features.dataset import load_split

    workspace = args.workspace.resolve()
    split_dir = workspace / "split_full"
    params = workspace / "params_full.yaml"
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["preprocess"]["cold_item_share"] = 0.0
    workspace.mkdir(parents=True, exist_ok=True)
    params.write_text(yaml.safe_dump(raw, sort_keys=False))
    subprocess.run(
        [
            str(BIN / "lmrec"),
            "preprocess",
            "--params",
            str(params),
            "--interactions",
            str(args.source / "interactions.parquet"),
            "--items",
            str(args.source / "items.parquet"),
            "--out",
            str(split_dir),
        ],
        check=True,
    )
    split = load_split(split_dir)
    result = get_peer("recbole-sasrec")(split, 0, "test", cache=True)
    metrics = evaluate_peer(result, split, cache=True)
    out = {"overall": metrics["overall"], "fit_seconds": result.fit_seconds}
    (workspace / "sasrec.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out["overall"], indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=("run", "sasrec"))
    parser.add_argument("--workspace", type=Path, required=True)
    parser.add_argument(
        "--source",
        type=Path,
        default=REPO / "data",
        help="the ingested MovieLens-100K (lmrec ingest)",
    )
    parser.add_argument("--sasrec", type=Path, help="sasrec.json from the sasrec mode")
    parser.add_argument("--port", type=int, default=3391)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results")
    args = parser.parse_args(argv)
    return run(args) if args.mode == "run" else sasrec(args)


if __name__ == "__main__":
    sys.exit(main())
