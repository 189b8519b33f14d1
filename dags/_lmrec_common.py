"""Helpers shared by the lmrec DAGs: defaults, the task environment, the failure record.

Standard library only: the Airflow scheduler imports this on every parse, so nothing from
lmrec (torch, MLflow, BentoML) and no I/O at import time but reading task_workdir.sh beside
it. Everything a task needs at run time reaches it through environment variables rendered
from the run's Params.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

#: The repository these DAGs ship in.
REPO = Path(__file__).resolve().parents[1]
#: The runs' default workspace (the ``workspace`` Param): $LMREC_WORKSPACE as the scheduler
#: sees it (the Airflow image sets /opt/lmrec/workspace), else the checkout above dags/.
DEFAULT_WORKSPACE = os.environ.get("LMREC_WORKSPACE") or str(REPO)
#: The package virtualenv whose `lmrec` and `dvc` the tasks run; $LMREC_VENV (seen by the
#: scheduler) sets the default, the Airflow Variable `lmrec_venv` overrides it per deployment.
DEFAULT_VENV = os.environ.get("LMREC_VENV") or str(REPO / ".venv")
START = datetime(2025, 1, 1, tzinfo=UTC)
FAILURES_FILE = "artifacts/airflow_failures.jsonl"

#: Shell prologue of every bash task: strict mode, the package venv first on PATH, and the
#: workspace as the working directory (also set as the task's cwd) or, with the run's
#: ``workdirs: per-task``, a fresh clone of the run's branch (dags/task_workdir.sh).
PROLOGUE = (
    """set -euo pipefail
export PATH="$LMREC_VENV/bin:$PATH"
cd "$LMREC_WORKSPACE"
"""
    + (Path(__file__).resolve().parent / "task_workdir.sh").read_text()
    + "lmrec_task_begin\n"
)
#: Where each task runs: the shared workspace (one machine, or a shared volume) or a fresh
#: per-task clone with artefacts moving through the DVC remote ($LMREC_TASK_WORKDIRS sets
#: the Param's default).
WORKDIRS = ("shared", "per-task")
DEFAULT_WORKDIRS = os.environ.get("LMREC_TASK_WORKDIRS") or "shared"


def run_branch(run_id: str) -> str:
    """The git branch of a per-task run (as ``lmrec_run_branch`` in task_workdir.sh)."""
    return "lmrec-run/" + "".join(c if c.isalnum() or c in "._-" else "-" for c in run_id)


def task_env(**extra: str) -> dict[str, str]:
    """The environment of a bash task (appended to the worker's): templated from Params."""
    return {
        "LMREC_WORKSPACE": "{{ params.workspace }}",
        "LMREC_VENV": "{{ var.value.get('lmrec_venv', '" + DEFAULT_VENV + "') }}",
        **extra,
    }


def record_failure(context) -> None:
    """on_failure_callback: append what failed to ``<workspace>/artifacts/airflow_failures.jsonl``.

    One JSON object per line (dag_id, task_id, run_id, try_number, exception, time), so a
    failed scheduled run leaves a record next to the artifacts it was building.
    """
    ti = context["ti"]
    params = context.get("params") or {}
    workspace = Path(params.get("workspace") or DEFAULT_WORKSPACE)
    record = {
        "time": datetime.now(UTC).isoformat(),
        "dag_id": ti.dag_id,
        "task_id": ti.task_id,
        "run_id": ti.run_id,
        "try_number": ti.try_number,
        "exception": repr(context.get("exception")) if context.get("exception") else None,
    }
    path = workspace / FAILURES_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")


def default_args() -> dict:
    """Task defaults: retries with a delay, a timeout, the failure record.

    ``LMREC_AIRFLOW_RETRIES`` / ``LMREC_AIRFLOW_RETRY_DELAY_S`` (read when the scheduler
    parses the DAG) change the retry policy, e.g. for tests.
    """
    return {
        "owner": "lmrec",
        "retries": int(os.environ.get("LMREC_AIRFLOW_RETRIES", "2")),
        "retry_delay": timedelta(
            seconds=float(os.environ.get("LMREC_AIRFLOW_RETRY_DELAY_S", "120"))
        ),
        "execution_timeout": timedelta(hours=1),
        "on_failure_callback": record_failure,
    }
