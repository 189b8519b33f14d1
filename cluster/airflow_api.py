"""Airflow's REST API, as the web UI uses it: log in, unpause, trigger a DAG run with Params
(``conf``), wait for it, read its task instances. Standard library only.

    python cluster/airflow_api.py trigger lmrec_retrain '{"workspace": "/path"}' [--wait]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
FINISHED = {"success", "failed"}


class AirflowAPI:
    """A logged-in client of one Airflow api-server."""

    def __init__(self, url: str, username: str, password: str) -> None:
        self.url = url.rstrip("/")
        body = {"username": username, "password": password}
        self.token = self._call("POST", "/auth/token", body, auth=False)["access_token"]

    @classmethod
    def of_cluster(cls, home: Path) -> AirflowAPI:
        state = json.loads((home / "cluster.json").read_text())
        return cls(state["urls"]["airflow"], "admin", state["password"])

    def _call(self, method: str, path: str, body: Any = None, auth: bool = True) -> Any:
        headers = {"content-type": "application/json"}
        if auth:
            headers["Authorization"] = f"Bearer {self.token}"
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data, headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=60) as answer:
                text = answer.read()
        except urllib.error.HTTPError as err:
            detail = err.read().decode(errors="replace")[:1000]
            raise RuntimeError(f"{method} {path}: HTTP {err.code}: {detail}") from err
        return json.loads(text) if text else None

    def unpause(self, dag_id: str) -> None:
        self._call("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False})

    def wait_for_dag(self, dag_id: str, timeout_s: float = 300) -> None:
        """Until the DAG processor has parsed ``dag_id``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                self._call("GET", f"/api/v2/dags/{dag_id}")
                return
            except RuntimeError as err:
                if "HTTP 404" not in str(err):
                    raise
            time.sleep(2)
        raise TimeoutError(f"{dag_id} was not parsed within {timeout_s} s")

    def trigger(self, dag_id: str, conf: dict) -> str:
        """Post a DAG run with Params, as the trigger form does; its run id."""
        body = {"logical_date": None, "conf": conf}
        return self._call("POST", f"/api/v2/dags/{dag_id}/dagRuns", body)["dag_run_id"]

    def run(self, dag_id: str, run_id: str) -> dict:
        return self._call("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")

    def wait(self, dag_id: str, run_id: str, timeout_s: float = 1800) -> dict:
        """Until the run finishes (success or failed); the run."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            run = self.run(dag_id, run_id)
            if run["state"] in FINISHED:
                return run
            time.sleep(3)
        raise TimeoutError(f"{dag_id} {run_id} did not finish within {timeout_s} s")

    def tasks(self, dag_id: str, run_id: str) -> dict[str, dict]:
        """task_id -> its task instance (state, hostname, queue, try_number, ...)."""
        found = self._call("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances?limit=100")
        return {t["task_id"]: t for t in found["task_instances"]}

    def log(self, dag_id: str, run_id: str, task_id: str, try_number: int) -> str:
        """One try's log, its lines' text joined (Airflow 3 answers structured events)."""
        path = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{try_number}"
        content = self._call("GET", path + "?full_content=true")["content"]
        if isinstance(content, str):
            return content
        return "\n".join(e.get("event", "") if isinstance(e, dict) else str(e) for e in content)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("trigger",))
    parser.add_argument("dag_id")
    parser.add_argument("conf", nargs="?", default="{}", help="the run's Params as JSON")
    parser.add_argument("--home", type=Path, default=REPO / ".cluster")
    parser.add_argument("--wait", action="store_true", help="wait and print each task's state")
    args = parser.parse_args(argv)
    api = AirflowAPI.of_cluster(args.home)
    api.wait_for_dag(args.dag_id)
    api.unpause(args.dag_id)
    run_id = api.trigger(args.dag_id, json.loads(args.conf))
    print(f"triggered {args.dag_id} {run_id}")
    if args.wait:
        run = api.wait(args.dag_id, run_id)
        for task_id, ti in api.tasks(args.dag_id, run_id).items():
            print(f"  {task_id:16s} {ti['state'] or '-':10s} {ti.get('hostname') or ''}")
        print(run["state"])
        return 0 if run["state"] == "success" else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
