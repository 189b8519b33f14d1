"""The web UI's trigger form lets lmrec_retrain run with its defaults.

Airflow 3's form holds a run back (the *Trigger* button stays disabled, the Params section
shows an error) while a Param whose JSON-schema type excludes null holds null or an empty
string; docs/airflow-trigger-form.png shows the form (cluster/screenshot.py).
"""

from __future__ import annotations

import json
import subprocess

from .conftest import AIRFLOW_PY, DAGS

PARAMS_SCRIPT = """
import json, sys
from airflow.models.dagbag import BundleDagBag
bag = BundleDagBag(dag_folder=sys.argv[1], bundle_path=sys.argv[1])
params = bag.dags["lmrec_retrain"].params
found = {k: params.get_param(k) for k in params.keys()}
print(json.dumps({k: {"schema": p.schema, "value": p.value} for k, p in found.items()}))
"""


def _required(schema: dict) -> bool:
    """The UI's rule: a type is set, and it is not a list naming null."""
    kind = schema.get("type")
    return bool(kind) and not (isinstance(kind, list) and "null" in kind)


def _retrain_params(env: dict[str, str]) -> dict:
    """lmrec_retrain's Params as the DAG processor parses them with ``env``."""
    done = subprocess.run(
        [str(AIRFLOW_PY), "-c", PARAMS_SCRIPT, str(DAGS)],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_no_required_param_starts_empty(airflow_env):
    params = _retrain_params(airflow_env)
    assert {"interactions", "items", "params_file", "epochs"} <= set(params)
    empty = [k for k, p in params.items() if _required(p["schema"]) and p["value"] in (None, "")]
    assert empty == [], f"the trigger form stays disabled until these are filled: {empty}"


def test_the_workspace_defaults_to_the_schedulers_lmrec_workspace(airflow_env, tmp_path):
    """The Airflow image sets $LMREC_WORKSPACE (the bind-mounted checkout); without it, the
    checkout the DAG files sit in."""
    for value, expected in ((str(tmp_path), str(tmp_path)), (None, str(DAGS.parent))):
        env = {k: v for k, v in airflow_env.items() if k != "LMREC_WORKSPACE"}
        if value is not None:
            env["LMREC_WORKSPACE"] = value
        assert _retrain_params(env)["workspace"]["value"] == expected
