"""MLflow tracking for training runs: one run per ``lmrec train``, resumed with ``--resume``.

The store is SQLite by default (``sqlite:///mlflow.db`` in the working directory, artifacts
under ``mlruns/``); ``MLFLOW_TRACKING_URI`` in the environment overrides ``params.yaml``, so
pointing at a real tracking server is configuration only. Every run records:

- params: every key of the ``train`` block, flattened (``sequential.lr``...);
- tags: the git commit (``+dirty`` when the tree has changes), the ``data.dvc`` hash, the
  encoder and its weights digest, the device and the process count;
- metrics: per epoch (training loss, validation metrics, epoch seconds), then the summary;
- the model: an MLflow pyfunc "model from code" (``lmrec/train/pyfunc_model.py``, no
  pickle) whose artifact is the saved model directory (safetensors + config + id maps),
  with an input/output signature, the lmrec package's source (``code_paths``) and the
  pinned requirements of what that code imports, so ``mlflow.pyfunc.load_model`` works in
  a fresh environment made from the model's ``requirements.txt``.

A tracking server that is down fails a run within seconds, with a message naming it
(``HTTP_RETRY_DEFAULTS``): MLflow's own defaults retry each request for about four minutes.
The checkpoints are on local disk, so ``lmrec train --resume`` continues once it is back.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from lmrec.io import LmrecError
from lmrec.requirements import PYFUNC, installed_versions, pinned

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
#: MLflow's HTTP client settings that lmrec sets unless the environment does: MLflow's own
#: (7 retries, backoff factor 2, 120 s timeout) keep a command waiting ~4 minutes per request
#: on a server that is down; these give up after ~7 s (retries after 0, 2 and 4 s).
HTTP_RETRY_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}
PYFUNC_CODE = Path(__file__).with_name("pyfunc_model.py")
#: the lmrec package's source, shipped inside every logged model (``code_paths``)
PACKAGE_DIR = Path(__file__).resolve().parents[1]


def pyfunc_requirements() -> list[str]:
    """The pyfunc model's pip requirements: every distribution its code imports
    (``lmrec.requirements.PYFUNC``) at the version this (the training) environment has,
    which in ``.venv`` is the lock's; lmrec itself travels as code, not as a requirement."""
    return pinned(PYFUNC, installed_versions(PYFUNC), "this environment")


def tracking_uri(configured: str) -> str:
    """The tracking URI in effect: ``MLFLOW_TRACKING_URI`` wins over params."""
    return os.environ.get("MLFLOW_TRACKING_URI") or configured


def bound_http_retries() -> None:
    """Apply ``HTTP_RETRY_DEFAULTS`` where the environment sets no value of its own (called
    before a command's first MLflow request; MLflow reads them per request)."""
    for name, value in HTTP_RETRY_DEFAULTS.items():
        os.environ.setdefault(name, value)


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists become their string form."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value if isinstance(value, str | int | float | bool) else str(value)
    return out


def git_commit(root: str | Path = ".") -> str:
    """HEAD's commit, with ``+dirty`` when tracked files changed; "unknown" outside git."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{head}+dirty" if dirty else head


def data_version(dvc_file: str | Path = "data.dvc") -> str:
    """The hash ``data.dvc`` records for ``data/`` ("untracked" when there is none)."""
    path = Path(dvc_file)
    if not path.is_file():
        return "untracked"
    try:
        outs = yaml.safe_load(path.read_text())["outs"]
        return str(outs[0].get("md5") or outs[0].get("hash") or "unknown")
    except (yaml.YAMLError, KeyError, IndexError, TypeError) as err:
        raise LmrecError(f"{path}: cannot read the data hash: {err}") from err


class Tracker:
    """A thin wrapper over one MLflow run (created, or resumed by id)."""

    def __init__(
        self,
        uri: str,
        experiment: str,
        run_id: str | None = None,
        run_name: str | None = None,
        hint: str = "",
    ) -> None:
        """Start (or, with ``run_id``, resume) a run; ``hint`` ends the message of any later
        MLflow failure (what the user can do about it)."""
        import mlflow

        logging.getLogger("alembic").setLevel(logging.WARNING)
        bound_http_retries()
        self._mlflow = mlflow
        self.uri, self.hint = uri, hint
        mlflow.set_tracking_uri(uri)
        try:
            mlflow.set_experiment(experiment)
            self.run = mlflow.start_run(run_id=run_id, run_name=run_name)
        except Exception as err:  # MLflow raises many types for an unreachable/bad store
            raise LmrecError(f"MLflow at {uri!r}: cannot start a run: {err}") from err
        self.run_id: str = self.run.info.run_id

    @contextlib.contextmanager
    def _store(self, what: str) -> Iterator[None]:
        """Turn an MLflow failure (a server gone, a store unwritable) into an ``LmrecError``
        naming the store."""
        try:
            yield
        except Exception as err:  # MLflow raises many types for an unreachable/bad store
            hint = f"; {self.hint}" if self.hint else ""
            raise LmrecError(f"MLflow at {self.uri!r}: cannot {what}: {err}{hint}") from err

    def log_params(self, params: Mapping[str, Any]) -> None:
        flat = flatten(params)
        with self._store("log params"):
            existing = self._mlflow.get_run(self.run_id).data.params
            fresh = {k: v for k, v in flat.items() if k not in existing}  # resumed runs
            if fresh:
                self._mlflow.log_params(fresh)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        with self._store("set tags"):
            self._mlflow.set_tags(dict(tags))

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        clean = {_metric_name(k): float(v) for k, v in metrics.items() if _finite(v)}
        if clean:
            with self._store("log metrics"):
                self._mlflow.log_metrics(clean, step=step)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        with self._store(f"log {Path(path).name}"):
            self._mlflow.log_artifact(str(path), artifact_path)

    def log_model(self, model_dir: str | Path) -> str:
        """Log the saved model directory as a pyfunc model with a signature; return its URI."""
        import pandas as pd
        from mlflow.models import infer_signature

        example = pd.DataFrame({"history": [["item-a", "item-b"]]})
        output = pd.DataFrame({"item_ids": [["item-c"]], "scores": [[0.5]]})
        signature = infer_signature(example, output, params={"k": 10, "exclude_seen": True})
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        with warnings.catch_warnings():
            # An input example would make MLflow load and run the model at logging time;
            # the signature already documents the input.
            warnings.filterwarnings("ignore", message=".*An input example was not provided")
            with self._store("log the model"):
                info = self._mlflow.pyfunc.log_model(
                    name="model",
                    python_model=str(PYFUNC_CODE),
                    artifacts={"model": str(model_dir)},
                    signature=signature,
                    pip_requirements=pyfunc_requirements(),
                    code_paths=[str(PACKAGE_DIR)],
                )
        return info.model_uri

    def end(self, status: str = "FINISHED") -> None:
        """End the run. Ending a failed one is best effort: the store may be what failed, and
        the error that ended the run is the one to report."""
        if status == "FINISHED":
            with self._store("end the run"):
                self._mlflow.end_run(status=status)
            return
        try:
            self._mlflow.end_run(status=status)
        except Exception as err:  # noqa: BLE001 - reported, then the original error wins
            logging.getLogger(__name__).warning("MLflow at %r: run left open: %s", self.uri, err)


def _metric_name(key: str) -> str:
    return key.replace("@", "_at_")


def _finite(value: Any) -> bool:
    try:
        return float(value) == float(value) and abs(float(value)) != float("inf")
    except (TypeError, ValueError):
        return False
