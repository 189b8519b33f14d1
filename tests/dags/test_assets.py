"""Lineage: lmrec_retrain's snapshot and register tasks update Airflow Assets (the UI's
Assets view shows which run made each data snapshot and each registered model)."""

from __future__ import annotations

import json
import subprocess

from .conftest import AIRFLOW_PY, DAGS

DATA_SNAPSHOT = {"name": "lmrec_data_snapshot", "uri": "x-lmrec://workspace/data"}
REGISTERED_MODEL = {"name": "lmrec_registered_model", "uri": "x-lmrec://mlflow/registered-model"}

# What the scheduler keeps of the DAG (the UI and the asset tables read the serialised
# form): every task's outlets as they come back from it.
SERIALIZED_SCRIPT = """
import json, sys
from airflow.models.dagbag import BundleDagBag
from airflow.serialization.serialized_objects import SerializedDAG
bag = BundleDagBag(dag_folder=sys.argv[1], bundle_path=sys.argv[1])
dag = SerializedDAG.from_dict(SerializedDAG.to_dict(bag.dags["lmrec_retrain"]))
print(json.dumps({t.task_id: [{"name": a.name, "uri": a.uri} for a in t.outlets]
                  for t in dag.tasks}))
"""


def test_snapshot_and_register_carry_the_assets(dagbag):
    tasks = dagbag["dags"]["lmrec_retrain"]["tasks"]
    assert tasks["snapshot"]["outlets"] == [DATA_SNAPSHOT]
    assert tasks["register"]["outlets"] == [REGISTERED_MODEL]
    others = {name: t["outlets"] for name, t in tasks.items()}
    del others["snapshot"], others["register"]
    assert all(outlets == [] for outlets in others.values()), others
    # the monitor only reads: no task of it claims to produce data or models
    assert all(t["outlets"] == [] for t in dagbag["dags"]["lmrec_monitor"]["tasks"].values())


def test_assets_survive_serialisation(airflow_env):
    done = subprocess.run(
        [str(AIRFLOW_PY), "-c", SERIALIZED_SCRIPT, str(DAGS)],
        capture_output=True, text=True, env=airflow_env, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    outlets = json.loads(done.stdout.strip().splitlines()[-1])
    assert outlets["snapshot"] == [DATA_SNAPSHOT]
    assert outlets["register"] == [REGISTERED_MODEL]
