"""Refit stage: the gated recipe trained on every event; the model register and package serve.

The gate judges a candidate trained on the split. A production model must learn from the
newest events and know every item, so once the gate has passed that candidate this stage
trains the same recipe (the ``train`` block: seed, hyperparameters) on everything — each
user's validation and test events and the cold-holdout items' events included — for
exactly the epoch count early stopping chose for the candidate (``training.json``'s best
epoch). The candidate stays what evaluation, the gate's latency check and the drift
monitor use.

Reads the gate's verdict (refuses unless it passed the model in ``<train>/model``: exit 4
on a refusal, exit 2 for a stale verdict), the contract interactions (cleaned, k-core
filtered and ordered exactly as preprocess does, ``features.split.all_events``, with no
holdout), the split's item table (the embeddings' item index) and the embeddings. Writes,
each atomically:

- ``<out>/data/``: every event as training data, in the split layout (``load_split``):
  known users' full histories and each item's interaction count, for the serving bundle;
- ``<out>/model/``: the refit model in the train stage's layout (``load_model`` reads it;
  ``training.json`` records the epochs and the candidate it was refit from);
- ``<out>/refit.json``: the candidate's and the refit model's digests, epochs, interactions,
  users, items (register checks it belongs to the gated candidate);
- ``<out>/run.json``: the refit's MLflow run and model, the candidate's run, commit,
  seconds; not a DVC output, so repeated runs keep the same output hashes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lmrec.artifacts import ENCODER_FILE as ENCODER_META
from lmrec.artifacts import (
    ITEM_IDS_FILE,
    MODEL_DIR,
    REFIT_DATA_DIR,
    REFIT_FILE,
    RUN_FILE,
    TRAINING_FILE,
    chosen_epochs,
    load_embeddings,
    read_item_ids,
    read_json,
    write_model_dir,
)
from lmrec.config import Params
from lmrec.features import split as splitting
from lmrec.features.dataset import SplitData, load_split, write_all_events
from lmrec.io import DataError, LmrecError, read_table, write_json
from lmrec.registry.gate import require_pass
from lmrec.registry.store import model_digest
from lmrec.train import distributed
from lmrec.train.refit import RefitResult, refit_sequential
from lmrec.train.tracking import Tracker, data_version, git_commit, tracking_uri


@dataclass(frozen=True)
class RefitInputs:
    """What the refit reads (every path comes from the command line)."""

    interactions: Path  #: the contract interactions (data/interactions.parquet)
    split_dir: Path  #: the preprocess split (its item table is the embeddings' index)
    embed_dir: Path  #: the embed stage's output
    train_dir: Path  #: the train stage's output (the candidate, its chosen epochs)
    gate_file: Path  #: the gate stage's verdict (artifacts/gate/gate.json)


def _candidate(inputs: RefitInputs, split: SplitData) -> tuple[str, int]:
    """The gated candidate's digest and chosen epoch count, after checking the verdict."""
    model_dir = inputs.train_dir / MODEL_DIR
    digest = model_digest(model_dir)
    verdict = read_json(inputs.gate_file, "run the gate stage first")
    require_pass(verdict, digest, inputs.gate_file, model_dir)
    if read_item_ids(model_dir) != split.items["item_id"].astype(str).tolist():
        ids_file = model_dir / ITEM_IDS_FILE
        raise DataError(f"{ids_file}: trained on another catalog than {inputs.split_dir}")
    return digest, chosen_epochs(model_dir)


def _write_data(params: Params, inputs: RefitInputs, split: SplitData, out: Path) -> SplitData:
    """Every event (preprocess's cleaning, k-core and order; no holdout) -> ``out``."""
    log = read_table(inputs.interactions)
    cfg = params.preprocess
    events, counts = splitting.all_events(log, split.items["item_id"].astype(str), cfg)
    summary = {
        **{k: int(v) for k, v in counts.items()},
        "interactions": len(events),
        "users": int(events["user_id"].nunique()),
        "items": split.n_items,
        "items_in_train": int(events["item_id"].nunique()),
        "tiebreak_seed": cfg.tiebreak_seed,
    }
    write_all_events(out, events, split.items, summary)
    return load_split(out)


def run(params: Params, inputs: RefitInputs, out_dir: Path, *, progress: bool = True) -> dict:
    """Refit the gated candidate's recipe on every event; write the outputs; log a run.

    Raises:
        GateRefused: the gate refused the candidate (exit code 4).
        DataError: a stale verdict, another catalog, or embeddings of another catalog.
        LmrecError: started under torchrun (the refit is one process).
    """
    if distributed.from_environment().enabled:
        raise LmrecError("lmrec refit runs as one process: start it without torchrun")
    cfg = params.train
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    split = load_split(inputs.split_dir)
    digest, epochs = _candidate(inputs, split)
    data = _write_data(params, inputs, split, out_dir / REFIT_DATA_DIR)
    embeddings, encoder_meta = load_embeddings(inputs.embed_dir)
    if len(embeddings) != data.n_items:
        raise DataError(
            f"{inputs.embed_dir}: {len(embeddings)} item embeddings for {data.n_items} items; "
            "re-run the embed stage"
        )
    finetune = cfg.sequential.encoder_finetune != "frozen"
    tracker = Tracker(tracking_uri(cfg.mlflow.tracking_uri), cfg.mlflow.experiment, None, "refit")
    try:
        result = refit_sequential(
            data,
            embeddings,
            cfg,
            epochs,
            tracker=tracker,
            item_texts=data.item_texts() if finetune else None,
            encoder=encoder_meta.get("encoder"),
            progress=progress,
        )
        record = _write_model(inputs, out_dir, data, digest, result)
        facts = _track(params, inputs, out_dir, record, result, tracker)
    except BaseException:
        tracker.end("FAILED")
        raise
    tracker.end()
    return _summary(record, facts, result)


def _write_model(
    inputs: RefitInputs, out_dir: Path, data: SplitData, candidate: str, result: RefitResult
) -> dict[str, Any]:
    """Write ``model/`` and ``refit.json``; return the record."""
    model, model_dir = result.model, out_dir / MODEL_DIR
    training = {"epochs_run": result.epochs, "refit_of": candidate, "world_size": 1}
    files = {ENCODER_META: inputs.embed_dir / ENCODER_META, TRAINING_FILE: training}
    write_model_dir(model, model_dir, data.items["item_id"].astype(str).tolist(), files)
    if model.text_tower is not None:
        model.text_tower.save_adapter(model_dir / "encoder_adapter")
    record = {
        "candidate_digest": candidate,
        "model_digest": model_digest(model_dir),
        "epochs": result.epochs,
        "interactions": data.summary["interactions"],
        "users": data.n_users,
        "items": data.n_items,
        "items_trained": data.summary["items_in_train"],
    }
    write_json(out_dir / REFIT_FILE, record)
    return record


def _track(
    params: Params,
    inputs: RefitInputs,
    out_dir: Path,
    record: dict,
    result: RefitResult,
    tracker: Tracker,
) -> dict[str, Any]:
    """Log the refit's tags, params, metrics and model to MLflow; write ``run.json``."""
    cfg, model = params.train, result.model
    candidate_run = _candidate_run(inputs.train_dir)
    commit, data_hash = git_commit(), data_version()
    encoder = json.loads((inputs.embed_dir / ENCODER_META).read_text()).get("encoder")
    tags = {"lmrec.stage": "refit", "candidate_digest": record["candidate_digest"]}
    tags |= {"candidate_run_id": str(candidate_run), "git_commit": commit}
    tags |= {"data_dvc_md5": data_hash, "encoder": str(encoder), "model": model.name}
    tracker.set_tags({**tags, "device": str(model.params.device)})
    tracker.log_params({**cfg.model_dump(), "refit": {"epochs": result.epochs}})
    tracker.log_metrics({"refit_seconds": result.seconds, "interactions": record["interactions"]})
    tracker.log_artifact(out_dir / REFIT_FILE)
    model_uri = tracker.log_model(out_dir / MODEL_DIR) if cfg.mlflow.log_model else None
    facts = {
        "mlflow_run_id": tracker.run_id,
        "mlflow_tracking_uri": tracker.uri,
        "mlflow_model_uri": model_uri,
        "model_digest": record["model_digest"],
        "candidate_run_id": candidate_run,
        "git_commit": commit,
        "data_dvc_md5": data_hash,
        "refit_seconds": round(result.seconds, 2),
    }
    write_json(out_dir / RUN_FILE, facts)
    return facts


def _summary(record: dict, facts: dict, result: RefitResult) -> dict[str, Any]:
    return {
        "epochs": result.epochs,
        "interactions": record["interactions"],
        "users": record["users"],
        "items trained": f"{record['items_trained']} of {record['items']}",
        "final loss": round(result.losses[-1], 4),
        "refit seconds": round(result.seconds, 1),
        "MLflow run": facts["mlflow_run_id"],
        "MLflow model": facts["mlflow_model_uri"],
    }


def _candidate_run(train_dir: Path) -> str | None:
    """The candidate's MLflow run id (``run.json``), or None when it is not there."""
    path = train_dir / RUN_FILE
    return json.loads(path.read_text()).get("mlflow_run_id") if path.is_file() else None
