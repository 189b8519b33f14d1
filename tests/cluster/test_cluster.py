"""The distributed path, run for real on this machine (cluster/cluster.py): PostgreSQL,
Redis, an S3-compatible DVC remote, an MLflow tracking server and Airflow 3 with the
CeleryExecutor and two workers (queues ``default`` and ``gpu``).

A run is triggered the way the web UI triggers one (``POST /api/v2/dags/lmrec_retrain/
dagRuns`` with Params), with ``workdirs: per-task``: every task runs in a fresh clone of
the run's git branch and moves artefacts only through the DVC remote, so the workspace
itself never gets an artefact.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pandas as pd
import pytest

from lmrec.registry.store import Registry

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
RELAXED = {"gate": {"latency": {"p95_ms": 10000.0}}}  # the machine's load, not the DAG
SALT = "cluster-test-salt"
RUN_TIMEOUT_S = 2400


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "cluster" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


cluster_lib = _load("cluster")
api_lib = _load("airflow_api")


def _git(ws: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=ws, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, (args, done.stderr)
    return done.stdout


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if not (REPO / ".venv-airflow" / "bin" / "airflow").exists():
        pytest.skip(".venv-airflow is missing (make setup builds it)")
    home = tmp_path_factory.mktemp("cluster")
    task_env = {
        "LMREC_AIRFLOW_RETRIES": "2",
        "LMREC_AIRFLOW_RETRY_DELAY_S": "5",
        "LMREC_TASK_WORKDIRS": "per-task",
        "LMREC_RETRAIN_SCHEDULE": "none",  # unpausing starts no scheduled run
        "LMREC_USER_ID_SALT": SALT,
    }
    started = time.monotonic()
    state = cluster_lib.up(home, task_env=task_env)
    state["start_s"] = round(time.monotonic() - started, 1)
    print(f"cluster up in {state['start_s']} s")
    yield state
    cluster_lib.down(home)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """A git checkout with the tiny profile as params.yaml (what a deployment clones)."""
    ws = tmp_path_factory.mktemp("cluster-ws") / "ws"
    ws.mkdir()
    for name in ("dvc.yaml", "bentofile.yaml"):
        shutil.copy(REPO / name, ws / name)
    shutil.copytree(REPO / "requirements", ws / "requirements")
    shutil.copy(REPO / "profiles" / "tiny.yaml", ws / "params.yaml")
    shutil.copytree(REPO / "src", ws / "src", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / ".gitignore", ws / ".gitignore")
    _git(ws, "init", "-q", "-b", "main")
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=ws, check=True)
    _git(ws, "add", "-A")
    _git(ws, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "checkout")
    return ws


@pytest.fixture(scope="module")
def api(cluster):
    client = api_lib.AirflowAPI(cluster["urls"]["airflow"], "admin", cluster["password"])
    client.wait_for_dag("lmrec_retrain")
    client.unpause("lmrec_retrain")
    return client


def _branch(run_id: str) -> str:
    """The run's git branch (dags/task_workdir.sh: lmrec_run_branch)."""
    return "lmrec-run/" + "".join(c if c.isalnum() or c in "._-" else "-" for c in run_id)


def _run(api, conf: dict) -> tuple[dict, dict, float]:
    started = time.monotonic()
    run_id = api.trigger("lmrec_retrain", conf)
    run = api.wait("lmrec_retrain", run_id, RUN_TIMEOUT_S)
    return run, api.tasks("lmrec_retrain", run_id), time.monotonic() - started


@pytest.fixture(scope="module")
def first_run(api, workspace):
    conf = {"workspace": str(workspace), "overrides": RELAXED, "workdirs": "per-task"}
    run, tasks, seconds = _run(api, conf)
    print(f"first run: {run['state']} in {seconds:.0f} s")
    for task_id, ti in tasks.items():
        print(
            f"  {task_id:15s} {ti['state']:10s} {ti.get('hostname') or '':14s} {ti.get('duration')}"
        )
    return run, tasks


def test_a_rest_triggered_run_trains_on_the_gpu_worker_and_registers_in_the_server(
    cluster, workspace, first_run
):
    run, tasks = first_run
    assert run["state"] == "success", {t: ti["state"] for t, ti in tasks.items()}
    assert run["conf"]["workdirs"] == "per-task"
    for task_id, ti in tasks.items():
        if ti["state"] != "success":
            continue
        worker = "gpu@lmrec" if task_id in ("train", "refit") else "default@lmrec"
        assert ti["hostname"] == worker, (task_id, ti["hostname"])
    assert tasks["train"]["queue"] == "gpu" and tasks["train"]["state"] == "success"
    champion = Registry(cluster["urls"]["mlflow"], "lmrec").alias("champion")
    assert champion is not None and champion.number == 1
    # the run's record: its branch holds the lock of every stage and the uncached outputs
    branch = _branch(run["dag_run_id"])
    lock = _git(workspace, "show", f"{branch}:dvc.lock")
    for stage in ("validate", "preprocess", "embed", "train", "evaluate", "gate", "refit"):
        assert f"\n  {stage}:" in lock, stage
    packaged = json.loads(_git(workspace, "show", f"{branch}:artifacts/package/package.json"))
    assert packaged["models"]["champion"]["version"] == 1
    # nothing ran in the workspace: every artefact went through the DVC remote
    assert not (workspace / "artifacts").exists() and not (workspace / "data").exists()
    s3 = boto3.client(
        "s3", endpoint_url=cluster["urls"]["s3"], region_name="us-east-1",
        aws_access_key_id="lmrec", aws_secret_access_key="lmrec",
    )  # fmt: skip
    stored = s3.list_objects_v2(Bucket="lmrec", Prefix="dvc/").get("KeyCount", 0)
    assert stored > 10, stored


def test_a_corrupted_snapshot_stops_at_validate_and_the_champion_stays(
    cluster, api, workspace, first_run, tmp_path
):
    subprocess.run(
        [str(Path(sys.executable).parent / "lmrec"), "ingest", "--params", "params.yaml",
         "--out", str(tmp_path)],
        cwd=workspace, check=True, capture_output=True,
    )  # fmt: skip
    df = pd.read_parquet(tmp_path / "interactions.parquet")
    df.loc[df.index[:7], "timestamp"] = -100
    df.to_parquet(tmp_path / "interactions.parquet", index=False)
    conf = {
        "workspace": str(workspace),
        "source": "parquet",
        "interactions": str(tmp_path / "interactions.parquet"),
        "items": str(tmp_path / "items.parquet"),
        "overrides": RELAXED,
        "workdirs": "per-task",
    }
    run, tasks, _ = _run(api, conf)
    assert run["state"] == "failed"
    assert tasks["snapshot"]["state"] == "success" and tasks["validate"]["state"] == "failed"
    assert tasks["train"]["state"] == "upstream_failed"
    champion = Registry(cluster["urls"]["mlflow"], "lmrec").alias("champion")
    assert champion.number == 1


def test_the_shell_gets_the_cluster_env(cluster):
    env = cluster_lib.shell_env(Path(cluster["home"]))
    assert f"export MLFLOW_TRACKING_URI={cluster['urls']['mlflow']}" in env.splitlines()
    assert os.path.isfile(Path(cluster["home"]) / "cluster.json")


def _lock_md5(workspace: Path, branch: str, stage: str, out: str) -> str:
    import yaml

    lock = yaml.safe_load(_git(workspace, "show", f"{branch}:dvc.lock"))
    return next(o["md5"] for o in lock["stages"][stage]["outs"] if o["path"] == out)


def test_a_worker_killed_mid_train_is_restarted_and_the_retry_gives_the_same_model(
    cluster, api, workspace, first_run
):
    """SIGKILL the gpu worker (its whole process group: the task runner and the fit) while
    ``train`` runs; the fixture starts a new one, Airflow fails the orphaned try after the
    heartbeat timeout and retries it; the model is the uninterrupted run's, bit for bit."""
    home = Path(cluster["home"])
    conf = {"workspace": str(workspace), "overrides": RELAXED, "workdirs": "per-task"}
    run_id = api.trigger("lmrec_retrain", {**conf, "force": True})  # train really reruns
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while api.tasks("lmrec_retrain", run_id).get("train", {}).get("state") != "running":
        assert time.monotonic() < deadline, "train never started"
        time.sleep(2)
    time.sleep(5)  # into the fit
    killed = cluster_lib.read_state(home)["pids"]["worker-gpu"]
    os.killpg(killed, 9)
    restarted = cluster_lib.restart_worker(home, "gpu")
    assert restarted != killed
    run = api.wait("lmrec_retrain", run_id, RUN_TIMEOUT_S)
    tasks = api.tasks("lmrec_retrain", run_id)
    assert run["state"] == "success", {t: ti["state"] for t, ti in tasks.items()}
    assert tasks["train"]["try_number"] >= 2  # the killed try, then the retry
    first = first_run[0]["dag_run_id"]
    out = "artifacts/train/model"
    assert _lock_md5(workspace, _branch(run_id), "train", out) == _lock_md5(
        workspace, _branch(first), "train", out
    )
