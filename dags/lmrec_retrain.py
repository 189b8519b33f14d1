"""lmrec_retrain: the DVC pipeline as an Airflow DAG, one stage per task.

Each task runs one stage with the package's own tools (``lmrec`` / ``dvc`` from the
``.venv`` named by the Airflow Variable ``lmrec_venv`` or ``$LMREC_VENV``) in the run's
workspace: ``dvc repro --single-item <stage>``, so DVC skips a stage whose inputs did not
change and records what ran in ``dvc.lock``. Nothing from lmrec is imported here: parsing
stays free of torch, MLflow and BentoML.

configure (setup) -> snapshot -> validate -> preprocess -> embed -> train -> evaluate
-> gate -> gate_passed (short-circuit) -> refit -> register -> package -> deploy
-> restore_params (teardown).

- ``gate`` exits 0 whether the candidate passed or was refused (exit 4 of ``lmrec gate``
  is a verdict, not a crash) and returns the verdict; ``gate_passed`` logs the reasons
  from ``gate.json`` and, on a refusal, skips refit, register, package and deploy: the run
  ends green with the champion untouched.
- ``refit`` trains the served model: the gated recipe on every event (no holdout) for the
  epoch count early stopping chose for the candidate; register versions it.
- ``train`` and ``refit`` run on the ``$LMREC_TRAIN_QUEUE`` queue (default ``gpu``:
  Celery/Kubernetes executors route them to GPU workers; the local executor ignores queues)
  in the pool ``$LMREC_TRAIN_POOL`` (default ``default_pool``, which always exists).
- ``snapshot`` and ``register`` update the Assets ``lmrec_data_snapshot`` and
  ``lmrec_registered_model`` (their outlets), so the UI shows where data and models come from.
- One run at a time (``max_active_runs=1``): every run writes the same workspace.
- Param overrides (``params_file``, ``epochs``, ``encoder_finetune``, ``overrides``) are
  written into the workspace's ``params.yaml`` by ``configure`` for this run only;
  ``restore_params`` puts the original back even when a task failed.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

from _lmrec_common import (
    DEFAULT_WORKDIRS,
    DEFAULT_WORKSPACE,
    PROLOGUE,
    START,
    WORKDIRS,
    default_args,
    run_branch,
    task_env,
)
from airflow.sdk import Asset, Param, chain, dag, get_current_context, setup, task, teardown

SOURCES = ["", "movielens-100k", "csv", "parquet", "synthetic", "feedback"]
TRAIN_QUEUE = os.environ.get("LMREC_TRAIN_QUEUE", "gpu")
TRAIN_POOL = os.environ.get("LMREC_TRAIN_POOL", "default_pool")
BACKUP = "artifacts/airflow/params.yaml.orig"
#: $LMREC_RETRAIN_SCHEDULE (seen by the DAG processor): a cron preset or expression, or
#: "none" for runs triggered only (a test cluster: unpausing must not start a scheduled run).
SCHEDULE = os.environ.get("LMREC_RETRAIN_SCHEDULE", "@weekly")
SCHEDULE = None if SCHEDULE.lower() == "none" else SCHEDULE

SNAPSHOT_SH = """args=(--params params.yaml --snapshot)
[ -n "$SOURCE" ] && args+=(--source "$SOURCE")
[ -n "$INTERACTIONS" ] && args+=(--interactions "$INTERACTIONS")
[ -n "$ITEMS" ] && args+=(--items "$ITEMS")
[ -n "$(dvc config core.remote 2>/dev/null || true)" ] && args+=(--push)
lmrec ingest "${args[@]}"
lmrec_task_commit snapshot
awk '$1 == "-" && $2 == "md5:" {print $3; exit}' data.dvc
"""

# The gate task (dags/gate.sh): `dvc repro gate`, then the verdict.
GATE_SH = (Path(__file__).resolve().parent / "gate.sh").read_text()

# Local deploy (dags/deploy.sh): the running service loads the new champion beside the
# one it serves and swaps it in (POST /admin/reload), so no request is dropped; a package
# it cannot load is refused and the task fails with the old model still served. Behind a
# load balancer, a rolling update of the Bento image (Kubernetes, maxUnavailable 0) is the
# path for a new image (dags/README.md).
DEPLOY_SH = (Path(__file__).resolve().parent / "deploy.sh").read_text()


GATE_JSON = "artifacts/gate/gate.json"

#: Lineage (the UI's Assets view, and the DAG graph's asset nodes): snapshot updates the data
#: snapshot (``data/``, hashed in data.dvc), register the registered model (a version in the
#: MLflow registry), each time the task succeeds. ``x-`` schemes are user-defined: Airflow
#: neither normalises nor hands them to a provider. Not ``file://``: the workspace is a run
#: Param, unknown when the DAG is parsed, and with per-task workdirs data moves by DVC remote.
DATA_SNAPSHOT = Asset(name="lmrec_data_snapshot", uri="x-lmrec://workspace/data")
REGISTERED_MODEL = Asset(name="lmrec_registered_model", uri="x-lmrec://mlflow/registered-model")


def _git(repo, *args: str) -> str:
    import subprocess

    done = subprocess.run(
        ["git", "-c", "user.name=lmrec", "-c", "user.email=lmrec@localhost", *args],
        cwd=repo, capture_output=True, text=True,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} in {repo}: {done.stderr.strip()}")
    return done.stdout


def _start_run_branch(ws, branch: str, params_text: str | None) -> None:
    """The run's branch in the workspace repository, from its checked-out commit, with
    this run's params.yaml committed on it (workdirs per-task: dags/task_workdir.sh)."""
    import tempfile
    from pathlib import Path

    head = _git(ws, "rev-parse", "HEAD").strip()  # fails clearly when ws is no git repo
    with tempfile.TemporaryDirectory(prefix="lmrec-configure-") as tmp:
        _git(tmp, "clone", "-q", "--no-checkout", str(ws), "clone")
        clone = Path(tmp) / "clone"
        _git(clone, "checkout", "-q", "-b", branch, head)
        if params_text is not None:
            (clone / "params.yaml").write_text(params_text)
            _git(clone, "add", "params.yaml")
            _git(clone, "commit", "-q", "-m", f"{branch}: this run's params")
        _git(clone, "push", "-q", "origin", f"HEAD:refs/heads/{branch}")


def _merge(base: dict, update: dict) -> dict:
    """``base`` with ``update`` merged in, nested blocks key by key."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


@dag(
    dag_id="lmrec_retrain",
    schedule=SCHEDULE,
    start_date=START,
    catchup=False,
    max_active_runs=1,
    default_args=default_args(),
    tags=["lmrec"],
    params={
        "workspace": Param(DEFAULT_WORKSPACE, type="string", description="checkout to run in"),
        "source": Param("", enum=SOURCES, description="ingest source ('': ingest.source)"),
        # optional strings are nullable: the web UI's trigger form holds back a run while a
        # field of a non-null type is empty (and sends null for a field cleared by hand)
        "interactions": Param(
            "", type=["null", "string"], description="csv/parquet: interactions file"
        ),
        "items": Param("", type=["null", "string"], description="csv/parquet: items file"),
        "params_file": Param("", type=["null", "string"], description="params file for this run"),
        "epochs": Param(None, type=["null", "integer"], minimum=1, description="train epochs"),
        "encoder_finetune": Param(None, enum=[None, "frozen", "lora", "full"]),
        "overrides": Param({}, type="object", description="params.yaml blocks to override"),
        "force": Param(False, type="boolean", description="rerun stages even if unchanged"),
        "serve_port": Param(3000, type="integer", description="port of the local service"),
        "workdirs": Param(
            DEFAULT_WORKDIRS,
            enum=list(WORKDIRS),
            description="shared: every task in the workspace; per-task: each task in a fresh "
            "clone of the run's git branch, artefacts through the DVC remote (any worker)",
        ),
    },
)
def lmrec_retrain():
    """Retrain, gate, refit, register, package and deploy the lmrec recommender
    (dags/README.md)."""
    env = task_env(
        LMREC_FORCE="{{ '--force' if params.force else '' }}",
        LMREC_WORKDIRS="{{ params.workdirs }}",
    )
    bash = {"append_env": True, "cwd": "{{ params.workspace }}"}

    @setup
    @task
    def configure() -> dict:
        """Write this run's Param overrides into the workspace params.yaml (original kept);
        with ``workdirs: per-task``, commit them on the run's new branch instead."""
        from pathlib import Path

        import yaml

        context = get_current_context()
        p = context["params"]
        ws = Path(p["workspace"])
        params, backup = ws / "params.yaml", ws / BACKUP
        if backup.exists():  # a previous run died before its teardown
            backup.replace(params)
        update = dict(p["overrides"] or {})
        sequential = {"epochs": p["epochs"], "encoder_finetune": p["encoder_finetune"]}
        sequential = {k: v for k, v in sequential.items() if v is not None}
        if sequential:
            update = _merge(update, {"train": {"sequential": sequential}})
        base_file = ws / p["params_file"] if p["params_file"] else params
        text = None
        if update or base_file != params:
            base = yaml.safe_load(base_file.read_text()) or {}
            text = yaml.safe_dump(_merge(base, update), sort_keys=False)
        if p["workdirs"] == "per-task":
            _start_run_branch(ws, run_branch(context["run_id"]), text)
            return update
        if text is None:
            return {}
        backup.parent.mkdir(parents=True, exist_ok=True)
        params.replace(backup)
        params.write_text(text)
        return update

    @task.bash(
        env={
            **env,
            "SOURCE": "{{ params.source }}",
            "INTERACTIONS": "{{ params['interactions'] or '' }}",
            "ITEMS": "{{ params['items'] or '' }}",  # not params.items: that is dict.items
        },
        outlets=[DATA_SNAPSHOT],
        **bash,
    )
    def snapshot() -> str:
        """Ingest the source, `dvc add data` (push when a remote is set); return the hash."""
        return PROLOGUE + SNAPSHOT_SH

    def stage(name: str, **kwargs):
        @task.bash(task_id=name, env=env, **bash, **kwargs)
        def run_stage() -> str:
            repro = f"dvc repro $LMREC_PULL --single-item $LMREC_FORCE {name}\n"
            return PROLOGUE + f"lmrec_task_pull {name}\n" + repro + f"lmrec_task_end {name}\n"

        run_stage.__doc__ = f"`dvc repro --single-item {name}` in the workspace."
        return run_stage()

    @task.bash(env=env, **bash)
    def gate() -> str:
        """Run the gate stage; print `passed` or `refused` last (exit 4 is a verdict)."""
        return PROLOGUE + GATE_SH

    @task.short_circuit
    def gate_passed(verdict: str) -> bool:
        """Log the gate's reasons; on a refusal skip everything downstream (run stays green)."""
        import json
        import logging
        from pathlib import Path

        context = get_current_context()
        ws = Path(context["params"]["workspace"])
        if context["params"]["workdirs"] == "per-task":  # the gate task committed it
            report = json.loads(_git(ws, "show", f"{run_branch(context['run_id'])}:{GATE_JSON}"))
        else:
            report = json.loads((ws / GATE_JSON).read_text())
        log = logging.getLogger("lmrec.gate")
        for check in report.get("checks", []):
            log.info("%s  %s", check["status"].upper(), check["reason"])
        log.info("gate verdict: %s", verdict)
        return verdict == "passed"

    @task.bash(env={**env, "PORT": "{{ params.serve_port }}"}, **bash)
    def deploy() -> str:
        """Swap the new champion into the local service when one runs (no restart, no
        dropped request); return the Bento tag."""
        return PROLOGUE + DEPLOY_SH

    @teardown
    @task
    def restore_params() -> None:
        """Put the workspace's own params.yaml back (runs even when a task failed)."""
        from pathlib import Path

        ws = Path(get_current_context()["params"]["workspace"])
        if (ws / BACKUP).exists():
            (ws / BACKUP).replace(ws / "params.yaml")

    conf, restore, verdict = configure(), restore_params(), gate()
    gpu = {"queue": TRAIN_QUEUE, "pool": TRAIN_POOL, "execution_timeout": timedelta(hours=12)}
    chain(
        conf,
        snapshot(),
        stage("validate"),
        stage("preprocess"),
        stage("embed", execution_timeout=timedelta(hours=3)),
        stage("train", **gpu),
        stage("evaluate", execution_timeout=timedelta(hours=2)),
        verdict,
        gate_passed(verdict),
        stage("refit", **gpu),
        stage("register", outlets=[REGISTERED_MODEL]),
        stage("package"),
        deploy(),
        restore,
    )
    conf >> restore  # the teardown belongs to the setup: it runs whatever happened between


lmrec_retrain()
