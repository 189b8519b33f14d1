"""Shared fixtures: the project's environment on PATH, small synthetic data, params."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from lmrec.config import SyntheticParams, load_params
from lmrec.data import synthetic

REPO = Path(__file__).resolve().parents[1]

# Subprocesses (dvc repro running `lmrec ...`) must find this environment's executables.
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
os.environ.setdefault("GIT_AUTHOR_NAME", "lmrec-tests")
os.environ.setdefault("GIT_AUTHOR_EMAIL", "tests@lmrec.invalid")


@pytest.fixture(autouse=True)
def _mlflow_uri_left_as_found():
    """``mlflow.set_tracking_uri`` writes ``MLFLOW_TRACKING_URI`` into ``os.environ``: a test
    that calls it would point every later test of its worker (and their ``dvc repro`` or
    ``lmrec`` subprocesses) at its store. Restore the variable after each test."""
    saved = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    if saved is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = saved
    tracking = sys.modules.get("mlflow.tracking._tracking_service.utils")
    registry = sys.modules.get("mlflow.tracking._model_registry.utils")
    if tracking is not None:  # and MLflow's process-wide URIs (None: from the environment)
        tracking._tracking_uri = None
    if registry is not None:
        registry._registry_uri = None


@pytest.fixture(scope="session")
def tiny_params():
    """The committed tiny profile (small synthetic data)."""
    return load_params(REPO / "profiles" / "tiny.yaml")


@pytest.fixture(scope="session")
def synthetic_world():
    """A small synthetic data set and its planted truth (session-cached)."""
    return synthetic.generate(SyntheticParams(n_users=120, n_items=80, n_interactions=2400))


@pytest.fixture(scope="session")
def tiny_split_dir(tmp_path_factory, synthetic_world, tiny_params) -> Path:
    """The tiny profile's preprocess output (80 items), built once per test session."""
    from lmrec.stages import preprocess

    interactions, items, _ = synthetic_world
    root = tmp_path_factory.mktemp("tiny-split")
    interactions.to_parquet(root / "interactions.parquet", index=False)
    items.to_parquet(root / "items.parquet", index=False)
    out = root / "preprocess"
    preprocess.run(
        tiny_params.preprocess, root / "interactions.parquet", root / "items.parquet", out
    )
    return out


@pytest.fixture()
def contract_files(tmp_path, synthetic_world) -> tuple[Path, Path]:
    """The synthetic tables written as contract parquet files in a temp dir."""
    interactions, items, _ = synthetic_world
    paths = tmp_path / "interactions.parquet", tmp_path / "items.parquet"
    interactions.to_parquet(paths[0], index=False)
    items.to_parquet(paths[1], index=False)
    return paths
