"""Airflow runs in its own virtualenv (.venv-airflow), so these tests drive it as a
subprocess: a throwaway AIRFLOW_HOME per session, the repository's dags/ as the DAG
folder, and this interpreter's environment (.venv) as the one the tasks call."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
AIRFLOW_PY = REPO / ".venv-airflow" / "bin" / "python"
AIRFLOW = REPO / ".venv-airflow" / "bin" / "airflow"
DAGS = REPO / "dags"
HEAVY = ("torch", "transformers", "mlflow", "bentoml", "lmrec")

# Parse the DAG folder the way the DAG processor does (BundleDagBag puts the folder on
# sys.path, so the DAGs can import their helper module) and describe what it found.
DAGBAG_SCRIPT = """
import json, sys
from airflow.models.dagbag import BundleDagBag
bag = BundleDagBag(dag_folder=sys.argv[1], bundle_path=sys.argv[1])
heavy = sorted({m.split(".")[0] for m in sys.modules} & set(sys.argv[2].split(",")))
dags = {}
for dag in bag.dags.values():
    dags[dag.dag_id] = {
        "schedule": str(dag.timetable.summary),
        "max_active_runs": dag.max_active_runs,
        "params": sorted(dag.params.keys()),
        "order": [t.task_id for t in dag.topological_sort()],
        "tasks": {
            t.task_id: {
                "operator": type(t).__name__,
                "downstream": sorted(t.downstream_task_ids),
                "retries": t.retries,
                "timeout_s": t.execution_timeout.total_seconds() if t.execution_timeout else None,
                "queue": t.queue,
                "pool": t.pool,
                "on_failure_callback": bool(t.on_failure_callback),
                "is_setup": t.is_setup,
                "is_teardown": t.is_teardown,
                "trigger_rule": t.trigger_rule,  # a str enum: JSON writes its value
                "outlets": [{"name": a.name, "uri": a.uri} for a in t.outlets],
            }
            for t in dag.tasks
        },
    }
print(json.dumps({"import_errors": bag.import_errors, "heavy": heavy, "dags": dags}))
"""


def _need_airflow() -> None:
    if not AIRFLOW.exists():
        pytest.skip(".venv-airflow is missing (make setup builds it)")


@pytest.fixture(scope="session")
def airflow_env(tmp_path_factory) -> dict[str, str]:
    """Environment of every Airflow subprocess: a throwaway AIRFLOW_HOME, no examples."""
    _need_airflow()
    home = tmp_path_factory.mktemp("airflow-home")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update(
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__DAGS_FOLDER=str(DAGS),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__LOGGING__LOGGING_LEVEL="INFO",
        LMREC_VENV=str(Path(sys.executable).parent.parent),  # this .venv
        LMREC_AIRFLOW_RETRIES="1",
        LMREC_AIRFLOW_RETRY_DELAY_S="1",
    )
    return env


@pytest.fixture(scope="session")
def dagbag(airflow_env) -> dict:
    """What the DAG processor sees in dags/ (parsed in .venv-airflow)."""
    env = {**airflow_env}
    for key in ("LMREC_AIRFLOW_RETRIES", "LMREC_AIRFLOW_RETRY_DELAY_S"):
        env.pop(key)  # the shipped defaults
    done = subprocess.run(
        [str(AIRFLOW_PY), "-c", DAGBAG_SCRIPT, str(DAGS), ",".join(HEAVY)],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def airflow(env: dict[str, str], *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    """Run the Airflow CLI of .venv-airflow."""
    return subprocess.run(
        [str(AIRFLOW), *args], capture_output=True, text=True, env=env, timeout=timeout
    )


@pytest.fixture(scope="session")
def airflow_db(airflow_env) -> dict[str, str]:
    """A migrated metadata DB holding both DAGs (the monitor triggers lmrec_retrain)."""
    for args in (("db", "migrate"), ("dags", "reserialize")):
        done = airflow(airflow_env, *args)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return airflow_env
