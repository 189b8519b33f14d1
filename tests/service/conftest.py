"""Real-server fixtures: tiny serving bundles and ``bentoml serve`` subprocesses.

Two bundles are built once per session from the tiny split: a champion (the LM-powered
sequential model, version "7") and a challenger (popularity, version "8"). ``start_server``
runs ``bentoml serve lmrec.serving.service:LmrecService`` on a free port (cwd, log, BentoML
home and feedback store in a temp dir) and waits for ``/readyz``; teardown stops the server
and its workers (found by an environment marker: they run in sessions of their own).
Servers shared by several tests are session-scoped: each start costs seconds on 2 cores.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pandas as pd
import psutil
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
BENTOML = Path(sys.executable).parent / "bentoml"
SERVICE = "lmrec.serving.service:LmrecService"
READY_TIMEOUT_S = 90.0
STOP_GRACE_S = 10.0
TOKEN = "s3cret-token"
ADMIN_TOKEN = "adm1n-token"
#: the request_id of the plain server's one event older than the retention limit
EXPIRED_REQUEST = "expired-before-start"
#: what a production server (LMREC_PRODUCTION=1) needs besides the API token
PRODUCTION_ENV = {
    "LMREC_PRODUCTION": "1",
    "LMREC_ADMIN_TOKEN": ADMIN_TOKEN,
    "LMREC_USER_ID_SALT": "test-only-secret-salt",
}
#: a per-server environment marker, by which ``Server.pids`` finds its processes
MARKER_ENV = "LMREC_TEST_SERVER_ID"
#: environment variables each server gets from ``launch`` only (never from the caller)
OWN_ENV = frozenset(
    {
        "LMREC_BUNDLE",
        "LMREC_CHALLENGER_BUNDLE",
        "LMREC_PARAMS",
        "LMREC_API_TOKEN",
        "LMREC_ADMIN_TOKEN",
        "LMREC_PRODUCTION",
        "LMREC_LOAD_DELAY_S",
        "LMREC_FEEDBACK_DB",
    }
)


@dataclass(frozen=True)
class Bundles:
    """The session's serving bundles and what tests need to know about their data."""

    champion: Path
    challenger: Path
    #: user id (pseudonymised, as in users.parquet) -> history item ids, oldest first
    histories: dict[str, list[str]]
    #: catalog item ids by model index
    item_ids: list[str]
    #: item id -> title
    titles: dict[str, str]
    #: item ids, most popular first (the cold-start order)
    popular: list[str]
    #: catalog items without training interactions (fresh for the exposure policy), by index
    fresh: list[str]


@dataclass
class Server:
    """A running ``bentoml serve`` process."""

    proc: subprocess.Popen
    port: int
    root: Path
    log_path: Path
    feedback_db: Path
    env: dict[str, str] = field(repr=False)
    ready_s: float | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "<no log>"

    def pids(self) -> list[int]:
        """This server's processes: the ``bentoml`` parent and its workers. Workers run in
        sessions of their own (so a process-group kill misses them) and outlive a killed
        parent, so they are found by the marker in their environment."""
        marker = self.env[MARKER_ENV]
        found = []
        for process in psutil.process_iter():
            with contextlib.suppress(psutil.Error):
                if process.environ().get(MARKER_ENV) == marker:
                    found.append(process.pid)
        return found

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to every process of the server at once."""
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def stop(self) -> None:
        """SIGTERM the server (it stops its workers), SIGKILL whatever is left after a
        grace period, and wait until no process of it remains."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=STOP_GRACE_S)
        deadline = time.monotonic() + STOP_GRACE_S
        while (left := self.pids()) and time.monotonic() < deadline:
            self.kill(signal.SIGKILL)
            psutil.wait_procs([psutil.Process(p) for p in left if psutil.pid_exists(p)], 1)
        if self.proc.poll() is None:
            self.proc.wait(timeout=STOP_GRACE_S)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_params(path: Path, **serve: object) -> Path:
    """The tiny profile with its ``serve`` block overridden by ``serve``."""
    raw = yaml.safe_load((REPO / "profiles" / "tiny.yaml").read_text())
    raw["serve"] = {**(raw.get("serve") or {}), **serve}
    path.write_text(yaml.safe_dump(raw))
    return path


def launch(
    root: Path,
    bundle: Path | None,
    *,
    challenger: Path | None = None,
    params: Path | None = None,
    token: str | None = None,
    load_delay_s: float | None = None,
    feedback_db: Path | None = None,
    bento: tuple[Path, str] | None = None,
    extra_env: dict[str, str] | None = None,
) -> Server:
    """Start a server in ``root`` (its cwd, log, BentoML home) without waiting for it.

    ``bundle`` None serves from the BentoML model store in ``root / "bentoml"`` (what
    ``lmrec package`` fills), as a deployed service does. ``bento`` (a virtualenv, a Bento
    tag) serves that built Bento with that virtualenv's ``bentoml``, on nothing but what
    the Bento carries: no ``LMREC_PARAMS``, no ``PYTHONPATH``. ``extra_env`` is set last."""
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in OWN_ENV and not k.startswith("BENTOML_")}
    feedback_db = feedback_db or root / "fb.db"
    env.update(
        LMREC_FEEDBACK_DB=str(feedback_db),
        BENTOML_HOME=str(root / "bentoml"),
        BENTOML_DO_NOT_TRACK="true",
        OMP_NUM_THREADS="1",
    )
    command = [str(BENTOML), "serve", SERVICE]
    if bento is None:
        env["LMREC_PARAMS"] = str(params or write_params(root / "params.yaml"))
    else:
        venv, tag = bento
        for name in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME"):
            env.pop(name, None)
        env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        command = [str(venv / "bin" / "bentoml"), "serve", tag]
    env[MARKER_ENV] = uuid.uuid4().hex
    if bundle is not None:
        env["LMREC_BUNDLE"] = str(bundle)
    if challenger is not None:
        env["LMREC_CHALLENGER_BUNDLE"] = str(challenger)
    if token is not None:
        env["LMREC_API_TOKEN"] = token
    if load_delay_s is not None:
        env["LMREC_LOAD_DELAY_S"] = str(load_delay_s)
    env.update(extra_env or {})
    log_path = root / f"server-{port}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [*command, "--host", "127.0.0.1", "--port", str(port)],
            cwd=root,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Server(proc, port, root, log_path, feedback_db, env)


def wait_for(server: Server, path: str, timeout_s: float = READY_TIMEOUT_S) -> float:
    """Poll ``path`` until it answers 200; return the seconds waited. Fails with the log
    tail when the process dies or the time runs out."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if server.proc.poll() is not None:
            pytest.fail(f"bentoml serve exited with {server.proc.returncode}:\n{server.log_tail()}")
        try:
            if httpx.get(f"{server.base}{path}", timeout=2).status_code == 200:
                return time.monotonic() - started
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    server.stop()
    pytest.fail(f"{path} not 200 after {timeout_s:.0f} s:\n{server.log_tail()}")


def start_server(root: Path, bundle: Path | None, **kwargs: object) -> Server:
    """Launch a server and wait until ``/readyz`` says it is ready."""
    server = launch(root, bundle, **kwargs)
    try:
        server.ready_s = wait_for(server, "/readyz")
    except BaseException:
        server.stop()
        raise
    print(f"[service] ready on :{server.port} in {server.ready_s:.1f} s", file=sys.stderr)
    return server


# ------------------------------------------------------------------ bundles
def _save_with_ids(model, directory: Path, item_ids: list[str]) -> Path:
    import json

    model.save(directory)
    (directory / "item_ids.json").write_text(json.dumps(item_ids))
    return directory


@pytest.fixture(scope="session")
def bundles(tmp_path_factory, tiny_split_dir, tiny_params) -> Bundles:
    """A champion (sequential, "7") and a challenger (popularity, "8") bundle."""
    import torch

    from lmrec import artifacts
    from lmrec.features.dataset import load_split
    from lmrec.models.popularity import PopularityRecommender
    from lmrec.serving.bundle import build_bundle
    from lmrec.stages import embed
    from lmrec.train.trainer import train_sequential

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("serving")
    embed_dir = root / "embed"
    embed.run(tiny_params.embed, tiny_split_dir, embed_dir, False)
    split = load_split(tiny_split_dir)
    embeddings, _ = artifacts.load_embeddings(embed_dir)
    item_ids = split.items.sort_values("item_idx")["item_id"].astype(str).tolist()
    cfg = tiny_params.train.model_copy(
        update={"sequential": tiny_params.train.sequential.model_copy(update={"epochs": 2})}
    )
    model = train_sequential(split, embeddings, cfg, root / "ckpt").model
    popularity = PopularityRecommender().fit(split)
    made = {}
    for name, fitted, version in (("champion", model, "7"), ("challenger", popularity, "8")):
        model_dir = _save_with_ids(fitted, root / f"model-{name}", item_ids)
        meta = {"version": version, "alias": name, "digest": "x"}
        made[name] = build_bundle(model_dir, tiny_split_dir, embed_dir, root / name, meta)
    users = pd.read_parquet(root / "champion" / "users.parquet")
    catalog = pd.read_parquet(root / "champion" / "catalog.parquet").sort_values("item_idx")
    ids = catalog["item_id"].astype(str).tolist()
    histories = {
        str(u): [ids[i] for i in h] for u, h in zip(users["user_id"], users["history"], strict=True)
    }
    order = catalog.sort_values(["popularity", "item_idx"], ascending=[False, True])
    return Bundles(
        champion=root / "champion",
        challenger=root / "challenger",
        histories=histories,
        item_ids=ids,
        titles=dict(zip(ids, catalog["title"].astype(str), strict=True)),
        popular=order["item_id"].astype(str).tolist(),
        fresh=catalog.loc[catalog["popularity"] == 0, "item_id"].astype(str).tolist(),
    )


def _serve(tmp_path_factory, name: str, bundle: Path, **kwargs) -> Iterator[Server]:
    server = start_server(tmp_path_factory.mktemp(name), bundle, **kwargs)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def server(tmp_path_factory, bundles) -> Iterator[Server]:
    """The plain server: champion only, no auth (shared by the HTTP and fuzz tests); a
    feedback write waits 2 s for a lock (tests/service/test_service_http.py holds one). Its
    feedback log starts with one event past the retention limit (``EXPIRED_REQUEST``)."""
    from lmrec.serving.feedback import FeedbackEvent, FeedbackStore

    root = tmp_path_factory.mktemp("plain-params")
    params = write_params(root / "plain.yaml", feedback={"busy_timeout_s": 2.0, "retry_after_s": 3})
    db = root / "fb.db"
    with FeedbackStore(db) as store:
        store.append(FeedbackEvent("old-user", "item", "click", 1.0, request_id=EXPIRED_REQUEST))
    yield from _serve(tmp_path_factory, "plain", bundles.champion, params=params, feedback_db=db)


@pytest.fixture(scope="session")
def auth_server(tmp_path_factory, bundles) -> Iterator[Server]:
    """A production server (``PRODUCTION_ENV``): the API needs ``Authorization: Bearer
    TOKEN``, ``/admin/*`` ``ADMIN_TOKEN``."""
    yield from _serve(
        tmp_path_factory, "auth", bundles.champion, token=TOKEN, extra_env=PRODUCTION_ENV
    )


@pytest.fixture(scope="session")
def ab_server(tmp_path_factory, bundles) -> Iterator[Server]:
    """Champion "7" + challenger "8", half of the users each."""
    root = tmp_path_factory.mktemp("ab")
    params = write_params(root / "ab.yaml", challenger_share=0.5)
    yield from _serve(
        tmp_path_factory, "ab-run", bundles.champion, challenger=bundles.challenger, params=params
    )


class Launcher:
    """``launch`` / ``start_server`` / ``wait_for`` for tests that run their own servers
    (tests/service is not a package, so tests get these through the ``launcher`` fixture)."""

    token = TOKEN
    admin_token = ADMIN_TOKEN
    expired_request = EXPIRED_REQUEST
    production_env = PRODUCTION_ENV
    launch = staticmethod(launch)
    write_params = staticmethod(write_params)
    start = staticmethod(start_server)
    wait_for = staticmethod(wait_for)


@pytest.fixture(scope="session")
def launcher() -> Launcher:
    return Launcher()
