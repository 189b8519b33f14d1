"""The artefact layout: every file one stage writes for another to read, and its format.

The one owner of artefact file names, readers and writers. Stages, serving and monitoring
read each other's outputs through this module, never by importing another stage; the
directories come in on the command line (``dvc.yaml`` is the one source of paths), the
names of the files inside them are here::

    artifacts/preprocess/   summary.json, item_text.parquet, ...   (features.dataset)
    artifacts/embed/        item_embeddings.safetensors            [n_items, dim] float32
                            encoder.json                           the encoder record
    artifacts/train/        model/ baselines/<name>/ replicas/<seed>/   model directories
                            metrics.json, history.csv, run.json
    artifacts/evaluate/     comparison.json (``Comparison``), metrics.json, report.png,
                            slices.csv, popularity_curve.csv
    artifacts/gate/         gate.json
    artifacts/refit/        model/, data/, refit.json, run.json
    artifacts/register/     registration.json
    artifacts/package/      package.json

A model directory (``write_model_dir``; ``lmrec.models.registry.load_model`` reads it)::

    weights.safetensors, config.json   the model (``Recommender.save``)
    item_ids.json                      item index -> item id
    encoder.json                       the embed stage's record of the encoder
    training.json                      how it was trained (epochs, process count...)

``run.json`` holds run facts that differ between identical runs (MLflow run and model,
commit, seconds); it is not a DVC output, so repeated runs keep their hashes.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from lmrec.io import DataError, atomic_dir, write_json

# preprocess (lmrec.features.dataset writes the split)
SPLIT_SUMMARY_FILE = "summary.json"
ITEM_TEXT_FILE = "item_text.parquet"
# embed
EMBEDDINGS_FILE = "item_embeddings.safetensors"
ENCODER_FILE = "encoder.json"
# a model directory, and the train / refit stage directories holding them
MODEL_DIR = "model"
BASELINES_DIR = "baselines"
REPLICAS_DIR = "replicas"
MODEL_CONFIG_FILE = "config.json"
ITEM_IDS_FILE = "item_ids.json"
TRAINING_FILE = "training.json"
RUN_FILE = "run.json"
HISTORY_FILE = "history.csv"
REFIT_FILE = "refit.json"
REFIT_DATA_DIR = "data"
# evaluate
METRICS_FILE = "metrics.json"
COMPARISON_FILE = "comparison.json"
REPORT_FILE = "report.png"
SLICES_FILE = "slices.csv"
CURVE_FILE = "popularity_curve.csv"
# gate, register, package; the monitor commands
GATE_FILE = "gate.json"
REGISTRATION_FILE = "registration.json"
PACKAGE_FILE = "package.json"
DRIFT_FILE = "drift.json"
ONLINE_FILE = "online.json"
ONLINE_PLOT = "online.png"

#: the key prefix of a baseline in ``comparison.json``'s ``models`` ("baseline:mf")
BASELINE_PREFIX = "baseline:"


def read_json(path: Path, hint: str) -> Any:
    """A JSON file's value, or a ``DataError`` naming the file and what to run."""
    if not path.is_file():
        raise DataError(f"{path}: not found; {hint}")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: unreadable ({err}); {hint}") from err


# -- embed -------------------------------------------------------------------------------


def write_embeddings(out_dir: Path, embeddings: np.ndarray, encoder: dict[str, Any]) -> None:
    """Write the embed directory atomically: the ``[n_items, dim]`` matrix and its record."""
    from safetensors.numpy import save_file

    with atomic_dir(out_dir) as tmp:
        save_file({"embeddings": np.ascontiguousarray(embeddings)}, str(tmp / EMBEDDINGS_FILE))
        write_json(tmp / ENCODER_FILE, encoder)


def load_embeddings(embed_dir: Path) -> tuple[np.ndarray, dict]:
    """The embed stage's ``[n_items, dim]`` matrix (row i: item index i) and encoder record."""
    from safetensors.numpy import load_file

    embed_dir = Path(embed_dir)
    path = embed_dir / EMBEDDINGS_FILE
    if not path.exists():
        raise DataError(f"{path}: file not found (run `lmrec embed` first)")
    meta = read_json(embed_dir / ENCODER_FILE, "run `lmrec embed` first")
    return load_file(str(path))["embeddings"], meta


# -- model directories -------------------------------------------------------------------


class SavesItself(Protocol):
    """What ``write_model_dir`` needs of a model (``lmrec.models.base.Recommender`` is one;
    named here so the bottom layer imports no model code, not even for type checking)."""

    def save(self, directory: Path) -> None: ...


def write_model_dir(
    model: SavesItself, directory: Path, item_ids: list[str], files: dict[str, Any]
) -> None:
    """Save ``model`` with its ``item_ids.json`` and extra files, atomically.

    Args:
        model: a fitted model.
        directory: the model directory to (re)write.
        item_ids: item id per item index.
        files: file name -> a ``Path`` to copy, or a JSON-able value to write.
    """
    with atomic_dir(directory) as tmp:
        model.save(tmp)
        write_json(tmp / ITEM_IDS_FILE, item_ids)
        for name, value in files.items():
            if isinstance(value, Path):
                shutil.copy(value, tmp / name)
            else:
                write_json(tmp / name, value)


def read_item_ids(model_dir: Path) -> list[str]:
    """The item id of each item index of a model directory (as strings)."""
    ids = read_json(Path(model_dir) / ITEM_IDS_FILE, "re-run the stage that wrote the model")
    if not isinstance(ids, list):
        raise DataError(f"{Path(model_dir) / ITEM_IDS_FILE}: not a list of item ids")
    return [str(i) for i in ids]


def item_index(item_ids: list[str]) -> dict[str, int]:
    """Item id -> item index (the inverse of ``read_item_ids``)."""
    return {item: i for i, item in enumerate(item_ids)}


def model_dirs(directory: Path) -> dict[str, Path]:
    """The model directories directly under ``directory`` (baselines/, replicas/), by name."""
    if not directory.is_dir():
        return {}
    return {p.name: p for p in sorted(directory.iterdir()) if (p / MODEL_CONFIG_FILE).is_file()}


def chosen_epochs(model_dir: Path) -> int:
    """The epoch count early stopping chose for a trained model: its best epoch, 1-based.

    Raises:
        DataError: ``training.json`` is missing or records no best epoch.
    """
    path = model_dir / TRAINING_FILE
    training = read_json(path, "re-run the train stage")
    best = training.get("best_epoch")
    if not isinstance(best, int) or best < 0:
        raise DataError(f"{path}: no best epoch recorded (best_epoch={best!r}); re-run train")
    return best + 1


# -- comparison.json ---------------------------------------------------------------------


class ChampionInfo(BaseModel):
    """Which registry version the ``champion`` entry evaluated."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: int
    digest: str | None = None
    is_candidate: bool = False
    registered_at: float | None = None
    unknown_items: int = 0


class ModelResults(BaseModel):
    """One model's protocol results (``lmrec.evaluation.protocol``) in ``comparison.json``.

    ``overall`` and each slice map metric names ("ndcg@10") to values; further protocol
    outputs (``sample``, ``served``, ...) are kept as they are.
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    overall: dict[str, Any]
    label: str = ""
    slices: dict[str, dict[str, Any]] = {}
    popularity_curve: list[float | None] = []
    served: dict[str, Any] = {}
    champion: ChampionInfo | None = None

    def as_dict(self) -> dict[str, Any]:
        """The entry as the JSON file holds it, no default added (what the gate reads)."""
        return self.model_dump(exclude_unset=True)


class Comparison(BaseModel):
    """``comparison.json``: every model the evaluate stage ran, on one split.

    ``models`` has ``candidate``, ``champion`` (when the registry had one) and one
    ``baseline:<name>`` per baseline; read them through ``candidate``, ``champion`` and
    ``baselines`` rather than by key.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    stage: str
    candidate_digest: str
    models: dict[str, ModelResults]
    catalog_popularity_curve: list[float | None] = []
    seeds: dict[str, Any] = {}

    @property
    def candidate(self) -> ModelResults:
        return self.models["candidate"]

    @property
    def champion(self) -> ModelResults | None:
        return self.models.get("champion")

    @property
    def baselines(self) -> dict[str, ModelResults]:
        """Baseline name ("mf") -> its results."""
        return {
            key.removeprefix(BASELINE_PREFIX): m
            for key, m in self.models.items()
            if key.startswith(BASELINE_PREFIX)
        }

    @classmethod
    def check(cls, value: dict[str, Any], where: str | Path = COMPARISON_FILE) -> Comparison:
        """``value`` as a ``Comparison``, or a ``DataError`` naming the first bad field."""
        try:
            comparison = cls.model_validate(value)
        except ValidationError as err:
            first = err.errors()[0]
            field = ".".join(str(p) for p in first["loc"])
            raise DataError(f"{where}: {field}: {first['msg']}") from err
        if "candidate" not in comparison.models:
            raise DataError(f"{where}: models: no 'candidate' entry")
        return comparison


def write_comparison(out_dir: Path, comparison: dict[str, Any]) -> None:
    """Check ``comparison`` against the schema, then write it (as given) to the directory."""
    Comparison.check(comparison, "the evaluation's comparison")
    write_json(out_dir / COMPARISON_FILE, comparison)


def read_comparison(eval_dir: Path) -> Comparison:
    """The evaluate stage's ``comparison.json`` in ``eval_dir``, checked."""
    path = Path(eval_dir) / COMPARISON_FILE
    return Comparison.check(read_json(path, "run the evaluate stage first"), path)
