"""Evaluate stage: the docs/design.md protocol for the candidate, its seed replicas, the in-house
baselines and the current champion, on the same split.

Writes to ``out_dir`` (each file atomically):

- ``metrics.json`` (DVC metrics): the candidate's overall and per-slice metrics, mean ± std
  over seeds when ``train.extra_seeds`` trained replicas, and the champion's and each
  baseline's headline numbers;
- ``comparison.json``: every model's full results and popularity curve (the gate's input);
- ``slices.csv`` and ``popularity_curve.csv`` (DVC plots);
- ``report.png``: metric by slice, popularity-bias curve, champion vs candidate.

The champion lives in the MLflow registry, outside DVC's view, so ``dvc.yaml`` marks this
stage ``always_changed``; its outputs are deterministic, so the gate and register stages
downstream re-run only when the candidate or the champion really changed. The metrics and
the report are also logged to the candidate's MLflow training run.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from lmrec.artifacts import (
    BASELINE_PREFIX,
    BASELINES_DIR,
    COMPARISON_FILE,
    CURVE_FILE,
    METRICS_FILE,
    MODEL_DIR,
    REPLICAS_DIR,
    REPORT_FILE,
    RUN_FILE,
    SLICES_FILE,
    load_embeddings,
    model_dirs,
    read_item_ids,
    write_comparison,
)
from lmrec.config import Params
from lmrec.evaluation import metrics as M
from lmrec.evaluation.plots import write_curve_csv, write_slices_csv
from lmrec.evaluation.protocol import aggregate_seeds, evaluate_protocol, sample_users
from lmrec.evaluation.report import write_report
from lmrec.evaluation.scorers import CatalogScorer, LenientScorer
from lmrec.features.dataset import SplitData, load_split
from lmrec.io import DataError, LmrecError, json_safe, write_json
from lmrec.models.registry import load_model
from lmrec.registry.store import CHAMPION, Registry, model_digest
from lmrec.serving.exposure import ExposurePolicy
from lmrec.serving.offline import served_metrics
from lmrec.train.tracking import tracking_uri

log = logging.getLogger(__name__)

HEADLINE = ("hr@10", "ndcg@10", "mrr@10", "recall@20", "coverage@10")


def _protocol(scorer: Any, split: SplitData, params: Params, emb: np.ndarray) -> dict[str, Any]:
    """The protocol on the raw ranking, plus ``served``: the lists after ``serve.exposure``."""
    cfg = params.evaluate
    results = _raw_protocol(scorer, split, params, emb)
    policy = ExposurePolicy(**params.serve.exposure.model_dump())
    norms = np.linalg.norm(emb, axis=1, keepdims=True)
    text = (emb / np.maximum(norms, 1e-12)).astype(np.float32)  # the service's text vectors
    users = sample_users(split, cfg.stage, cfg.max_users, cfg.sample_seed)  # the protocol's
    served = served_metrics(scorer, split, [policy], cfg.stage, cfg.k, text, users=users)[0]
    results["served"] = {"overall": served["overall"], "new_items": served["new_items"]}
    return results


def _raw_protocol(scorer: Any, split: SplitData, params: Params, emb: np.ndarray) -> dict:
    cfg = params.evaluate
    return evaluate_protocol(
        scorer,
        split,
        cfg.stage,
        k=cfg.k,
        recall_k=cfg.recall_k,
        batch_size=cfg.batch_size,
        head_share=cfg.head_share,
        short_history_max=cfg.short_history_max,
        item_embeddings=emb,
        popularity_bins=min(cfg.popularity_bins, split.n_items),
        max_users=cfg.max_users,
        sample_seed=cfg.sample_seed,
    )


def _evaluate_champion(
    params: Params, split: SplitData, emb: np.ndarray, candidate_digest: str
) -> dict[str, Any] | None:
    """The champion's results on this split, or None when there is no champion yet."""
    registry = Registry(tracking_uri(params.train.mlflow.tracking_uri), params.register.model_name)
    champion = registry.alias(CHAMPION)
    if champion is None:
        return None
    info = {"version": champion.number, "digest": champion.digest}
    info["is_candidate"] = champion.digest == candidate_digest
    if champion.created_at is not None:  # the age is derived when printed and logged: in the
        info["registered_at"] = champion.created_at  # outputs it would change them every run
    with tempfile.TemporaryDirectory(prefix="lmrec-champion-") as tmp:
        model_dir = registry.download(champion.number, tmp)
        scorer = CatalogScorer(
            load_model(model_dir), read_item_ids(model_dir), split.items["item_id"].astype(str)
        )
        results = _protocol(scorer, split, params, emb)
    info["unknown_items"] = scorer.n_unknown
    return {"label": f"champion v{champion.number}", "champion": info, **results}


def run(
    params: Params,
    split_dir: Path,
    embed_dir: Path,
    train_dir: Path,
    out_dir: Path,
    progress: bool = True,
) -> dict:
    """Evaluate every model, write the outputs, log to MLflow; return a printable summary
    (``progress``: a bar over the models on stderr)."""
    split = load_split(split_dir)
    emb, _ = load_embeddings(embed_dir)
    item_ids = split.items["item_id"].astype(str).tolist()
    candidate_dir = train_dir / MODEL_DIR
    if read_item_ids(candidate_dir) != item_ids:
        raise DataError(
            f"{candidate_dir}: trained on another catalog than {split_dir}; re-run train"
        )
    digest = model_digest(candidate_dir)
    candidate = load_model(candidate_dir)
    baselines, seeds = model_dirs(train_dir / BASELINES_DIR), model_dirs(train_dir / REPLICAS_DIR)
    bar = tqdm(
        total=2 + len(baselines) + len(seeds), desc="evaluate", unit="model", disable=not progress
    )
    with bar:
        bar.set_postfix_str("candidate")
        models: dict[str, dict[str, Any]] = {
            "candidate": {
                "label": f"candidate ({candidate.name})",
                **_protocol(LenientScorer(candidate), split, params, emb),
            }
        }
        bar.update()
        bar.set_postfix_str("champion")
        champion = _evaluate_champion(params, split, emb, digest)
        if champion is not None:
            models["champion"] = champion
        bar.update()
        for name, path in baselines.items():
            bar.set_postfix_str(f"baseline {name}")
            models[f"{BASELINE_PREFIX}{name}"] = {
                "label": f"baseline {name}",
                **_protocol(LenientScorer(load_model(path)), split, params, emb),
            }
            bar.update()
        replicas = {}
        for name, path in seeds.items():
            bar.set_postfix_str(f"replica {name}")
            replicas[name] = _protocol(LenientScorer(load_model(path)), split, params, emb)
            bar.update()
    counts = split.items.sort_values("item_idx")["n_train"].to_numpy(dtype=np.float64)
    bins = min(params.evaluate.popularity_bins, split.n_items)
    comparison = {
        "stage": params.evaluate.stage,
        "candidate_digest": digest,
        "models": models,
        "catalog_popularity_curve": M.catalog_popularity_curve(counts, bins).tolist(),
        "seeds": _seed_summary(models["candidate"], replicas),
    }
    comparison = json_safe(comparison)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_comparison(out_dir, comparison)
    write_json(out_dir / METRICS_FILE, _metrics(comparison))
    write_slices_csv(out_dir / SLICES_FILE, comparison)
    write_curve_csv(out_dir / CURVE_FILE, comparison)
    write_report(comparison, out_dir / REPORT_FILE)
    _log_to_mlflow(params, train_dir, out_dir, comparison)
    return _summary(comparison)


def _seed_summary(candidate: dict[str, Any], replicas: dict[str, dict]) -> dict[str, Any]:
    runs = [candidate] + list(replicas.values())
    stats = aggregate_seeds([{"overall": r["overall"], "slices": r["slices"]} for r in runs])
    return {"n": len(runs), "replicas": sorted(replicas), **stats}


def _metrics(comparison: dict[str, Any]) -> dict[str, Any]:
    """The DVC metrics file: the candidate in full, other models by their headline numbers."""
    models = comparison["models"]
    cand = models["candidate"]
    out: dict[str, Any] = {
        "stage": comparison["stage"],
        "candidate": {
            "overall": cand["overall"],
            "slices": cand["slices"],
            "served": cand["served"],
            "sample": cand["sample"],
        },
    }
    if comparison["seeds"]["n"] > 1:
        out["seeds"] = comparison["seeds"]
    if "champion" in models:
        champ = models["champion"]
        out["champion"] = {
            "version": champ["champion"]["version"],
            "registered_at": champ["champion"].get("registered_at"),
            **{k: champ["overall"].get(k) for k in HEADLINE},
        }
    out["baselines"] = {
        key.removeprefix(BASELINE_PREFIX): {k: m["overall"].get(k) for k in HEADLINE}
        for key, m in models.items()
        if key.startswith(BASELINE_PREFIX)
    }
    return out


def _log_to_mlflow(
    params: Params, train_dir: Path, out_dir: Path, comparison: dict[str, Any]
) -> None:
    """Log the candidate's metrics and the report to its training run, when it has one."""
    run_file = train_dir / RUN_FILE
    run_id = json.loads(run_file.read_text()).get("mlflow_run_id") if run_file.is_file() else None
    if not run_id:
        log.warning("%s has no MLflow run id: metrics not logged to MLflow", run_file)
        return
    import mlflow
    from mlflow import MlflowClient

    from lmrec.train.tracking import flatten

    uri = tracking_uri(params.train.mlflow.tracking_uri)
    client = MlflowClient(tracking_uri=uri)
    stage = comparison["stage"]
    cand = comparison["models"]["candidate"]
    values = flatten(
        {"overall": cand["overall"], "slices": cand["slices"], "served": cand["served"]}
    )
    age = champion_age_days(comparison)
    if age is not None:  # how stale the model in production was when this candidate met it
        values["champion.age_days"] = age
    try:
        client.log_batch(
            run_id,
            metrics=[
                mlflow.entities.Metric(f"{stage}.{k}".replace("@", "_at_"), float(v), 0, 0)
                for k, v in values.items()
                if isinstance(v, int | float) and math.isfinite(v)
            ],
        )
        for name in (REPORT_FILE, COMPARISON_FILE):
            client.log_artifact(run_id, str(out_dir / name), "evaluation")
    except Exception as err:  # MLflow raises many types; the evaluation itself is done
        raise LmrecError(
            f"MLflow at {uri!r}: cannot log the evaluation to run {run_id}: {err}"
        ) from err


def champion_age_days(comparison: dict[str, Any]) -> float | None:
    """Days since the champion of ``comparison`` was registered (None: no champion, or its
    registration time unknown)."""
    champ = comparison["models"].get("champion", {}).get("champion", {})
    if champ.get("registered_at") is None:
        return None
    return round((time.time() - champ["registered_at"]) / 86_400.0, 6)  # 0.09 s


def _summary(comparison: dict[str, Any]) -> dict[str, Any]:
    stage = comparison["stage"]
    out = {}
    age = champion_age_days(comparison)
    if age is not None:
        champ = comparison["models"]["champion"]
        out[f"{champ['label']} age"] = f"{age:g} days since it was registered"
    for m in comparison["models"].values():
        ndcg = m["overall"].get("ndcg@10")
        new = m["slices"]["new_items"].get("hr@10")
        served = m["served"]["new_items"].get("hr@10")
        out[m["label"]] = f"{stage} ndcg@10 {ndcg}  new-item hr@10 {new} (served lists: {served})"
    seeds = comparison["seeds"]
    if seeds["n"] > 1:
        ndcg = seeds["overall"]["ndcg@10"]
        out[f"candidate over {seeds['n']} seeds"] = (
            f"ndcg@10 {ndcg['mean']:.4f} ± {ndcg['std']:.4f}"
        )
    return out
