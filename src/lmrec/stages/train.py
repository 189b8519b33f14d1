"""Train stage: the LM-powered model (early stopping, checkpoints, MLflow) and the baselines.

Reads the preprocess split and the embed stage's item embeddings; writes, each atomically:

- ``<out>/model/``: the best epoch's model (``weights.safetensors`` + ``config.json``),
  ``item_ids.json`` (item index -> item id), ``encoder.json`` (the embed stage's record),
  ``training.json`` (best epoch, epochs run, process count) and, after encoder
  fine-tuning, ``encoder_adapter/`` (safetensors);
- ``<out>/baselines/<name>/``: each baseline, with its ``item_ids.json``;
- ``<out>/replicas/seed_<n>/``: the model retrained with each of ``train.extra_seeds``
  (empty without), so that the evaluate stage can report mean ± std over seeds;
- ``<out>/metrics.json``: validation metrics of the model and each baseline (DVC metrics);
- ``<out>/history.csv``: per-epoch loss and validation metrics (DVC plots);
- ``<out>/run.json``: this run's facts that differ between identical runs (MLflow run id
  and model URI, git commit, data version, seconds); not a DVC output, so that repeated
  runs keep the same output hashes.

Checkpoints live in ``checkpoint_dir`` (not a DVC output: ``--resume`` needs them to survive
a failed run). Under ``torchrun`` only rank 0 writes anything.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Any

import torch

from lmrec.artifacts import (
    BASELINES_DIR,
    HISTORY_FILE,
    METRICS_FILE,
    MODEL_DIR,
    REPLICAS_DIR,
    RUN_FILE,
    TRAINING_FILE,
    load_embeddings,
    write_model_dir,
)
from lmrec.artifacts import ENCODER_FILE as ENCODER_META
from lmrec.config import Params
from lmrec.features.dataset import SplitData, load_split
from lmrec.io import DataError, atomic_path, json_safe, write_json
from lmrec.models.base import Recommender
from lmrec.train import distributed
from lmrec.train.checkpoint import read_meta
from lmrec.train.tracking import Tracker, data_version, git_commit, tracking_uri
from lmrec.train.trainer import LAST, TrainResult, train_baselines, train_sequential


def _resumed_run_id(checkpoint_dir: Path, resume: bool) -> str | None:
    if not resume or not (checkpoint_dir / LAST).is_dir():
        return None
    return read_meta(checkpoint_dir / LAST).get("run_id")


def _save_with_ids(model: Recommender, directory: Path, split: SplitData, **files: Any) -> None:
    write_model_dir(model, directory, split.items["item_id"].astype(str).tolist(), files)


def _write_history(path: Path, history: list[dict[str, float]]) -> None:
    columns = sorted({k for row in history for k in row}, key=lambda k: (k != "epoch", k))
    with atomic_path(path) as tmp, tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(history)


def run(
    params: Params,
    split_dir: Path,
    embed_dir: Path,
    out_dir: Path,
    checkpoint_dir: Path,
    *,
    resume: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Train, write the outputs, log the MLflow run; return a summary (rank 0)."""
    cfg = params.train
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    split = load_split(split_dir)
    embeddings, encoder_meta = load_embeddings(embed_dir)
    if len(embeddings) != split.n_items:
        raise DataError(
            f"{embed_dir}: {len(embeddings)} item embeddings for {split.n_items} split items; "
            "re-run the embed stage"
        )
    dist = distributed.from_environment()
    finetune = cfg.sequential.encoder_finetune != "frozen"
    texts = split.item_texts() if finetune else None
    fit_split = split.with_training_users(cfg.data_fraction, cfg.seed)
    tracker = None
    if dist.is_main:
        tracker = Tracker(
            tracking_uri(cfg.mlflow.tracking_uri),
            cfg.mlflow.experiment,
            run_id=_resumed_run_id(checkpoint_dir, resume),
            run_name="train",
            hint=f"the checkpoints in {checkpoint_dir} are kept: `lmrec train --resume` "
            "continues this run once the store answers",
        )
    try:
        result = train_sequential(
            split,
            embeddings,
            cfg,
            checkpoint_dir,
            resume=resume,
            tracker=tracker,
            item_texts=texts,
            encoder=encoder_meta.get("encoder"),
            progress=progress,
            dist=dist,
            fit_split=fit_split,
        )
        replicas = {}
        for seed in cfg.extra_seeds:
            if dist.is_main:
                print(f"replica with seed {seed}", flush=True)
            replicas[seed] = train_sequential(
                split,
                embeddings,
                cfg.model_copy(update={"seed": seed}),
                checkpoint_dir / REPLICAS_DIR / f"seed_{seed}",
                item_texts=texts,
                encoder=encoder_meta.get("encoder"),
                progress=progress,
                dist=dist,
                fit_split=split.with_training_users(cfg.data_fraction, seed),
            )
        if not dist.is_main:
            return {}
        summary = _finish(
            params, split, embed_dir, out_dir, result, tracker, dist, fit_split, replicas
        )
    except BaseException:
        if tracker is not None:
            tracker.end("FAILED")
        raise
    finally:
        distributed.teardown(dist)
    tracker.end()
    return summary


def _finish(
    params: Params,
    split: SplitData,
    embed_dir: Path,
    out_dir: Path,
    result: TrainResult,
    tracker: Tracker,
    dist: distributed.Distributed,
    fit_split: SplitData,
    replicas: dict[int, TrainResult],
) -> dict[str, Any]:
    cfg = params.train
    model = result.model
    commit, data_hash = git_commit(), data_version()
    encoder_meta = json.loads((embed_dir / ENCODER_META).read_text())
    tracker.set_tags(
        {
            "git_commit": commit,
            "data_dvc_md5": data_hash,
            "encoder": str(encoder_meta.get("encoder")),
            "encoder_weights_sha256": str(encoder_meta.get("weights_sha256")),
            "device": str(model.params.device),
            "world_size": str(dist.world_size),
            "model": model.name,
        }
    )
    tracker.log_params({**cfg.model_dump(), "resolved": {"sequential": vars(model.params)}})
    baselines = train_baselines(split, cfg, tracker, fit_split=fit_split)
    best_row = next(r for r in result.history if r["epoch"] == result.best_epoch)
    # What decides the model goes in the DVC outputs; run facts that differ between
    # identical runs (ids, commit, timings) go to run.json and MLflow only, so that
    # repeating a run reproduces the same output hashes.
    training = {
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "stopped_early": result.stopped_early,
        "world_size": dist.world_size,
    }
    files: dict[str, Any] = {ENCODER_META: embed_dir / ENCODER_META, TRAINING_FILE: training}
    model_dir = out_dir / MODEL_DIR
    _save_with_ids(model, model_dir, split, **files)
    if model.text_tower is not None:
        model.text_tower.save_adapter(model_dir / "encoder_adapter")
    for name, (baseline, _, _) in baselines.items():
        _save_with_ids(baseline, out_dir / BASELINES_DIR / name, split)
    replica_names = {f"seed_{seed}": r for seed, r in replicas.items()}
    for name, replica in replica_names.items():
        _save_with_ids(replica.model, out_dir / REPLICAS_DIR / name, split)
    # Always written, so the DVC output exists (and is not an empty directory) without replicas.
    write_json(out_dir / REPLICAS_DIR / "seeds.json", {"seeds": sorted(replicas)})
    # Stale models from an earlier params set must not linger next to the new ones.
    _remove_stale(out_dir / BASELINES_DIR, set(baselines))
    _remove_stale(out_dir / REPLICAS_DIR, set(replica_names))
    val = {k.removeprefix("val_"): v for k, v in best_row.items() if k.startswith("val_")}
    metric = cfg.early_stopping.metric
    metrics = {
        "model": {"name": model.name, **training, "val": val},
        "replicas": {name: {f"val_{metric}": r.best_value} for name, r in replica_names.items()},
        "baselines": {
            name: {"val": {k: v for k, v in m.items() if k != "n_users"}}
            for name, (_, m, _) in baselines.items()
        },
    }
    write_json(out_dir / METRICS_FILE, json_safe(metrics))
    _write_history(out_dir / HISTORY_FILE, result.history)
    tracker.log_metrics(
        {"best_epoch": result.best_epoch, "train_seconds": result.seconds}
        | {f"best_val_{k}": v for k, v in val.items()}
    )
    tracker.log_artifact(out_dir / METRICS_FILE)
    tracker.log_artifact(out_dir / HISTORY_FILE)
    model_uri = tracker.log_model(model_dir) if cfg.mlflow.log_model else None
    run = {
        "mlflow_run_id": result.run_id,
        "mlflow_tracking_uri": tracker.uri,
        "mlflow_model_uri": model_uri,
        "git_commit": commit,
        "data_dvc_md5": data_hash,
        "resumed_from": result.resumed_from,
        "train_seconds": round(result.seconds, 2),
        "baseline_fit_seconds": {n: round(s, 3) for n, (_, _, s) in baselines.items()},
    }
    write_json(out_dir / RUN_FILE, run)
    return {
        "best epoch": result.best_epoch + 1,
        "epochs run": result.epochs_run,
        f"val {cfg.early_stopping.metric}": round(result.best_value or float("nan"), 4),
        "train seconds": round(result.seconds, 1),
        "MLflow run": result.run_id,
        "MLflow model": model_uri,
        **{
            f"baseline {n}": round(m[cfg.early_stopping.metric], 4)
            for n, (_, m, _) in baselines.items()
        },
    }


def _remove_stale(directory: Path, keep: set[str]) -> None:
    for old in directory.iterdir() if directory.is_dir() else []:
        if old.is_dir() and not old.name.startswith(".") and old.name not in keep:
            shutil.rmtree(old)
