"""`make mlflow-ui` serves the MLflow UI (and its REST API) on the local store."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from lmrec.registry.store import Registry

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status, response.read()


def test_make_mlflow_ui_serves_the_local_registry(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    Registry(uri, "lmrec").client.create_registered_model("lmrec")
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    proc = subprocess.Popen(
        ["make", "--no-print-directory", "mlflow-ui", f"MLFLOW_PORT={port}"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
            try:
                status, _ = get(f"{base}/health")
                break
            except OSError:
                assert time.monotonic() < deadline, "the MLflow UI did not come up in 120 s"
                time.sleep(1)
        assert status == 200
        status, page = get(base + "/")
        assert status == 200 and b"MLflow" in page
        _, body = get(f"{base}/ajax-api/2.0/mlflow/registered-models/search")
        names = [m["name"] for m in json.loads(body)["registered_models"]]
        assert names == ["lmrec"]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
