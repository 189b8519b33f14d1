"""The pipeline (data stages, embed, train, evaluate, gate, refit, register, package) under
real DVC, on the tiny profile, with the real MLflow SQLite registry and BentoML store.

A throwaway workspace gets the project's dvc.yaml, the stage sources it lists as deps,
and profiles/tiny.yaml as its params.yaml; then `lmrec ingest --snapshot` and
`dvc repro` run exactly as a user would run them.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml

from lmrec.registry.store import Registry

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _run(cmd: list[str], cwd: Path, ok: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)
    if ok:
        assert done.returncode == 0, f"{' '.join(cmd)}\n{done.stdout}\n{done.stderr}"
    return done


def _lock_out(ws: Path, stage: str) -> str:
    """The content hash dvc.lock records for a stage's first output."""
    lock = yaml.safe_load((ws / "dvc.lock").read_text())
    return lock["stages"][stage]["outs"][0]["md5"]


@pytest.fixture()
def workspace(tmp_path, monkeypatch) -> Path:
    ws = tmp_path / "ws"
    ws.mkdir()
    monkeypatch.setenv("BENTOML_HOME", str(tmp_path / "bentoml"))  # the package stage's store
    shutil.copy(REPO / "dvc.yaml", ws / "dvc.yaml")
    shutil.copy(REPO / "bentofile.yaml", ws / "bentofile.yaml")
    shutil.copytree(REPO / "requirements", ws / "requirements")  # the Bento's pins
    shutil.copy(REPO / "profiles" / "tiny.yaml", ws / "params.yaml")
    shutil.copytree(REPO / "src", ws / "src", ignore=shutil.ignore_patterns("__pycache__"))
    _run(["git", "init", "-q"], ws)
    _run(["dvc", "init", "-q"], ws)
    return ws


def test_ingest_then_repro_then_noop(workspace):
    ingest = _run(["lmrec", "ingest", "--snapshot"], workspace)
    assert "synthetic" in ingest.stdout
    assert (workspace / "data.dvc").exists()
    first = _run(["dvc", "repro"], workspace)
    assert "Running stage 'validate'" in first.stdout
    assert "Running stage 'preprocess'" in first.stdout
    assert "validation passed" in first.stdout and "split written" in first.stdout
    assert "Running stage 'embed'" in first.stdout
    assert (workspace / "artifacts/embed/item_embeddings.safetensors").exists()
    embed_out = _lock_out(workspace, "embed")
    summary = json.loads((workspace / "artifacts/preprocess/summary.json").read_text())
    assert summary["train"] > 0 and summary["test"] == summary["users"]
    assert "Running stage 'train'" in first.stdout and "model written to" in first.stdout
    assert (workspace / "artifacts/train/model/weights.safetensors").exists()
    assert (workspace / "mlflow.db").exists()  # the default SQLite tracking store
    for stage in ("evaluate", "gate", "refit", "register"):
        assert f"Running stage '{stage}'" in first.stdout
    assert "gate passed" in first.stdout
    # The version serves the refit of the gated candidate on every event.
    refit = json.loads((workspace / "artifacts/refit/refit.json").read_text())
    gate = json.loads((workspace / "artifacts/gate/gate.json").read_text())
    assert refit["candidate_digest"] == gate["candidate_digest"]
    held_out = summary["val"] + summary["test"] + summary["cold_interactions"]
    assert refit["interactions"] == summary["train"] + held_out
    metrics = json.loads((workspace / "artifacts/evaluate/metrics.json").read_text())
    assert metrics["candidate"]["overall"]["ndcg@10"] > 0.3
    assert (workspace / "artifacts/evaluate/report.png").stat().st_size > 10_000
    record = json.loads((workspace / "artifacts/register/registration.json").read_text())
    assert record["version"] == 1 and record["aliases"] == ["champion"]
    assert record["refit_digest"] == refit["model_digest"]
    assert Registry(f"sqlite:///{workspace}/mlflow.db", "lmrec").alias("champion").number == 1
    assert "Running stage 'package'" in first.stdout
    packaged = json.loads((workspace / "artifacts/package/package.json").read_text())
    assert packaged["models"]["champion"]["version"] == 1 and packaged["bento"].startswith("lmrec:")
    assert packaged["models"]["champion"]["digest"] == refit["model_digest"]
    assert packaged["models"]["champion"]["n_users"] == refit["users"]
    train_out = _lock_out(workspace, "train")
    # Training is deterministic: forcing the stage again reproduces the same model hash.
    forced = _run(["dvc", "repro", "--force", "--single-item", "train"], workspace)
    assert "Running stage 'train'" in forced.stdout
    assert _lock_out(workspace, "train") == train_out
    # evaluate always runs: the champion lives in the MLflow registry, outside DVC. Now the
    # candidate is the champion, so its comparison changed and gate/register re-run; they
    # find the candidate already registered and promoted and change nothing.
    second = _run(["dvc", "repro"], workspace)
    assert (
        "Running stage 'evaluate'" in second.stdout and "Running stage 'train'" not in second.stdout
    )
    record = json.loads((workspace / "artifacts/register/registration.json").read_text())
    assert record["version"] == 1 and not record["created"] and not record["promoted"]
    # Nothing changed since: evaluate's outputs are identical, so gate and register skip.
    again = _run(["dvc", "repro"], workspace)
    assert "didn't change, skipping" in again.stdout
    assert again.stdout.count("Running stage") == 1
    assert "Running stage 'evaluate'" in again.stdout
    assert "Stage 'gate' didn't change" in again.stdout
    assert "Stage 'refit' didn't change" in again.stdout
    assert "Stage 'register' didn't change" in again.stdout
    assert "Stage 'package' didn't change" in again.stdout
    # A params change reruns only what depends on it.
    params = (workspace / "params.yaml").read_text()
    (workspace / "params.yaml").write_text(params.replace("tiebreak_seed: 42", "tiebreak_seed: 43"))
    third = _run(["dvc", "repro", "train"], workspace)
    assert "Stage 'validate' didn't change" in third.stdout
    assert "Running stage 'preprocess'" in third.stdout
    # items.parquet carries split columns (n_train), so a new tie-break changes its bytes and
    # The catalog text did not change, so the embeddings are not recomputed.
    assert "Stage 'embed' didn't change" in third.stdout
    assert _lock_out(workspace, "embed") == embed_out
    assert "Running stage 'train'" in third.stdout  # new split, new model
    # An encoder setting change dirties embed alone.
    params = (workspace / "params.yaml").read_text()
    (workspace / "params.yaml").write_text(params.replace("max_length: 128", "max_length: 64"))
    status = _run(["dvc", "status"], workspace).stdout
    assert "embed:" in status and "preprocess:" not in status
    # Where the run is filed is no training input: a new experiment name retrains nothing.
    params = (workspace / "params.yaml").read_text()
    (workspace / "params.yaml").write_text(params.replace("experiment: lmrec", "experiment: x"))
    status = _run(["dvc", "status"], workspace).stdout
    dirty = [line.strip() for line in status.splitlines()]
    assert "train:" not in dirty and "train.mlflow.experiment" not in status


def test_corrupted_data_stops_at_validate(workspace):
    _run(["lmrec", "ingest"], workspace)
    path = workspace / "data" / "interactions.parquet"
    df = pd.read_parquet(path)
    df.loc[df.index[:7], "timestamp"] = -100
    df.to_parquet(path, index=False)
    _run(["dvc", "add", "data"], workspace)
    failed = _run(["dvc", "repro"], workspace, ok=False)
    assert failed.returncode != 0
    output = failed.stdout + failed.stderr
    assert "data/interactions.parquet, column 'timestamp'" in output
    assert "7 of" in output
    assert not (workspace / "artifacts" / "validation" / "summary.json").exists()
    assert not (workspace / "artifacts" / "preprocess").exists()  # downstream never ran
    assert (workspace / "artifacts" / "validation" / "report.md").exists()
