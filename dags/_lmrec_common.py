"""Helpers shared by the lmrec DAGs: defaults, the task environment, the failure record.

Standard library only: the Airflow scheduler imports this on every parse, so nothing from
lmrec (torch, MLflow, BentoML) and no I/O at import time. Everything a task needs at run
time reaches it through environment variables rendered from the run's Params.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

#: The repository these DAGs ship in: the default workspace.
REPO = Path(__file__).resolve().parents[1]
#: The package virtualenv whose `lmrec` and `dvc` the tasks run; $LMREC_VENV (seen by the
#: scheduler) sets the default, the Airflow Variable `lmrec_venv` overrides it per deployment.
DEFAULT_VENV = os.environ.get("LMREC_VENV") or str(REPO / ".venv")
START = datetime(2025, 1, 1, tzinfo=UTC)
FAILURES_FILE = "artifacts/airflow_failures.jsonl"

#: Shell prologue of every bash task: strict mode, the package venv first on PATH, and the
#: workspace as the working directory (also set as the task's cwd).
PROLOGUE = """set -euo pipefail
export PATH="$LMREC_VENV/bin:$PATH"
cd "$LMREC_WORKSPACE"
"""


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
    workspace = Path(params.get("workspace") or REPO)
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
