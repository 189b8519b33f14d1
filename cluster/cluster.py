"""The production topology as processes on one machine: ``make cluster-up`` / ``cluster-down``.

What runs (every process in its own session, its log in ``<home>/logs/``):

- PostgreSQL (Debian's ``postgresql`` package): the Airflow metadata DB and the MLflow
  backend store (databases ``airflow`` and ``mlflow``);
- Redis (Debian's ``redis-server``): the Celery broker;
- an S3-compatible store (``moto_server`` from PyPI) holding the DVC remote, bucket
  ``lmrec``;
- an MLflow tracking server (Postgres backend, artefacts proxied to ``<home>/mlflow``);
- Airflow 3 with the CeleryExecutor: api-server, scheduler, dag-processor, and two Celery
  workers, one on the ``default`` queue and one on the ``gpu`` queue (``train`` and
  ``refit`` are routed there, dags/lmrec_retrain.py).

Once a run has packaged a champion, ``serve`` (``make cluster-serve``) starts the lmrec
service from the built Bento in the Bento's own environment: a virtualenv made from the
Bento's ``env/python/requirements.txt`` alone (cluster/venvs.py, cached), running
``bentoml serve lmrec:<version>`` on the port ``up`` reserved for it, with no
``PYTHONPATH`` and no ``params.yaml`` (the Bento carries its serve params). The model store
is the cluster's ``BENTOML_HOME``, where the package task imports each new champion: the
deploy task of later runs swaps it in through ``POST /admin/reload`` at
``$LMREC_SERVE_URL`` (dags/deploy.sh); a new Bento (code, requirements) is a new
``serve``, as a new image is a rolling update.

The DAG tasks get the tracking server, the S3 endpoint, the service URL and the caller's
``LMREC_*`` settings (the salt, ...) through the workers' environment (``cluster.json``'s
``task_env``, also the service's and a restarted worker's). ``up`` installs the two Debian
packages when they are missing (root, ``apt-get``), waits until every service answers, and
writes ``<home>/cluster.json`` (ports, pids, URLs, the Airflow admin password); ``down``
stops everything it started; ``env`` prints the variables a shell needs to talk to the
cluster.

    python cluster/cluster.py up [--home .cluster]      # the Makefile's cluster-up
    python cluster/cluster.py env                        # eval "$(python cluster/cluster.py env)"
    python cluster/cluster.py serve [--bento lmrec:<v>]  # the Makefile's cluster-serve
    python cluster/cluster.py down
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # venvs.py beside this file, also when a test loads it by path
    sys.path.insert(0, str(HERE))
import venvs  # noqa: E402

REPO = HERE.parent
VENV = Path(os.environ.get("LMREC_VENV") or REPO / ".venv")
AIRFLOW_VENV = Path(os.environ.get("LMREC_AIRFLOW_VENV") or REPO / ".venv-airflow")
DEBIAN_PACKAGES = {"postgres": "postgresql", "redis-server": "redis-server"}
BUCKET = "lmrec"
#: Seconds each service gets to answer after it starts.
START_TIMEOUT_S = 180
#: The lmrec service's first start in a fresh virtualenv compiles every .pyc: longer.
SERVE_TIMEOUT_S = 300


class ClusterError(RuntimeError):
    """The cluster cannot start or stop; the message says which service and why."""


# ----------------------------------------------------------------- processes
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start(
    home: Path,
    name: str,
    cmd: list[str],
    env: dict | None = None,
    user: str | None = None,
    cwd: Path | None = None,
) -> int:
    """Start ``cmd`` in its own session, output to ``<home>/logs/<name>.log``; its pid."""
    log = (home / "logs" / f"{name}.log").open("ab")
    if user is not None:
        cmd = ["runuser", "-u", user, "--", *cmd]
    proc = subprocess.Popen(
        cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True, cwd=cwd or home
    )
    return proc.pid


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stat(pid: int) -> tuple[int, str] | None:
    """(parent pid, start time) of ``pid`` from /proc, None when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[1]), fields[19]


def _descendants(pid: int) -> dict[int, str]:
    """Every process below ``pid``, also in sessions of their own: pid -> its start time
    (a pid that is reused later is not the same process)."""
    children: dict[int, list[tuple[int, str]]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        if (stat := _stat(int(entry.name))) is not None:
            children.setdefault(stat[0], []).append((int(entry.name), stat[1]))
    found, todo = {}, [pid]
    while todo:
        for child, started in children.get(todo.pop(), []):
            found[child] = started
            todo.append(child)
    return found


def _signal_group(pid: int, sig: int, grace_s: float) -> bool:
    """Send ``sig`` to the session ``pid`` leads; whether it is gone within ``grace_s``."""
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        return True
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):  # our child (a fixture's): reap it
            os.waitpid(pid, os.WNOHANG)
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    return False


def _stop_group(pid: int, grace_s: float = 15.0) -> None:
    """SIGTERM the session ``pid`` leads, SIGKILL what is left after ``grace_s``; then
    SIGKILL its descendants that left the session and outlived it (bentoml's workers)."""
    below = _descendants(pid)
    if not _signal_group(pid, signal.SIGTERM, grace_s):
        _signal_group(pid, signal.SIGKILL, grace_s)
    for child, started in below.items():
        if (stat := _stat(child)) is not None and stat[1] == started:  # still that process
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(child, signal.SIGKILL)


def _wait(
    name: str, check, home: Path, pid: int | None = None, timeout_s: float = START_TIMEOUT_S
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pid is not None and not _alive(pid):
            break
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.5)
    tail = (home / "logs" / f"{name}.log").read_text(errors="replace")[-2000:]
    raise ClusterError(f"{name} did not start within {timeout_s} s; its log ends:\n{tail}")


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _http_200(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return answer.status == 200
    except (urllib.error.URLError, TimeoutError, ConnectionError):
        return False


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return answer.status < 500
    except urllib.error.HTTPError as err:
        return err.code < 500
    except (urllib.error.URLError, TimeoutError, ConnectionError):
        return False


# ----------------------------------------------------------------- packages
def _postgres_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"))
    return found[-1].parent if found else None


def ensure_packages() -> Path:
    """PostgreSQL and Redis from Debian's packages (installed when missing: needs root)."""
    missing = []
    if _postgres_bin() is None:
        missing.append(DEBIAN_PACKAGES["postgres"])
    if shutil.which("redis-server") is None:
        missing.append(DEBIAN_PACKAGES["redis-server"])
    if missing:
        if os.geteuid() != 0:
            raise ClusterError(
                f"missing Debian packages {missing}: `sudo apt-get install {' '.join(missing)}`"
            )
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *missing]):
            done = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if done.returncode != 0:
                raise ClusterError(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    for venv, exe in ((VENV, "moto_server"), (VENV, "mlflow"), (AIRFLOW_VENV, "airflow")):
        if not (venv / "bin" / exe).exists():
            raise ClusterError(f"{venv / 'bin' / exe} not found: run `make setup` first")
    bin_dir = _postgres_bin()
    assert bin_dir is not None
    return bin_dir


# ----------------------------------------------------------------- services
def _postgres(home: Path, state: dict) -> None:
    bin_dir = ensure_packages()
    user = "postgres" if os.geteuid() == 0 else None  # postgres refuses to run as root
    base, pointer = home, home / "postgres.path"
    if pointer.is_file():
        base = Path(pointer.read_text().strip())
    elif user and subprocess.run(["runuser", "-u", user, "--", "test", "-x", str(home)]).returncode:
        # the postgres user cannot reach `home` (a private parent): its data lives in /tmp,
        # in a directory of this cluster's own (named in postgres.path, removed by `down`)
        base = Path(tempfile.mkdtemp(prefix="lmrec-cluster-"))
        base.chmod(0o755)
        pointer.write_text(str(base))
    data, sock = base / "postgres", base / "postgres-socket"
    state["postgres_data"] = str(data)
    if not (data / "PG_VERSION").exists():
        data.mkdir(parents=True, exist_ok=True)
        if user:
            shutil.chown(data, user)
        cmd = [
            str(bin_dir / "initdb"),
            "-D",
            str(data),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
        ]
        done = subprocess.run(
            ["runuser", "-u", user, "--", *cmd] if user else cmd, capture_output=True, text=True
        )
        if done.returncode != 0:
            raise ClusterError(f"initdb failed:\n{done.stderr[-2000:]}")
    sock.mkdir(exist_ok=True)
    if user:
        shutil.chown(sock, user)
    port = state["ports"]["postgres"]
    cmd = [
        str(bin_dir / "postgres"),
        "-D",
        str(data),
        "-p",
        str(port),
        "-k",
        str(sock),
        "-c",
        "listen_addresses=127.0.0.1",
    ]
    state["pids"]["postgres"] = _start(home, "postgres", cmd, user=user)  # log opened as root
    _wait("postgres", lambda: _port_open(port), home, state["pids"]["postgres"])
    psql = [str(bin_dir / "psql"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-tAc"]
    for db in ("airflow", "mlflow"):
        for _ in range(60):
            found = subprocess.run(
                [*psql, f"SELECT 1 FROM pg_database WHERE datname = '{db}'"],
                capture_output=True,
                text=True,
            )
            if found.returncode == 0:
                break
            time.sleep(0.5)
        if found.stdout.strip() != "1":
            made = subprocess.run([*psql, f"CREATE DATABASE {db}"], capture_output=True, text=True)
            if made.returncode != 0:
                raise ClusterError(f"CREATE DATABASE {db} failed: {made.stderr}")


def _redis(home: Path, state: dict) -> None:
    port = state["ports"]["redis"]
    (home / "redis").mkdir(exist_ok=True)
    cmd = [
        "redis-server",
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--dir",
        str(home / "redis"),
        "--save",
        "",
        "--appendonly",
        "no",
    ]
    state["pids"]["redis"] = _start(home, "redis", cmd)
    _wait("redis", lambda: _port_open(port), home, state["pids"]["redis"])


def _s3(home: Path, state: dict) -> None:
    port = state["ports"]["s3"]
    cmd = [str(VENV / "bin" / "moto_server"), "-H", "127.0.0.1", "-p", str(port)]
    state["pids"]["s3"] = _start(home, "s3", cmd)
    url = f"http://127.0.0.1:{port}"
    _wait("s3", lambda: _http_ok(url), home, state["pids"]["s3"])
    request = urllib.request.Request(f"{url}/{BUCKET}", method="PUT")  # create the bucket
    urllib.request.urlopen(request, timeout=10).close()
    state["urls"]["s3"] = url
    state["dvc_remote"] = f"s3://{BUCKET}/dvc"


def _mlflow(home: Path, state: dict) -> None:
    port, pg = state["ports"]["mlflow"], state["ports"]["postgres"]
    (home / "mlflow").mkdir(exist_ok=True)
    cmd = [
        str(VENV / "bin" / "mlflow"), "server",
        "--backend-store-uri", f"postgresql+psycopg2://postgres@127.0.0.1:{pg}/mlflow",
        "--artifacts-destination", str(home / "mlflow"),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    state["pids"]["mlflow"] = _start(home, "mlflow", cmd)
    url = f"http://127.0.0.1:{port}"
    _wait("mlflow", lambda: _http_ok(f"{url}/health"), home, state["pids"]["mlflow"])
    state["urls"]["mlflow"] = url


def airflow_env(home: Path, state: dict) -> dict[str, str]:
    """The environment of every Airflow process (and so of every task)."""
    ports, pg = state["ports"], state["ports"]["postgres"]
    api = f"http://127.0.0.1:{ports['airflow']}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update(
        AIRFLOW_HOME=str(home / "airflow"),
        AIRFLOW__CORE__DAGS_FOLDER=str(state["dags"]),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__EXECUTOR="CeleryExecutor",
        AIRFLOW__CORE__EXECUTION_API_SERVER_URL=f"{api}/execution/",
        AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS="admin:admin",
        AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE=str(home / "airflow" / "passwords.json"),
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"postgresql+psycopg2://postgres@127.0.0.1:{pg}/airflow",
        AIRFLOW__CELERY__BROKER_URL=f"redis://127.0.0.1:{ports['redis']}/0",
        AIRFLOW__CELERY__RESULT_BACKEND=f"db+postgresql+psycopg2://postgres@127.0.0.1:{pg}/airflow",
        AIRFLOW__CELERY__WORKER_CONCURRENCY="1",
        AIRFLOW__API__BASE_URL=api,
        AIRFLOW__API__PORT=str(ports["airflow"]),
        AIRFLOW__API__SECRET_KEY=state["secret"],
        AIRFLOW__API_AUTH__JWT_SECRET=state["secret"],
        AIRFLOW__SCHEDULER__DAG_DIR_LIST_INTERVAL="10",
        # a task whose worker died is failed (and retried) after this long without heartbeat
        AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT=os.environ.get(
            "LMREC_CLUSTER_HEARTBEAT_TIMEOUT_S", "60"
        ),
        AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL="10",
        AIRFLOW__LOGGING__LOGGING_LEVEL="INFO",
        **state["task_env"],
    )
    return env


def _airflow(home: Path, state: dict) -> None:
    (home / "airflow").mkdir(exist_ok=True)
    (home / "airflow" / "passwords.json").write_text(json.dumps({"admin": state["password"]}))
    env = airflow_env(home, state)
    airflow = str(AIRFLOW_VENV / "bin" / "airflow")
    done = subprocess.run([airflow, "db", "migrate"], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise ClusterError(
            f"airflow db migrate failed:\n{done.stdout[-1500:]}{done.stderr[-2500:]}"
        )
    port = state["ports"]["airflow"]
    state["pids"]["api-server"] = _start(
        home, "api-server", [airflow, "api-server", "--port", str(port), "--workers", "1"], env
    )
    for name in ("scheduler", "dag-processor"):
        state["pids"][name] = _start(home, name, [airflow, name], env)
    for queue in ("default", "gpu"):
        cmd = worker_command(state, queue)
        state["pids"][f"worker-{queue}"] = _start(
            home, f"worker-{queue}", cmd, worker_env(env, queue)
        )
    url = f"http://127.0.0.1:{port}"
    _wait(
        "api-server",
        lambda: _http_ok(f"{url}/api/v2/monitor/health"),
        home,
        state["pids"]["api-server"],
    )
    for queue in ("default", "gpu"):
        _wait_worker(home, queue, state["pids"][f"worker-{queue}"])
    state["urls"]["airflow"] = url


def _wait_worker(home: Path, queue: str, pid: int) -> None:
    """Until the Celery worker of ``queue`` says it is ready (it consumes its queue)."""
    log = home / "logs" / f"worker-{queue}.log"
    _wait(f"worker-{queue}", lambda: "ready." in log.read_text(errors="replace"), home, pid)


def worker_command(state: dict, queue: str) -> list[str]:
    """The command line of the ``queue`` worker (the test restarts a killed one with it)."""
    airflow = str(AIRFLOW_VENV / "bin" / "airflow")
    return [
        airflow,
        "celery",
        "worker",
        "--queues",
        queue,
        "--celery-hostname",
        f"{queue}@lmrec",
        "--concurrency",
        "1",
    ]


def worker_env(env: dict[str, str], queue: str) -> dict[str, str]:
    """A worker's environment: the cluster's, and its own name for the task instances."""
    path = os.pathsep.join(p for p in (str(REPO / "cluster"), env.get("PYTHONPATH")) if p)
    return {
        **env,
        "PYTHONPATH": path,
        "LMREC_WORKER_NAME": f"{queue}@lmrec",
        "AIRFLOW__CORE__HOSTNAME_CALLABLE": "worker_hostname.hostname",
    }


def restart_worker(home: Path, queue: str) -> int:
    """Start the ``queue`` worker again (after it died); its new pid, recorded."""
    state = read_state(home)
    log = home / "logs" / f"worker-{queue}.log"
    log.replace(log.with_suffix(f".{int(time.time())}.log"))  # "ready." must be the new one's
    env = worker_env(airflow_env(home, state), queue)
    pid = _start(home, f"worker-{queue}", worker_command(state, queue), env)
    _wait_worker(home, queue, pid)
    state["pids"][f"worker-{queue}"] = pid
    _write_state(home, state)
    return pid


# ----------------------------------------------------------------- the service
def latest_bento(bentoml_home: Path, name: str = "lmrec") -> str:
    """The tag of the newest ``name`` Bento in the store (``bentos/<name>/latest``)."""
    latest = bentoml_home / "bentos" / name / "latest"
    if not latest.is_file():
        raise ClusterError(
            f"no {name} Bento in {bentoml_home}: a lmrec_retrain run packages one first"
        )
    return f"{name}:{latest.read_text().strip()}"


def service_env(home: Path, state: dict, venv: Path) -> dict[str, str]:
    """The service's environment: nothing of the caller's virtualenv, the cluster's model
    store and ``LMREC_*`` settings (the salt ingest used), its feedback log in ``home``."""
    own = ("LMREC_PARAMS", "LMREC_BUNDLE", "LMREC_CHALLENGER_BUNDLE")
    env = {k: v for k, v in venvs.clean_env().items() if k not in own}
    env.update(
        {k: v for k, v in state["task_env"].items() if k.startswith("LMREC_") and k not in own}
    )
    env.update(
        PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}",
        BENTOML_HOME=state["task_env"]["BENTOML_HOME"],
        BENTOML_DO_NOT_TRACK="true",
        LMREC_FEEDBACK_DB=str(home / "service" / "feedback.db"),
        OMP_NUM_THREADS="1",
    )
    return env


def serve(home: Path, bento: str | None = None) -> dict:
    """Serve ``bento`` (default: the newest lmrec Bento) from a virtualenv of its own
    requirements on the port ``up`` reserved; a service already running is replaced.
    Returns what ``cluster.json`` records of it (tag, URL, the served version, seconds)."""
    home = home.resolve()
    state = read_state(home)
    bentoml_home = Path(state["task_env"]["BENTOML_HOME"])
    tag = bento or latest_bento(bentoml_home)
    name, version = tag.split(":")
    requirements = bentoml_home / "bentos" / name / version / "env" / "python" / "requirements.txt"
    if not requirements.is_file():
        raise ClusterError(f"{requirements} not found: is {tag} a Bento of this cluster?")
    started = time.monotonic()
    try:
        venv = venvs.fresh_venv(requirements)
    except venvs.VenvError as err:
        raise ClusterError(f"the Bento's environment: {err}") from err
    venv_s = time.monotonic() - started
    running = state["pids"].get("service")
    if running and _alive(running):  # a new Bento replaces the one served
        _stop_group(running)
    (home / "service").mkdir(exist_ok=True)  # its cwd: no params.yaml, no lmrec checkout
    port, url = state["ports"]["service"], state["task_env"]["LMREC_SERVE_URL"]
    cmd = [str(venv / "bin" / "bentoml"), "serve", tag, "--host", "127.0.0.1", "--port", str(port)]
    started = time.monotonic()
    pid = _start(home, "service", cmd, service_env(home, state, venv), cwd=home / "service")
    state["pids"]["service"] = pid
    _write_state(home, state)  # `down` stops it even if it never gets ready
    _wait("service", lambda: _http_200(f"{url}/readyz"), home, pid, SERVE_TIMEOUT_S)
    request = urllib.request.Request(
        f"{url}/recommend", json.dumps({"k": 1}).encode(), {"content-type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        served = json.load(answer)["model_version"]
    state["urls"]["service"] = url
    state["service"] = {
        "bento": tag,
        "venv": str(venv),
        "model_version": served,
        "venv_seconds": round(venv_s, 1),
        "ready_seconds": round(time.monotonic() - started, 1),
    }
    _write_state(home, state)
    return state["service"]


# ----------------------------------------------------------------- commands
def read_state(home: Path) -> dict:
    path = home / "cluster.json"
    if not path.is_file():
        raise ClusterError(f"{path}: no cluster here (start one with `make cluster-up`)")
    return json.loads(path.read_text())


def _write_state(home: Path, state: dict) -> None:
    tmp = home / "cluster.json.tmp"
    tmp.write_text(json.dumps(state, indent=2))
    tmp.replace(home / "cluster.json")


def up(home: Path, dags: Path = REPO / "dags", task_env: dict[str, str] | None = None) -> dict:
    """Start every service (see the module docstring) and return the cluster's state."""
    home = home.resolve()
    if (home / "cluster.json").is_file() and any(
        _alive(p) for p in read_state(home)["pids"].values()
    ):
        raise ClusterError(f"{home}: a cluster runs here already (`make cluster-down` first)")
    (home / "logs").mkdir(parents=True, exist_ok=True)
    names = ("postgres", "redis", "s3", "mlflow", "airflow", "service")
    state: dict = {
        "home": str(home),
        "dags": str(dags),
        "ports": {
            n: int(os.environ.get(f"LMREC_CLUSTER_{n.upper()}_PORT") or _free_port()) for n in names
        },
        "pids": {},
        "urls": {},
        "secret": secrets.token_hex(16),
        "password": secrets.token_urlsafe(12),
        "started": time.time(),
    }
    try:
        started = time.monotonic()
        _postgres(home, state)
        _redis(home, state)
        _s3(home, state)
        _mlflow(home, state)
        state["task_env"] = {
            # the caller's settings (the salt, retries, ...): a restarted worker and the
            # service get them too, whichever shell starts them
            **{k: v for k, v in os.environ.items() if k.startswith("LMREC_")},
            "MLFLOW_TRACKING_URI": state["urls"]["mlflow"],
            "AWS_ACCESS_KEY_ID": "lmrec",
            "AWS_SECRET_ACCESS_KEY": "lmrec",
            "AWS_DEFAULT_REGION": "us-east-1",
            "LMREC_DVC_REMOTE": state["dvc_remote"],
            "LMREC_DVC_ENDPOINT": state["urls"]["s3"],
            "LMREC_VENV": str(VENV),
            "LMREC_TRAIN_QUEUE": "gpu",
            "BENTOML_HOME": str(home / "bentoml"),
            # the lmrec service (`serve`), which the deploy task reloads (dags/deploy.sh)
            "LMREC_SERVE_URL": f"http://127.0.0.1:{state['ports']['service']}",
            **(task_env or {}),
        }
        _airflow(home, state)
        state["start_seconds"] = round(time.monotonic() - started, 1)
    except BaseException:
        _write_state(home, state)
        down(home)
        raise
    _write_state(home, state)
    return state


def down(home: Path) -> list[str]:
    """Stop every process the cluster in ``home`` started; the names stopped."""
    state = read_state(home.resolve())
    stopped = []
    for name, pid in reversed(list(state["pids"].items())):
        if _alive(pid):
            _stop_group(pid)
            stopped.append(name)
    pointer = home.resolve() / "postgres.path"
    if pointer.is_file():  # Postgres data kept outside `home` (see _postgres): removed
        shutil.rmtree(pointer.read_text().strip(), ignore_errors=True)
        pointer.unlink()
    return stopped


def shell_env(home: Path) -> str:
    state = read_state(home.resolve())
    lines = {
        "MLFLOW_TRACKING_URI": state["urls"]["mlflow"],
        "LMREC_AIRFLOW_URL": state["urls"]["airflow"],
        "LMREC_AIRFLOW_PASSWORD": state["password"],
        "LMREC_SERVE_URL": state["task_env"]["LMREC_SERVE_URL"],
        "LMREC_DVC_REMOTE": state["dvc_remote"],
        "LMREC_DVC_ENDPOINT": state["urls"]["s3"],
        "AWS_ACCESS_KEY_ID": "lmrec",
        "AWS_SECRET_ACCESS_KEY": "lmrec",
    }
    return "\n".join(f"export {k}={v}" for k, v in lines.items())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("up", "serve", "down", "env", "status"))
    parser.add_argument(
        "--home",
        type=Path,
        default=REPO / ".cluster",
        help="state, data and logs (default .cluster/)",
    )
    parser.add_argument("--bento", help="serve: the Bento tag (default: the newest lmrec)")
    args = parser.parse_args(argv)
    try:
        if args.command == "up":
            state = up(args.home)
            print(f"cluster up in {state['start_seconds']} s ({args.home}/cluster.json):")
            for name, url in state["urls"].items():
                print(f"  {name:8s} {url}")
            print(f"  Airflow login: admin / {state['password']}")
            print(f"  logs: {args.home}/logs/   stop: make cluster-down")
        elif args.command == "serve":
            served = serve(args.home, args.bento)
            print(
                f"{served['bento']} serves champion v{served['model_version']} on "
                f"{read_state(args.home)['urls']['service']} (environment {served['venv']}, "
                f"{served['venv_seconds']} s; ready in {served['ready_seconds']} s)"
            )
            print(f"  log: {args.home}/logs/service.log   stop: make cluster-down")
        elif args.command == "down":
            print("stopped: " + (", ".join(down(args.home)) or "nothing was running"))
        elif args.command == "env":
            print(shell_env(args.home))
        else:
            state = read_state(args.home)
            for name, pid in state["pids"].items():
                print(f"  {name:14s} pid {pid:7d}  {'running' if _alive(pid) else 'STOPPED'}")
    except ClusterError as err:
        print(f"cluster: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
