"""The distributed path, run for real on this machine (cluster/cluster.py): PostgreSQL,
Redis, an S3-compatible DVC remote, an MLflow server, Airflow 3 with the CeleryExecutor and
two workers (queues ``default`` and ``gpu``), and the lmrec service from the champion's
Bento in a virtualenv of the Bento's own requirements.

The cluster is started, the first run triggered and the service started by the commands
of README.md's "Orchestration and scaling out" block, read from the README and run as
written (tests/cluster/scaling_out.py) in a checkout with the tiny profile as params.yaml;
its last step (``make cluster-down``) is the teardown. The run is triggered the way the
web UI triggers one (``POST /api/v2/dags/lmrec_retrain/dagRuns`` with Params), with
``workdirs: per-task``: every task runs in a fresh clone of the run's git branch and moves
artefacts only through the DVC remote, so the workspace itself never gets an artefact.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import boto3
import pandas as pd
import psutil
import pytest
import yaml

from lmrec.registry.store import Registry

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
RELAXED = {"gate": {"latency": {"p95_ms": 10000.0}}}  # the machine's load, not the DAG
SALT = "cluster-test-salt"
RUN_TIMEOUT_S = 2400
#: the README block up to the service: cluster start, one run, the venv (built once), serve
README_TIMEOUT_S = 3600
#: what the test's shell sets before the README's commands (the cluster records them)
KNOBS = {
    "LMREC_AIRFLOW_RETRIES": "2",
    "LMREC_AIRFLOW_RETRY_DELAY_S": "5",
    "LMREC_TASK_WORKDIRS": "per-task",
    "LMREC_RETRAIN_SCHEDULE": "none",  # unpausing starts no scheduled run
    "LMREC_USER_ID_SALT": SALT,
}
GIT_USER = {
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@t",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@t",
}


def _load(name: str, folder: str = "cluster"):
    spec = importlib.util.spec_from_file_location(name, REPO / folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


cluster_lib = _load("cluster")
api_lib = _load("airflow_api")
scaling_out = _load("scaling_out", "tests/cluster")


def _git(ws: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=ws, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, (args, done.stderr)
    return done.stdout


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """A git checkout (what a deployment clones) with the Makefile, cluster/ and dags/ the
    README's commands use and the repository's environments; the tiny profile, relaxed, as
    an uncommitted params.yaml (the README's ``git commit -qam`` commits it)."""
    if not (REPO / ".venv-airflow" / "bin" / "airflow").exists():
        pytest.skip(".venv-airflow is missing (make setup builds it)")
    ws = tmp_path_factory.mktemp("cluster-ws") / "ws"
    ws.mkdir()
    for name in ("dvc.yaml", "bentofile.yaml", "Makefile", "pyproject.toml", ".gitignore"):
        shutil.copy2(REPO / name, ws / name)  # mtimes kept: make sees the same setup state
    skip = shutil.ignore_patterns("__pycache__")
    for name in ("requirements", "src", "cluster", "dags"):
        shutil.copytree(REPO / name, ws / name, ignore=skip)
    shutil.copy(REPO / "profiles" / "tiny.yaml", ws / "params.yaml")
    for venv in (".venv", ".venv-airflow"):
        (ws / venv).symlink_to(REPO / venv)
    # `make cluster-up` makes `setup` first: it must find both environments up to date (a
    # stale one would be reinstalled through these links, editable install included)
    stale = subprocess.run(["make", "-q", "setup"], cwd=ws, capture_output=True)
    if stale.returncode != 0:
        pytest.fail("the environments are older than their lock files: run `make setup`")
    _git(ws, "init", "-q", "-b", "main")
    (ws / ".git" / "info" / "exclude").write_text("/.venv\n/.venv-airflow\n")
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=ws, check=True)
    _git(ws, "add", "-A")
    _git(ws, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "checkout")
    tiny = yaml.safe_load((ws / "params.yaml").read_text())
    tiny["gate"]["latency"] = {**tiny["gate"]["latency"], **RELAXED["gate"]["latency"]}
    (ws / "params.yaml").write_text(yaml.safe_dump(tiny, sort_keys=False))
    return ws


def _bash(script: str, ws: Path, log: Path, timeout_s: float) -> int:
    env = {**os.environ, **KNOBS, **GIT_USER}
    with log.open("a") as out:
        done = subprocess.run(
            ["bash", "-c", script], cwd=ws, env=env, stdout=out, stderr=subprocess.STDOUT,
            timeout=timeout_s,
        )  # fmt: skip
    return done.returncode


@pytest.fixture(scope="module")
def readme(workspace, tmp_path_factory):
    """The README block's steps but the last, run in one shell in the workspace; at the
    end its last step, ``make cluster-down``. Each step's output and seconds."""
    commands = scaling_out.steps(REPO / "README.md")
    session, down = commands[:-1], commands[-1]
    assert down.split("#")[0].strip() == "make cluster-down", down
    log = tmp_path_factory.mktemp("readme") / "readme.log"
    started = time.monotonic()
    try:
        rc = _bash(scaling_out.script(session), workspace, log, README_TIMEOUT_S)
        texts, seconds = scaling_out.outputs(log.read_text())
        assert rc == 0, f"the README's steps failed (rc {rc}):\n{log.read_text()[-6000:]}"
        for index, command in enumerate(session):
            print(f"[readme] {seconds.get(index, 0):7.1f} s  {command.splitlines()[0][:70]}")
        print(f"[readme] {time.monotonic() - started:7.1f} s  in all (up to the service)")
        yield {"commands": commands, "texts": texts, "seconds": seconds}
    finally:
        _bash(down, workspace, log, 300)
        home = workspace / ".cluster"
        if (home / "cluster.json").is_file():
            cluster_lib.down(home)  # what a failed step may have left behind


def _step(readme: dict, needle: str) -> int:
    return next(i for i, c in enumerate(readme["commands"]) if needle in c)


@pytest.fixture(scope="module")
def cluster(workspace, readme):
    state = cluster_lib.read_state(workspace / ".cluster")
    print(f"cluster up in {state['start_seconds']} s; service {state.get('service')}")
    return state


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


def _served_version(cluster: dict) -> str:
    """The model version the cluster's service answers ``/recommend`` with."""
    body = json.dumps({"user_id": "someone", "k": 3}).encode()
    request = urllib.request.Request(
        f"{cluster['urls']['service']}/recommend", body, {"content-type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.load(answer)["model_version"]


@pytest.fixture(scope="module")
def first_run(api, readme):
    """The run the README's trigger step started (and waited for)."""
    trigger = readme["texts"][_step(readme, "airflow_api.py trigger")]
    run_id = next(ln.split()[-1] for ln in trigger.splitlines() if ln.startswith("triggered "))
    run, tasks = api.run("lmrec_retrain", run_id), api.tasks("lmrec_retrain", run_id)
    seconds = readme["seconds"][_step(readme, "airflow_api.py trigger")]
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


def test_the_service_serves_the_new_champion_from_the_bentos_own_environment(
    cluster, readme, first_run
):
    champion = Registry(cluster["urls"]["mlflow"], "lmrec").alias("champion")
    service = cluster["service"]
    assert service["bento"].startswith("lmrec:")
    # the README's own request printed the champion's version
    answer = json.loads(readme["texts"][_step(readme, "/recommend")].strip().splitlines()[-1])
    assert answer["model_version"] == str(champion.number) == service["model_version"]
    assert answer["items"] and _served_version(cluster) == str(champion.number)
    # `bentoml serve` and its workers run the fresh virtualenv's interpreter, not .venv's
    leader = cluster["pids"]["service"]
    pids = [leader, *cluster_lib._descendants(leader)]
    interpreters = {psutil.Process(p).cmdline()[0] for p in pids}
    assert all(i.startswith(service["venv"] + "/") for i in interpreters), interpreters
    requirements = (Path(service["venv"]) / "requirements.txt").read_text()
    assert "lmrec" not in {ln.split("==")[0] for ln in requirements.splitlines()}
    seconds = readme["seconds"][_step(readme, "make cluster-serve")]
    print(f"service: {service} (make cluster-serve: {seconds:.1f} s)")


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
        "workdirs": "per-task",
    }
    run, tasks, _ = _run(api, conf)
    assert run["state"] == "failed"
    assert tasks["snapshot"]["state"] == "success" and tasks["validate"]["state"] == "failed"
    assert tasks["train"]["state"] == "upstream_failed"
    champion = Registry(cluster["urls"]["mlflow"], "lmrec").alias("champion")
    assert champion.number == 1
    assert _served_version(cluster) == "1"


def test_the_shell_gets_the_cluster_env(cluster):
    env = cluster_lib.shell_env(Path(cluster["home"]))
    assert f"export MLFLOW_TRACKING_URI={cluster['urls']['mlflow']}" in env.splitlines()
    assert f"export LMREC_SERVE_URL={cluster['urls']['service']}" in env.splitlines()
    assert os.path.isfile(Path(cluster["home"]) / "cluster.json")


def _lock_md5(workspace: Path, branch: str, stage: str, out: str) -> str:
    lock = yaml.safe_load(_git(workspace, "show", f"{branch}:dvc.lock"))
    return next(o["md5"] for o in lock["stages"][stage]["outs"] if o["path"] == out)


def test_a_worker_killed_mid_train_is_restarted_and_the_retry_gives_the_same_model(
    cluster, api, workspace, first_run
):
    """SIGKILL the gpu worker (its whole process group: the task runner and the fit) while
    ``train`` runs; the fixture starts a new one, Airflow fails the orphaned try after the
    heartbeat timeout and retries it; the model is the uninterrupted run's, bit for bit.
    Its deploy task reaches the running service (``$LMREC_SERVE_URL``, POST /admin/reload)."""
    home = Path(cluster["home"])
    conf = {"workspace": str(workspace), "workdirs": "per-task"}
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
    deploy = api.log("lmrec_retrain", run_id, "deploy", tasks["deploy"]["try_number"])
    assert f"service on {cluster['urls']['service']} serves champion v1" in deploy, deploy[-2000:]
    assert _served_version(cluster) == "1"
