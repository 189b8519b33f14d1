"""Fault scenarios with real components, each with nothing lost (issue 16, Build item 9).

1. The MLflow server dies while a model is served: the service keeps answering (it never
   calls MLflow), and ``lmrec package`` fails at once, naming the server, leaving the
   previous package output and the BentoML store as they were.
2. The MLflow server dies during ``lmrec train``: the run fails within MLflow's bounded
   HTTP retries (lmrec's defaults, not MLflow's four minutes) with a message naming the
   server, and ``lmrec train --resume`` against the restarted server continues the same
   MLflow run from the last checkpoint and ends with a model.
3. The disk fills while a stage writes its output: the stage fails with a readable error,
   the previous output is byte-identical and no temporary directory is left.
4. ``dvc repro`` is SIGKILLed in the middle of the train stage, once in an epoch and once
   while the outputs are being written: no half-written output is ever visible, and the
   rerun completes with no temporary leftovers.

One tiny workspace (the tiny profile's split and embeddings) and one MLflow server (a real
``mlflow server`` on a SQLite store, restarted once) serve every scenario.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml

from lmrec.cli.dvc_stages import stage_argv

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
#: how long a command may take to fail once MLflow is down (the bounded retries, plus
#: interpreter start and imports on a busy 2-core machine)
FAIL_FAST_S = 90.0
READY_TIMEOUT_S = 180.0

pytestmark = pytest.mark.slow


def _service_helpers():
    """tests/service/conftest.py's server launcher (tests/service is not a package)."""
    spec = importlib.util.spec_from_file_location(
        "lmrec_service_fixtures", REPO / "tests" / "service" / "conftest.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _tree(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under ``root`` (hidden ones included)."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _leftovers(root: Path) -> list[str]:
    """Temporary siblings that ``lmrec.io``'s atomic writers leave when they are killed."""
    return sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob(".*")
        if p.name.endswith((".tmp", ".old")) and not p.name.startswith(".pipeline")
    )


def _lmrec(cwd: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 300):
    return subprocess.run(
        [str(BIN / "lmrec"), *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


class MlflowServer:
    """A real ``mlflow server`` on a SQLite store, on a fixed port, killable and restartable."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = _free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        log = (self.root / "mlflow-server.log").open("ab")
        # gunicorn serves MLflow's Flask app without the FastAPI layer: the same REST API,
        # ready in half the time on a busy 2-core machine; no job runner either.
        command = [
            str(BIN / "mlflow"), "server",
            "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
            "--artifacts-destination", str(self.root / "mlartifacts"),
            "--host", "127.0.0.1", "--port", str(self.port),
            "--workers", "1", "--gunicorn-opts", "--log-level warning",
        ]  # fmt: skip
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        self.proc = subprocess.Popen(
            command, cwd=self.root, env=env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"mlflow server exited with {self.proc.returncode}:\n{self.log()}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{self.uri}/health", timeout=2).status_code == 200:
                    return
            time.sleep(0.2)
        self.kill()
        pytest.fail(f"mlflow server not ready after {READY_TIMEOUT_S:.0f} s:\n{self.log()}")

    def kill(self) -> None:
        """SIGKILL the server and its workers (one process group), as a crash would."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        self.proc = None

    def log(self) -> str:
        path = self.root / "mlflow-server.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else "<no log>"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_split_dir, tiny_params) -> Path:
    """The tiny profile's split and embeddings, and params for a short training."""
    from lmrec.stages import embed

    root = tmp_path_factory.mktemp("faults")
    shutil.copytree(tiny_split_dir, root / "artifacts" / "preprocess")
    embed.run(tiny_params.embed, root / "artifacts/preprocess", root / "artifacts/embed", False)
    raw = yaml.safe_load((REPO / "profiles" / "tiny.yaml").read_text())
    # Six epochs, no early stop: room to kill in the middle, still a few seconds in all.
    raw["train"]["sequential"].update(epochs=6)
    raw["train"]["early_stopping"].update(patience=6)
    (root / "params.yaml").write_text(yaml.safe_dump(raw))
    return root


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory) -> Iterator[MlflowServer]:
    server = MlflowServer(tmp_path_factory.mktemp("mlflow"))
    server.start()
    try:
        yield server
    finally:
        server.kill()


def _wait_for_line(proc: subprocess.Popen, needle: str, timeout_s: float) -> list[str]:
    """Read ``proc``'s stdout until a line contains ``needle``; return the lines read."""
    lines: list[str] = []
    deadline = time.monotonic() + timeout_s
    for line in proc.stdout:
        lines.append(line)
        if needle in line or time.monotonic() > deadline:
            break
    assert any(needle in line for line in lines), "".join(lines)[-3000:]
    return lines


@pytest.fixture(scope="module")
def trained(workspace, mlflow_server) -> dict:
    """Scenario 2 run once: ``lmrec train`` loses its MLflow server after two epochs; the
    server comes back (same store, same port) and ``lmrec train --resume`` finishes."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server.uri}
    args = ["--no-progress", "--out", "out-mlflow", "--checkpoints", "ckpt-mlflow"]
    args = stage_argv("train", *args, dvc_yaml=REPO / "dvc.yaml")[1:]
    proc = subprocess.Popen(
        [str(BIN / "lmrec"), *args], cwd=workspace, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    before = _wait_for_line(proc, "epoch 2/6", timeout_s=240)
    mlflow_server.kill()
    killed_at = time.monotonic()
    try:
        rest, stderr = proc.communicate(timeout=600)
    finally:
        proc.kill()
    failed = {
        "returncode": proc.returncode,
        "stdout": "".join(before) + rest,
        "stderr": stderr,
        "seconds": time.monotonic() - killed_at,
        "model_written": (workspace / "out-mlflow" / "model").exists(),
    }
    mlflow_server.start()
    resumed = _lmrec(workspace, *args, "--resume", env={"MLFLOW_TRACKING_URI": mlflow_server.uri})
    return {"failed": failed, "resumed": resumed, "out": workspace / "out-mlflow"}


# ------------------------------------------------------------------ 2. training
def test_training_fails_clearly_when_mlflow_dies_and_resume_continues(trained, mlflow_server):
    import json

    from mlflow import MlflowClient

    failed = trained["failed"]
    assert failed["returncode"] != 0, failed["stdout"][-2000:]
    assert failed["seconds"] < FAIL_FAST_S, f"hung {failed['seconds']:.0f} s after the kill"
    assert f"error: MLflow at '{mlflow_server.uri}'" in failed["stderr"], failed["stderr"][-3000:]
    assert "Traceback" not in failed["stderr"], failed["stderr"][-3000:]
    assert not failed["model_written"]  # the failed run wrote no output
    resumed = trained["resumed"]
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming after epoch" in resumed.stdout, resumed.stdout
    assert (trained["out"] / "model" / "weights.safetensors").is_file()
    run = json.loads((trained["out"] / "run.json").read_text())
    assert run["resumed_from"] >= 2 and run["mlflow_tracking_uri"] == mlflow_server.uri
    client = MlflowClient(tracking_uri=mlflow_server.uri)
    record = client.get_run(run["mlflow_run_id"])  # the one run, continued
    assert record.info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(run["mlflow_run_id"], "loss")]
    assert sorted(set(steps)) == list(range(6))
    assert run["mlflow_model_uri"]


# ------------------------------------------------------------------ 1. serving
def test_service_outlives_mlflow_and_package_fails_clearly(trained, workspace, mlflow_server):
    import json

    from lmrec.registry.store import DIGEST_TAG, Registry, model_digest

    helpers = _service_helpers()
    run = json.loads((trained["out"] / "run.json").read_text())
    registry = Registry(mlflow_server.uri, "lmrec")
    tags = {DIGEST_TAG: model_digest(trained["out"] / "model")}
    version = registry.register(run["mlflow_model_uri"], run["mlflow_run_id"], tags)
    registry.promote(version.number)
    serve_root = workspace / "serve"
    env = {"MLFLOW_TRACKING_URI": mlflow_server.uri, "BENTOML_HOME": str(serve_root / "bentoml")}
    package = stage_argv(
        "package", "--split", "artifacts/preprocess", "--no-build", dvc_yaml=REPO / "dvc.yaml"
    )[1:]
    first = _lmrec(workspace, *package, env=env)
    assert first.returncode == 0, first.stderr[-3000:]
    out, store = workspace / "artifacts" / "package", serve_root / "bentoml" / "models"
    packaged, stored = _tree(out), _tree(store)
    # The deployed service: the champion from the BentoML store, MLflow's URI in its env.
    server = helpers.start_server(serve_root, None, extra_env=env)
    try:
        user, history = next(iter(_known_users(out)))
        ask = [{"user_id": user, "k": 5}, {"history": history[:3], "k": 5}]
        before = [httpx.post(f"{server.base}/recommend", json=body, timeout=30) for body in ask]
        assert [r.status_code for r in before] == [200, 200], [r.text for r in before]
        mlflow_server.kill()
        after = [httpx.post(f"{server.base}/recommend", json=body, timeout=30) for body in ask]
        assert [r.status_code for r in after] == [200, 200], [r.text for r in after]
        assert [r.json()["items"] for r in after] == [r.json()["items"] for r in before]
        assert after[0].json()["model_version"] == str(version.number)
        started = time.monotonic()
        dead = _lmrec(workspace, *package, env=env)
        seconds = time.monotonic() - started
        assert dead.returncode != 0
        assert seconds < FAIL_FAST_S, f"lmrec package took {seconds:.0f} s to give up"
        assert f"error: MLflow registry at '{mlflow_server.uri}'" in dead.stderr, dead.stderr
        assert "Traceback" not in dead.stderr, dead.stderr[-3000:]
        assert _tree(out) == packaged and _tree(store) == stored
        time.sleep(3)  # two of the service's reload polls: the store did not change
        again = httpx.post(f"{server.base}/recommend", json=ask[0], timeout=30)
        assert again.status_code == 200 and again.json()["items"] == after[0].json()["items"]
        assert httpx.get(f"{server.base}/readyz", timeout=10).status_code == 200
    finally:
        server.stop()


def _known_users(package_out: Path) -> Iterator[tuple[str, list[str]]]:
    """(user id, history item ids) of the packaged champion's known users."""
    import pandas as pd

    bundle = package_out / "bundles" / "champion"
    users = pd.read_parquet(bundle / "users.parquet")
    catalog = pd.read_parquet(bundle / "catalog.parquet").sort_values("item_idx")
    ids = catalog["item_id"].astype(str).tolist()
    for user, history in zip(users["user_id"], users["history"], strict=True):
        if len(history) >= 3:
            yield str(user), [ids[i] for i in history]


# ------------------------------------------------------------------ 3. disk full
@contextlib.contextmanager
def _small_filesystem(path: Path, size: str) -> Iterator[Callable[[], dict]]:
    """A tmpfs of ``size`` at ``path`` (root in this sandbox); yields the extra Popen
    arguments a writer needs. Where mounting is refused, a plain directory and an
    RLIMIT_FSIZE on the child stand in (writes past it fail with EFBIG)."""
    path.mkdir(parents=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
    ).returncode == 0  # fmt: skip
    if mounted:
        try:
            yield lambda: {}
        finally:
            subprocess.run(["umount", "-l", str(path)], check=False)
        return

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a kill
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    yield lambda: {"preexec_fn": limit}


def _fill(directory: Path, leave_bytes: int) -> None:
    """Fill ``directory``'s filesystem up to ``leave_bytes`` free."""
    stats = os.statvfs(directory)
    free = stats.f_bavail * stats.f_frsize
    with (directory / "filler").open("wb") as fh:
        fh.write(b"\0" * max(free - leave_bytes, 0))


def test_disk_full_while_writing_a_stage_output_keeps_the_previous_one(
    workspace, tiny_split_dir, tmp_path
):
    data = tiny_split_dir.parent  # the synthetic contract tables the split was made from
    with _small_filesystem(tmp_path / "small", "4M") as popen_extra:
        disk = tmp_path / "small"
        previous = disk / "preprocess"
        shutil.copytree(tiny_split_dir, previous)
        before = _tree(previous)
        _fill(disk, leave_bytes=16 * 1024)
        cmd = [
            str(BIN / "lmrec"), "preprocess", "--params", str(workspace / "params.yaml"),
            "--interactions", str(data / "interactions.parquet"),
            "--items", str(data / "items.parquet"), "--out", str(previous),
        ]  # fmt: skip
        done = subprocess.run(
            cmd, cwd=workspace, capture_output=True, text=True, timeout=300, **popen_extra()
        )
        assert done.returncode != 0, done.stdout
        assert "Traceback" not in done.stderr, done.stderr[-3000:]
        assert done.stderr.startswith("error: "), done.stderr[-3000:]
        assert str(disk) in done.stderr and (
            "No space left on device" in done.stderr or "File too large" in done.stderr
        ), done.stderr
        assert _tree(previous) == before
        assert _leftovers(disk) == []


# ------------------------------------------------------------------ 4. SIGKILL
def _visible_files(directory: Path) -> frozenset[str]:
    """Files under ``directory`` that a reader sees: none below a hidden name (``.x.tmp``,
    ``.x.old`` are the atomic writers' own)."""
    files = (p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file())
    return frozenset(f for f in files if not any(part.startswith(".") for part in f.split("/")))


class OutputWatcher:
    """Samples the train stage's output directories every few milliseconds from a thread and
    records each visible state of each (the set of visible file names under it), so a test
    can ask whether a half-written model was ever in place."""

    def __init__(self, root: Path, names: list[str], after_removal: bool = False) -> None:
        # after_removal: record nothing until none of the directories exists. ``dvc repro``
        # deletes a stage's old outputs file by file before it runs the command; what that
        # deletion shows is DVC's, not the writer's under test.
        self.root, self.names, self.armed = root, names, not after_removal
        self.seen: dict[str, set[frozenset[str]]] = {name: set() for name in names}
        self.tmp_seen = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self.armed:
                with contextlib.suppress(OSError):
                    self.armed = not any((self.root / n).exists() for n in self.names)
            for name in self.names if self.armed else []:
                with contextlib.suppress(OSError):
                    if (self.root / name).is_dir():
                        self.seen[name].add(_visible_files(self.root / name))
            with contextlib.suppress(OSError):
                if any(p.name.endswith(".tmp") for p in self.root.iterdir()):
                    self.tmp_seen.set()
            time.sleep(0.002)

    def __enter__(self) -> OutputWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@pytest.fixture(scope="module")
def dvc_workspace(workspace, tmp_path_factory) -> Path:
    """A DVC workspace holding the project's dvc.yaml and sources, the tiny workspace's split
    and embeddings and its params; ``dvc repro --single-item train`` runs the train stage."""
    ws = tmp_path_factory.mktemp("dvc-ws")
    shutil.copy(REPO / "dvc.yaml", ws / "dvc.yaml")
    shutil.copy(workspace / "params.yaml", ws / "params.yaml")
    shutil.copytree(REPO / "src", ws / "src", ignore=shutil.ignore_patterns("__pycache__"))
    for stage in ("preprocess", "embed"):
        shutil.copytree(workspace / "artifacts" / stage, ws / "artifacts" / stage)
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"]):
        subprocess.run(cmd, cwd=ws, check=True, capture_output=True)
    return ws


def _killed_repro(ws: Path, kill_when: Callable[[list[str], OutputWatcher], bool]) -> str:
    """Start ``dvc repro --single-item train`` in its own process group; SIGKILL the group
    as soon as ``kill_when(stdout lines, watcher)`` holds; return the output."""
    train = ws / "artifacts" / "train"
    names = ["model", "baselines", "replicas"]
    lines: list[str] = []
    with OutputWatcher(train, names, after_removal=True) as watcher:
        proc = subprocess.Popen(
            ["dvc", "repro", "--single-item", "train"], cwd=ws, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
        reader.start()
        deadline = time.monotonic() + 300
        while proc.poll() is None and not kill_when(lines, watcher):
            assert time.monotonic() < deadline, "".join(lines)[-3000:]
            time.sleep(0.002)
        assert proc.poll() is None, f"ended before the kill:\n{''.join(lines)[-3000:]}"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        reader.join(timeout=10)
    _assert_never_half_written(watcher, train)
    return "".join(lines)


#: what every saved model directory holds (``lmrec.artifacts.write_model_dir``)
MODEL_FILES = {"config.json", "item_ids.json"}


def _assert_never_half_written(watcher: OutputWatcher, train: Path) -> None:
    """Whenever a model directory was visible (model/, each baselines/<name>/ and
    replicas/<name>/), it held a saved model's files and nothing a finished run lacks."""
    assert watcher.armed, "the watcher never saw the old outputs removed: it recorded nothing"
    for name, states in watcher.seen.items():
        final = _visible_files(train / name) if (train / name).is_dir() else None
        for state in states:
            if name == "model":
                models = {"model": set(state)}
            else:  # baselines/<name>/..., replicas/<name>/... (replicas/seeds.json aside)
                models = {}
                for head, _, rest in (rel.partition("/") for rel in state):
                    if rest:
                        models.setdefault(head, set()).add(rest)
            for owner, files in models.items():
                assert files >= MODEL_FILES, (name, owner, sorted(files))
            if final is not None:
                assert state <= final, (name, sorted(state - final))


def test_sigkill_mid_stage_leaves_no_half_written_output_and_the_rerun_completes(dvc_workspace):
    from lmrec.models.registry import load_model

    ws, train = dvc_workspace, dvc_workspace / "artifacts" / "train"
    # In an epoch: DVC removed the outputs before running the stage; none is in place.
    _killed_repro(ws, lambda lines, _: any("epoch 2/6" in line for line in lines))
    assert not any((train / name).exists() for name in ("model", "baselines", "replicas"))
    # While the outputs are written: the kill lands with an atomic writer's temporary open.
    _killed_repro(ws, lambda _, watcher: watcher.tmp_seen.is_set())
    status = subprocess.run(["dvc", "status", "train"], cwd=ws, capture_output=True, text=True)
    assert "changed outs" in status.stdout or "deleted" in status.stdout, status.stdout
    with OutputWatcher(train, ["model", "baselines", "replicas"], after_removal=True) as watcher:
        rerun = subprocess.run(
            ["dvc", "repro", "--single-item", "train"], cwd=ws, capture_output=True, text=True,
            timeout=300,
        )  # fmt: skip
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    _assert_never_half_written(watcher, train)
    assert _leftovers(train) == []
    assert _leftovers(ws / "artifacts" / "checkpoints") == []
    clean = subprocess.run(["dvc", "status", "train"], cwd=ws, capture_output=True, text=True)
    assert "changed" not in clean.stdout and "deleted" not in clean.stdout, clean.stdout
    items, _ = load_model(train / "model").recommend(np.array([0, 1]), k=5)
    assert len(items) == 5
