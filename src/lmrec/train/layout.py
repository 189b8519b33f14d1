"""The artefact layout of the train and refit stages: file names, and the readers of
what one stage hands the next (the chosen epoch count, refit records).

``artifacts/train/`` (the train stage) and ``artifacts/refit/`` (the refit stage) share one
model directory layout, so ``load_model`` reads either:

    model/weights.safetensors, config.json   the model (``Recommender.save``)
    model/item_ids.json                      item index -> item id
    model/encoder.json                       the embed stage's record of the encoder
    model/training.json                      how it was trained (epochs, process count...)
    run.json                                 run facts that differ between identical runs
                                             (MLflow run and model, commit, seconds); not a
                                             DVC output, so repeated runs keep their hashes

The refit stage adds ``data/`` (every event as training data, in the split layout) and
``refit.json`` (what it trained on and which gated candidate it belongs to).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from lmrec.io import DataError, atomic_dir, write_json
from lmrec.models.base import Recommender

MODEL_DIR = "model"
ITEM_IDS_FILE = "item_ids.json"
TRAINING_FILE = "training.json"
RUN_FILE = "run.json"
REFIT_FILE = "refit.json"
REFIT_DATA_DIR = "data"


def read_json(path: Path, hint: str) -> dict[str, Any]:
    """A JSON file's object, or a ``DataError`` naming the file and what to run."""
    if not path.is_file():
        raise DataError(f"{path}: not found; {hint}")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: unreadable ({err}); {hint}") from err


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


def write_model_dir(
    model: Recommender, directory: Path, item_ids: list[str], files: dict[str, Any]
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
