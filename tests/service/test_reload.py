"""Deploying a new model into a running service, under traffic, without dropping a request.

A real ``bentoml serve`` serves from its own BentoML model store (as after ``lmrec package``).
While a client thread keeps sending requests, a newer champion is imported into the store
the way ``lmrec package`` does it (``import_bundle``): the service must pick it up by itself,
every request must be answered 200, and the answers must switch from the old version to the
new one once and for all. A broken package must be refused (409 from ``/admin/reload``) with
the old model still served.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

IMPORT = (
    "import sys; from pathlib import Path; "
    "from lmrec.stages.package import import_bundle; "
    "print(import_bundle(Path(sys.argv[1]), 'lmrec-champion', "
    "{'alias': 'champion', 'version': sys.argv[2], 'digest': sys.argv[3]}))"
)


def package(root: Path, bundle: Path, version: str, digest: str) -> str:
    """Import ``bundle`` as the newest ``lmrec-champion`` of the store under ``root``."""
    env = {**os.environ, "BENTOML_HOME": str(root / "bentoml"), "BENTOML_DO_NOT_TRACK": "true"}
    done = subprocess.run(
        [sys.executable, "-c", IMPORT, str(bundle), version, digest],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip()


def with_version(bundle: Path, out: Path, version: str) -> Path:
    """A copy of ``bundle`` that reports ``version``."""
    shutil.copytree(bundle, out)
    info = json.loads((out / "bundle.json").read_text())
    (out / "bundle.json").write_text(json.dumps({**info, "version": version}))
    return out


class Traffic:
    """A client thread sending /recommend requests back to back until stopped."""

    def __init__(self, base: str, user_id: str) -> None:
        self.base, self.user_id = base, user_id
        self.answers: list[tuple[int, str]] = []  # (status, model_version or error text)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(base_url=self.base, timeout=30) as client:
            while not self._stop.is_set():
                try:
                    response = client.post("/recommend", json={"user_id": self.user_id, "k": 5})
                    body = response.json()
                    self.answers.append((response.status_code, body.get("model_version", body)))
                except (httpx.HTTPError, ValueError) as err:  # a dropped request
                    self.answers.append((0, repr(err)))
                time.sleep(0.01)

    def versions(self) -> list[str]:
        return [version for status, version in self.answers if status == 200]

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)


def wait_until(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def store_server(tmp_path_factory, bundles, launcher):
    """A server on the model store, champion "7", checking for new models every 0.5 s."""
    root = tmp_path_factory.mktemp("reload")
    package(root, bundles.champion, "7", "aaaaaaaa")
    params = launcher.write_params(root / "params.yaml", reload_poll_s=0.5)
    server = launcher.start(root, None, params=params)
    yield server
    server.stop()


def test_a_new_package_is_served_without_dropping_requests(store_server, bundles, tmp_path):
    user = next(iter(bundles.histories))
    newer = with_version(bundles.challenger, tmp_path / "v8", "8")
    with Traffic(store_server.base, user) as traffic:
        wait_until(lambda: len(traffic.versions()) >= 20, 60, "answers from version 7")
        tag = package(store_server.root, newer, "8", "bbbbbbbb")
        assert tag.startswith("lmrec-champion:v8-")
        wait_until(lambda: "8" in traffic.versions()[-5:], 60, "the service to serve version 8")
        switched = len(traffic.answers)
        wait_until(lambda: len(traffic.answers) >= switched + 20, 60, "answers from version 8")
    failures = [answer for answer in traffic.answers if answer[0] != 200]
    assert not failures, f"{len(failures)} of {len(traffic.answers)} failed: {failures[:5]}"
    versions = traffic.versions()
    first_new = versions.index("8")
    assert first_new >= 20 and set(versions[:first_new]) == {"7"}
    assert set(versions[first_new:]) == {"8"}, "the old model answered after the switch"
    assert len(versions) - first_new >= 20
    metrics = httpx.get(f"{store_server.base}/metrics", timeout=10).text
    assert 'lmrec_model_reloads_total{result="loaded"} 2.0' in metrics  # first load + deploy


def test_reload_endpoint_reports_unchanged_and_refuses_a_broken_package(
    store_server, bundles, tmp_path
):
    reload_url = f"{store_server.base}/admin/reload"
    before = httpx.post(reload_url, json={}, timeout=60)
    assert before.status_code == 200, before.text
    served = before.json()["versions"]["champion"]
    assert before.json()["status"] == "unchanged"

    broken = with_version(bundles.champion, tmp_path / "v9", "9")
    for weights in broken.rglob("*.safetensors"):
        weights.write_bytes(b"not a safetensors file")
    package(store_server.root, broken, "9", "cccccccc")
    answer = httpx.post(reload_url, json={}, timeout=60)
    assert answer.status_code == 409, answer.text
    body = answer.json()
    assert body["status"] == "failed" and body["error"]
    assert body["versions"]["champion"] == served  # the old model is still the one served
    user = next(iter(bundles.histories))
    recommend = httpx.post(f"{store_server.base}/recommend", json={"user_id": user}, timeout=30)
    assert recommend.status_code == 200 and recommend.json()["model_version"] == served
    metrics = httpx.get(f"{store_server.base}/metrics", timeout=10).text
    assert 'lmrec_model_reloads_total{result="failed"}' in metrics


def run_deploy(workspace: Path, port: int) -> subprocess.CompletedProcess:
    """dags/deploy.sh (the lmrec_retrain DAG's deploy task) in ``workspace``."""
    env = {**os.environ, "PORT": str(port), "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"}
    env.pop("LMREC_API_TOKEN", None)
    script = Path(__file__).resolve().parents[2] / "dags" / "deploy.sh"
    return subprocess.run(
        ["bash", str(script)],
        cwd=workspace,
        env={**env, "DEPLOY_TIMEOUT_S": "60"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_dag_deploy_script_swaps_in_the_package_or_fails_leaving_the_old_one(
    store_server, bundles, tmp_path
):
    workspace = tmp_path / "ws"
    (workspace / "artifacts" / "package").mkdir(parents=True)
    package_json = workspace / "artifacts" / "package" / "package.json"

    def packaged(version: str, bundle: Path) -> None:
        package(store_server.root, bundle, version, f"{version:0>8}")
        record = {"models": {"champion": {"version": int(version)}}, "bento": f"lmrec:v{version}"}
        package_json.write_text(json.dumps(record))

    # No service running: nothing to deploy to, the task still succeeds.
    packaged("10", with_version(bundles.champion, tmp_path / "v10", "10"))
    done = run_deploy(workspace, store_server.port)
    assert done.returncode == 0, done.stderr
    assert "no local service running" in done.stdout and done.stdout.split()[-1] == "lmrec:v10"

    (workspace / "artifacts" / "serve.pid").write_text(str(store_server.proc.pid))
    done = run_deploy(workspace, store_server.port)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "serves champion v10" in done.stdout and done.stdout.split()[-1] == "lmrec:v10"
    user = next(iter(bundles.histories))
    answer = httpx.post(f"{store_server.base}/recommend", json={"user_id": user}, timeout=30)
    assert answer.json()["model_version"] == "10"

    broken = with_version(bundles.champion, tmp_path / "v11", "11")
    for weights in broken.rglob("*.safetensors"):
        weights.write_bytes(b"\0" * 16)
    packaged("11", broken)
    done = run_deploy(workspace, store_server.port)
    assert done.returncode == 1
    assert "refused champion v11 and still serves v10" in done.stderr
    answer = httpx.post(f"{store_server.base}/recommend", json={"user_id": user}, timeout=30)
    assert answer.status_code == 200 and answer.json()["model_version"] == "10"
