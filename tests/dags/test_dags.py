"""The Airflow DAGs: they parse cleanly and lightly, have the expected shape, and run the
tiny-profile pipeline end to end under `airflow dags test` (success, a validation
failure, a gate refusal), and the monitor triggers a retrain on drift only."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lmrec.features.dataset import load_split
from lmrec.registry.store import Registry
from lmrec.serving.feedback import FeedbackEvent, FeedbackStore

from .conftest import REPO, airflow

RETRAIN = [
    "configure", "snapshot", "validate", "preprocess", "embed", "train", "evaluate", "gate",
    "gate_passed", "refit", "register", "package", "deploy", "restore_params",
]  # fmt: skip
AFTER_GATE = ["refit", "register", "package", "deploy"]
# The gate's latency budget (p95 in the tiny profile) is about this machine's load,
# not the DAG: the shared 2-core CI box can miss it, so every run here relaxes it.
RELAXED = {"gate": {"latency": {"p95_ms": 10000.0}}}


def test_dagbag_loads_without_errors(dagbag):
    assert dagbag["import_errors"] == {}
    assert set(dagbag["dags"]) == {"lmrec_retrain", "lmrec_monitor"}


def test_parsing_imports_nothing_heavy(dagbag):
    assert dagbag["heavy"] == []


def test_retrain_structure(dagbag):
    dag = dagbag["dags"]["lmrec_retrain"]
    tasks = dag["tasks"]
    assert dag["order"] == RETRAIN
    for upstream, downstream in zip(RETRAIN[:-2], RETRAIN[1:-1], strict=True):
        assert downstream in tasks[upstream]["downstream"], (upstream, downstream)
    assert tasks["configure"]["is_setup"] and tasks["restore_params"]["is_teardown"]
    assert "restore_params" in tasks["configure"]["downstream"]
    for gpu_task in ("train", "refit"):  # the two fits go to GPU workers
        assert tasks[gpu_task]["queue"] == "gpu", gpu_task
        assert tasks[gpu_task]["pool"] == "default_pool"  # exists everywhere; dags/README.md
    assert tasks["gate_passed"]["downstream"] == ["refit"]
    assert tasks["refit"]["downstream"] == ["register"]
    assert tasks["gate_passed"]["operator"] == "_ShortCircuitDecoratedOperator"
    assert tasks["validate"]["operator"] == "_BashDecoratedOperator"
    assert dag["max_active_runs"] == 1
    assert {"workspace", "source", "epochs", "encoder_finetune", "force"} <= set(dag["params"])


def test_monitor_structure(dagbag):
    tasks = dagbag["dags"]["lmrec_monitor"]["tasks"]
    order = dagbag["dags"]["lmrec_monitor"]["order"]
    assert [t for t in order if t != "online_report"] == ["drift", "drifted", "trigger_retrain"]
    # after the drift check (both hold the pipeline lock), whatever its outcome
    assert tasks["drift"]["downstream"] == ["drifted", "online_report"]
    assert tasks["online_report"]["downstream"] == []
    assert tasks["online_report"]["trigger_rule"] == "all_done"
    assert tasks["drifted"]["downstream"] == ["trigger_retrain"]
    assert tasks["trigger_retrain"]["operator"] == "TriggerDagRunOperator"


def test_every_task_retries_times_out_and_records_failures(dagbag):
    for dag_id, dag in dagbag["dags"].items():
        for task_id, task in dag["tasks"].items():
            assert task["retries"] >= 1, (dag_id, task_id)
            assert task["timeout_s"] and task["timeout_s"] > 0, (dag_id, task_id)
            assert task["on_failure_callback"], (dag_id, task_id)
    for fit in ("train", "refit"):
        assert dagbag["dags"]["lmrec_retrain"]["tasks"][fit]["timeout_s"] >= 3600


# --- end to end under `airflow dags test` (tiny profile) ------------------------------


def _run(cmd: list[str], cwd: Path) -> None:
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{cmd}\n{done.stdout}\n{done.stderr}"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """A throwaway checkout: dvc.yaml, the sources, the tiny profile as params.yaml."""
    ws = tmp_path_factory.mktemp("dag-ws") / "ws"
    ws.mkdir()
    shutil.copy(REPO / "dvc.yaml", ws / "dvc.yaml")
    shutil.copy(REPO / "bentofile.yaml", ws / "bentofile.yaml")
    shutil.copytree(REPO / "requirements", ws / "requirements")  # the Bento's pins
    shutil.copy(REPO / "profiles" / "tiny.yaml", ws / "params.yaml")
    shutil.copytree(REPO / "src", ws / "src", ignore=shutil.ignore_patterns("__pycache__"))
    _run(["git", "init", "-q"], ws)
    _run(["dvc", "init", "-q"], ws)
    return ws


@pytest.fixture(scope="module")
def env(airflow_db, workspace) -> dict[str, str]:
    return {
        **airflow_db,
        "MLFLOW_TRACKING_URI": f"sqlite:///{workspace}/mlflow.db",
        "BENTOML_HOME": str(workspace.parent / "bentoml"),
    }


def _dags_test(env: dict[str, str], dag_id: str, conf: dict) -> dict:
    """`airflow dags test` one run; return its state and its task states."""
    done = airflow(env, "dags", "test", dag_id, "-c", json.dumps(conf))
    db = sqlite3.connect(Path(env["AIRFLOW_HOME"]) / "airflow.db")
    try:
        run_id, state = db.execute(
            "SELECT run_id, state FROM dag_run WHERE dag_id = ? ORDER BY id DESC LIMIT 1",
            (dag_id,),
        ).fetchone()
        tasks = dict(
            db.execute(
                "SELECT task_id, state FROM task_instance WHERE dag_id = ? AND run_id = ?",
                (dag_id, run_id),
            ).fetchall()
        )
    finally:
        db.close()
    return {"state": state, "tasks": tasks, "output": done.stdout[-6000:] + done.stderr[-6000:]}


def _champion(ws: Path) -> int | None:
    found = Registry(f"sqlite:///{ws}/mlflow.db", "lmrec").alias("champion")
    return None if found is None else found.number


@pytest.fixture(scope="module")
def first_run(env, workspace) -> dict:
    return _dags_test(env, "lmrec_retrain", {"workspace": str(workspace), "overrides": RELAXED})


@pytest.mark.slow
def test_retrain_end_to_end(first_run, workspace):
    assert first_run["state"] == "success", first_run["output"]
    assert all(first_run["tasks"][t] == "success" for t in RETRAIN), first_run["tasks"]
    assert _champion(workspace) == 1
    packaged = json.loads((workspace / "artifacts/package/package.json").read_text())
    assert packaged["models"]["champion"]["version"] == 1
    # The champion serves the refit of the gated candidate.
    refit = json.loads((workspace / "artifacts/refit/refit.json").read_text())
    gate = json.loads((workspace / "artifacts/gate/gate.json").read_text())
    assert refit["candidate_digest"] == gate["candidate_digest"]
    champion = Registry(f"sqlite:///{workspace}/mlflow.db", "lmrec").alias("champion")
    assert champion.served_digest == refit["model_digest"] != champion.digest
    assert (workspace / "data.dvc").exists()
    assert not (workspace / "artifacts/airflow_failures.jsonl").exists()
    # the run's params override is undone: the workspace has the profile's params again
    assert (workspace / "params.yaml").read_text() == (REPO / "profiles/tiny.yaml").read_text()


@pytest.mark.slow
def test_corrupted_data_stops_at_validate(first_run, env, workspace, tmp_path):
    _run(["lmrec", "ingest", "--out", str(tmp_path)], workspace)
    df = pd.read_parquet(tmp_path / "interactions.parquet")
    df.loc[df.index[:7], "timestamp"] = -100
    df.to_parquet(tmp_path / "interactions.parquet", index=False)
    conf = {
        "workspace": str(workspace),
        "source": "parquet",
        "interactions": str(tmp_path / "interactions.parquet"),
        "items": str(tmp_path / "items.parquet"),
        "overrides": RELAXED,
    }
    run = _dags_test(env, "lmrec_retrain", conf)
    assert run["state"] == "failed", run["output"]
    assert run["tasks"]["snapshot"] == "success" and run["tasks"]["validate"] == "failed"
    for task in RETRAIN[RETRAIN.index("preprocess") : -1]:
        assert run["tasks"][task] == "upstream_failed", (task, run["tasks"])
    assert run["tasks"]["restore_params"] == "success"  # the teardown still ran
    assert _champion(workspace) == 1
    failures = (workspace / "artifacts/airflow_failures.jsonl").read_text().splitlines()
    record = json.loads(failures[-1])
    assert record["dag_id"] == "lmrec_retrain" and record["task_id"] == "validate"
    assert record["try_number"] == 2  # retried once (LMREC_AIRFLOW_RETRIES=1), then failed


@pytest.mark.slow
def test_worse_candidate_stops_at_gate(first_run, env, workspace):
    params_before = (workspace / "params.yaml").read_text()
    conf = {
        "workspace": str(workspace),
        "epochs": 1,
        "overrides": {**RELAXED, "train": {"data_fraction": 0.05}},
    }
    run = _dags_test(env, "lmrec_retrain", conf)
    assert run["state"] == "success", run["output"]
    assert run["tasks"]["gate"] == "success" and run["tasks"]["gate_passed"] == "success"
    assert all(run["tasks"][t] == "skipped" for t in AFTER_GATE), run["tasks"]
    gate = json.loads((workspace / "artifacts/gate/gate.json").read_text())
    assert gate["passed"] is False
    assert any(c["status"] == "fail" and "champion" in c["reason"] for c in gate["checks"])
    assert _champion(workspace) == 1
    # The overrides were for this run only.
    assert (workspace / "params.yaml").read_text() == params_before


def _feedback(db: Path, users: list[str], items: list[str]) -> Path:
    now = time.time()
    with FeedbackStore(db) as store:
        store.append_many(
            FeedbackEvent(u, i, "click", timestamp=now - 60)
            for u, i in zip(users, items, strict=True)
        )
    return db


def _retrain_runs(env: dict[str, str]) -> int:
    db = sqlite3.connect(Path(env["AIRFLOW_HOME"]) / "airflow.db")
    try:
        query = "SELECT COUNT(*) FROM dag_run WHERE dag_id = 'lmrec_retrain'"
        return db.execute(query).fetchone()[0]
    finally:
        db.close()


@pytest.mark.slow
def test_monitor_triggers_retrain_only_on_drift(first_run, env, workspace, tmp_path):
    split = load_split(workspace / "artifacts/preprocess")
    rng = np.random.default_rng(0)
    weights = split.items["n_train"].to_numpy(dtype=float)
    # Undrifted: the synthetic source's own users (raw ids) on the training distribution.
    users = [f"user{i:05d}" for i in rng.integers(0, split.n_users, 300)]
    items = rng.choice(split.items["item_id"], 300, p=weights / weights.sum()).tolist()
    calm = _feedback(tmp_path / "calm.db", users, items)
    before = _retrain_runs(env)
    run = _dags_test(env, "lmrec_monitor", {"workspace": str(workspace), "feedback": str(calm)})
    assert run["state"] == "success", run["output"]
    assert run["tasks"] == {
        "drift": "success",
        "drifted": "success",
        "trigger_retrain": "skipped",
        "online_report": "success",  # no answer served yet: an empty report
    }
    assert _retrain_runs(env) == before
    # Drifted: unknown users on items the model never trained on.
    cold = split.items.loc[split.items["n_train"] == 0, "item_id"].tolist()
    strangers = [f"stranger{i}" for i in range(300)]
    moved = _feedback(tmp_path / "moved.db", strangers, rng.choice(cold, 300).tolist())
    run = _dags_test(env, "lmrec_monitor", {"workspace": str(workspace), "feedback": str(moved)})
    assert run["state"] == "success", run["output"]
    assert run["tasks"]["trigger_retrain"] == "success", run["output"]
    assert _retrain_runs(env) == before + 1
    report = json.loads((workspace / "artifacts/monitor/drift.json").read_text())
    assert report["drifted"] and report["exit_code"] == 5
