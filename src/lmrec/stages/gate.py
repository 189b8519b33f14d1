"""Gate stage: decide whether the evaluated candidate may be registered and promoted.

Reads the evaluate stage's ``comparison.json`` (candidate, champion, baselines on the same
split), measures the candidate's latency on the served path on this machine, runs every
check of the ``gate`` params block (``lmrec.registry.gate``) and writes ``gate.json``:

    {"passed": bool, "exit_code": 0 | 4, "candidate_digest": ..., "champion_version": ...,
     "checks": [{"check": ..., "status": "pass" | "fail" | "skip", "reason": ...}],
     "latency": {"p50_ms": ..., "p95_ms": ..., "requests": ...}}

The latency is that of ``Engine.recommend`` (``lmrec.serving.engine``, what ``/recommend``
calls) on a serving bundle of the candidate built as ``lmrec package`` builds one, with the
``serve`` params: the served model is the candidate's recipe refit on every event, which
does not exist yet at the gate, but has the same network, catalog and serving settings.

``lmrec gate`` exits 0 when the candidate passes and ``ExitCode.REFUSED`` (4) when it is
refused, so ``dvc repro`` stops before register and Airflow can tell a refusal from a crash.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from lmrec.artifacts import COMPARISON_FILE, GATE_FILE, MODEL_DIR, read_comparison
from lmrec.config import LatencyParams, Params, ServeParams
from lmrec.exit_codes import ExitCode
from lmrec.features.dataset import SplitData, load_split
from lmrec.io import DataError, write_json
from lmrec.registry import gate
from lmrec.registry.store import model_digest
from lmrec.serving.bundle import build_bundle
from lmrec.serving.engine import Engine


def served_engine(
    model_dir: Path, split_dir: Path, embed_dir: Path, serve: ServeParams, work_dir: Path
) -> Engine:
    """The engine the service would run on ``model_dir``: its bundle built in ``work_dir``."""
    meta = {"version": "candidate", "alias": "candidate", "digest": model_digest(model_dir)}
    build_bundle(model_dir, split_dir, embed_dir, work_dir / "bundle", meta)
    return Engine.load(work_dir / "bundle", serve)


def measure_latency(engine: Engine, split: SplitData, cfg: LatencyParams) -> dict[str, float]:
    """Time single ``Engine.recommend`` requests (a posted history, top-k) on this machine.

    Requests cycle through the users' test-time histories in user order (deterministic),
    posted as item ids the way a client posts a session to ``/recommend``; the first
    ``cfg.warmup`` calls are not timed.
    """
    item_ids = split.items["item_id"].astype(str).to_numpy()
    users = [u for u in range(split.n_users) if len(split.history_for(u, "test"))] or [0]
    k = min(cfg.k, engine.n_items, engine.params.max_k)
    timings = []
    for i in range(cfg.warmup + cfg.requests):
        history = item_ids[split.history_for(users[i % len(users)], "test")].tolist()
        start = time.perf_counter()
        engine.recommend(history=history, k=k)
        if i >= cfg.warmup:
            timings.append((time.perf_counter() - start) * 1000)
    arr = np.asarray(timings)
    return {
        "p50_ms": round(float(np.percentile(arr, 50)), 3),
        "p95_ms": round(float(np.percentile(arr, 95)), 3),
        "requests": len(timings),
    }


def run(
    params: Params,
    eval_dir: Path,
    train_dir: Path,
    split_dir: Path,
    embed_dir: Path,
    out_dir: Path,
) -> dict:
    """Run the gate; write ``gate.json``; return it (``passed`` says the verdict)."""
    comparison_file = eval_dir / COMPARISON_FILE
    comparison = read_comparison(eval_dir)
    model_dir = train_dir / MODEL_DIR
    digest = model_digest(model_dir)
    if comparison.candidate_digest != digest:
        raise DataError(
            f"{comparison_file}: evaluates another model than {model_dir}; re-run evaluate"
        )
    baselines = {name: m.as_dict() for name, m in comparison.baselines.items()}
    champion = None
    champion_info: dict[str, Any] = {}
    if comparison.champion is not None and comparison.champion.champion is not None:
        champion_info = comparison.champion.champion.model_dump()
        champion = gate.Reference(comparison.champion.label, comparison.champion.as_dict())
    with tempfile.TemporaryDirectory(prefix="lmrec-gate-") as work:
        engine = served_engine(model_dir, split_dir, embed_dir, params.serve, Path(work))
        latency = measure_latency(engine, load_split(split_dir), params.gate.latency)
    results = gate.run_checks(
        params.gate,
        comparison.candidate.as_dict(),
        baselines,
        champion,
        champion_is_candidate=bool(champion_info.get("is_candidate")),
        latency_p95_ms=latency["p95_ms"],
    )
    ok = gate.passed(results)
    report = {
        "passed": ok,
        "exit_code": int(ExitCode.OK if ok else ExitCode.REFUSED),
        "stage": comparison.stage,
        "candidate_digest": digest,
        "champion_version": champion_info.get("version"),
        "candidate_is_champion": bool(champion_info.get("is_candidate")),
        "checks": [r.to_dict() for r in results],
        "latency": latency,
    }
    write_json(out_dir / GATE_FILE, report)
    return report
