"""The shipped artefacts run in environments made from their own requirements alone.

One model (popularity on the tiny split) is logged to a real MLflow SQLite store,
registered, promoted and packaged by ``lmrec package`` with ``serve.max_k`` 7. Then:

- the Bento: a fresh virtualenv gets exactly the Bento's ``env/python/requirements.txt``,
  and that virtualenv's ``bentoml serve lmrec:<version>`` (no ``LMREC_PARAMS``, no
  ``PYTHONPATH``, a working directory without ``params.yaml``) answers ``/recommend`` with
  the serve params it carries;
- the MLflow pyfunc: a fresh virtualenv gets exactly the logged model's
  ``requirements.txt``, and an isolated interpreter there (``python -I``: no repo, no
  editable install) loads it with ``mlflow.pyfunc.load_model`` and predicts what the
  training environment predicts, with the lmrec code the model ships.

Virtualenvs are cached under ``$LMREC_TEST_VENVS`` (default
``~/.cache/lmrec-test-venvs``) by a hash of the requirements and the Python version: the
first run installs them (minutes), later runs reuse them. Every requirement must be
pinned and torch must be 2.13.0 (the CPU wheel this machine has) before pip runs.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pandas as pd
import psutil
import pytest

from lmrec.features.dataset import load_split
from lmrec.models.popularity import PopularityRecommender
from lmrec.registry.store import DIGEST_TAG, Registry, model_digest
from lmrec.stages import embed
from lmrec.train.tracking import Tracker

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
LMREC = str(Path(sys.executable).parent / "lmrec")
VENV_CACHE = Path(os.environ.get("LMREC_TEST_VENVS", Path.home() / ".cache/lmrec-test-venvs"))
#: the interpreter .venv was made from (python3.11), for the fresh virtualenvs
BASE_PYTHON = (
    Path(sys.base_prefix) / "bin" / f"python{sys.version_info.major}.{sys.version_info.minor}"
)
PIN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(\[[^\]]*\])?==[^\s;]+$")
MAX_K = 7
PIP_TIMEOUT_S = 1800
READY_TIMEOUT_S = 300.0  # the first start in a fresh virtualenv compiles every .pyc


def _requirement_lines(path: Path) -> list[str]:
    lines = [ln.split("#")[0].strip() for ln in path.read_text().splitlines()]
    return [ln for ln in lines if ln]


def _check_pinned(path: Path) -> list[str]:
    """Every requirement of ``path`` is ``name==version`` and torch is 2.13.0: pip must
    never resolve an unpinned (CUDA, GBs) torch."""
    lines = _requirement_lines(path)
    loose = [ln for ln in lines if not PIN.match(ln)]
    assert not loose, f"{path}: not pinned: {loose}"
    torch = [ln for ln in lines if ln.split("==")[0].lower() == "torch"]
    assert torch == ["torch==2.13.0"], f"{path}: torch must be pinned to 2.13.0, got {torch}"
    return lines


def _clean_env() -> dict[str, str]:
    drop = {"PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME"}
    return {k: v for k, v in os.environ.items() if k not in drop}


def fresh_venv(requirements: Path) -> Path:
    """A virtualenv with exactly ``requirements`` installed, cached by their hash."""
    lines = _check_pinned(requirements)
    key = hashlib.sha256("\n".join([sys.version, *lines]).encode()).hexdigest()[:16]
    venv = VENV_CACHE / key
    VENV_CACHE.mkdir(parents=True, exist_ok=True)
    with (VENV_CACHE / f"{key}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another test session may be building it
        if (venv / ".complete").is_file():
            return venv
        shutil.rmtree(venv, ignore_errors=True)
        started = time.monotonic()
        subprocess.run([str(BASE_PYTHON), "-m", "venv", str(venv)], check=True, env=_clean_env())
        pip = [str(venv / "bin/python"), "-m", "pip", "install", "--no-input", "-r"]
        done = subprocess.run(
            [*pip, str(requirements)],
            capture_output=True,
            text=True,
            timeout=PIP_TIMEOUT_S,
            env=_clean_env(),
        )
        assert done.returncode == 0, (
            f"pip install failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
        )
        (venv / "requirements.txt").write_text("\n".join(lines) + "\n")
        (venv / ".complete").write_text(f"{time.monotonic() - started:.0f} s\n")
        print(f"[fresh-env] built {venv} in {time.monotonic() - started:.0f} s", file=sys.stderr)
    return venv


def _python(venv: Path, code: str, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """Run ``code`` in the virtualenv's interpreter in isolated mode (``-I``: neither
    ``PYTHONPATH``, the user site nor the working directory is on ``sys.path``)."""
    cmd = [str(venv / "bin/python"), "-I", "-c", code, *args]
    return subprocess.run(
        cmd, cwd=cwd, capture_output=True, text=True, timeout=600, env=_clean_env()
    )


@pytest.fixture(scope="module")
def packaged(tmp_path_factory, tiny_split_dir, tiny_params, launcher) -> Iterator[dict]:
    """A popularity model logged, registered, promoted and packaged (serve.max_k 7)."""
    root = tmp_path_factory.mktemp("fresh-envs")
    embed.run(tiny_params.embed, tiny_split_dir, root / "embed", False)
    uri = f"sqlite:///{root}/mlflow.db"
    split = load_split(tiny_split_dir)
    item_ids = split.items.sort_values("item_idx")["item_id"].astype(str).tolist()
    model_dir = root / "model"
    PopularityRecommender().fit(split).save(model_dir)
    (model_dir / "item_ids.json").write_text(json.dumps(item_ids))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)  # Tracker sets it process-wide
        tracker = Tracker(uri, "fresh-envs")
        model_uri = tracker.log_model(model_dir)
        tracker.end()
        registry = Registry(uri, "lmrec")
        version = registry.register(
            model_uri, tracker.run_id, {DIGEST_TAG: model_digest(model_dir)}
        )
        registry.promote(version.number)
        params = launcher.write_params(root / "params.yaml", max_k=MAX_K)
        env = {**os.environ, "BENTOML_HOME": str(root / "bentoml")}
        cmd = [LMREC, "package", "--params", str(params), "--split", str(tiny_split_dir)]
        cmd += ["--embeddings", str(root / "embed"), "--out", str(root / "pkg")]
        cmd += ["--bentofile", str(REPO / "bentofile.yaml")]
        cmd += ["--lock", str(REPO / "requirements/lmrec.lock.txt")]
        done = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
        yield {
            "root": root,
            "uri": uri,
            "model_uri": model_uri,
            "record": json.loads((root / "pkg/package.json").read_text()),
            "item_ids": item_ids,
        }


def test_the_bento_serves_from_a_virtualenv_of_its_own_requirements(packaged, launcher):
    root, record = packaged["root"], packaged["record"]
    name, version = record["bento"].split(":")
    bento_dir = root / "bentoml/bentos" / name / version
    requirements = bento_dir / "env/python/requirements.txt"
    declared = {ln.split("==")[0].lower() for ln in _check_pinned(requirements)}
    assert {"scipy", "torch", "bentoml", "faiss-cpu", "pyarrow"} <= declared
    carried = json.loads((bento_dir / "src/lmrec/serving/serve_params.json").read_text())
    assert carried["max_k"] == MAX_K

    venv = fresh_venv(requirements)
    no_lmrec = _python(venv, "import lmrec", root)
    assert "No module named 'lmrec'" in no_lmrec.stderr  # only the Bento's copy can serve

    elsewhere = root / "elsewhere"  # no params.yaml here, and none is named
    elsewhere.mkdir()
    server = launcher.launch(root, None, bento=(venv, record["bento"]))
    try:
        server.ready_s = launcher.wait_for(server, "/readyz", READY_TIMEOUT_S)
        pythons = {Path(psutil.Process(p).exe()).resolve() for p in server.pids()}
        assert (venv / "bin/python").resolve() in pythons, pythons
        users = pd.read_parquet(root / "pkg/bundles/champion/users.parquet")
        user = str(users["user_id"].iloc[0])
        url = f"{server.base}/recommend"
        ok = httpx.post(url, json={"user_id": user, "k": 5}, timeout=30)
        assert ok.status_code == 200, ok.text
        items = ok.json()["items"]
        assert len(items) == 5 and {i["item_id"] for i in items} <= set(packaged["item_ids"])
        # The Bento's own serve params are in effect (the default max_k is 100).
        too_many = httpx.post(url, json={"user_id": user, "k": MAX_K + 1}, timeout=30)
        assert too_many.status_code == 400 and f"from 1 to {MAX_K}" in too_many.text
    finally:
        server.stop()
    print(f"[fresh-env] Bento ready in {server.ready_s:.1f} s", file=sys.stderr)


PREDICT = """
import json, sys
import mlflow.pyfunc, pandas as pd
model = mlflow.pyfunc.load_model(sys.argv[1])
out = model.predict(pd.DataFrame({"history": [json.loads(sys.argv[2])]}), params={"k": 5})
import lmrec
print(json.dumps({"lmrec": lmrec.__file__, "items": list(out["item_ids"][0])}))
"""


def test_the_pyfunc_loads_in_a_virtualenv_of_its_own_requirements(packaged, tmp_path):
    import mlflow

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", packaged["uri"])
        model_dir = Path(
            mlflow.artifacts.download_artifacts(packaged["model_uri"], dst_path=str(tmp_path))
        )
        expected = mlflow.pyfunc.load_model(str(model_dir))
    requirements = model_dir / "requirements.txt"
    lines = _check_pinned(requirements)
    assert not [ln for ln in lines if ln.split("==")[0] == "lmrec"]
    assert (model_dir / "code/lmrec/models/registry.py").is_file()
    history = packaged["item_ids"][:3]
    want = expected.predict(pd.DataFrame({"history": [history]}), params={"k": 5})

    venv = fresh_venv(requirements)
    done = _python(venv, PREDICT, tmp_path, str(model_dir), json.dumps(history))
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.splitlines()[-1])
    assert Path(got["lmrec"]).resolve().is_relative_to((model_dir / "code").resolve())
    assert got["items"] == list(want["item_ids"][0]) and len(got["items"]) == 5


def test_a_missing_lock_file_is_a_clear_error_before_any_import(tmp_path, packaged):
    env = {**os.environ, "MLFLOW_TRACKING_URI": packaged["uri"]}
    env["BENTOML_HOME"] = str(tmp_path / "bentoml")
    cmd = [LMREC, "package", "--params", str(packaged["root"] / "params.yaml")]
    cmd += ["--out", str(tmp_path / "pkg"), "--bentofile", str(REPO / "bentofile.yaml")]
    cmd += ["--lock", str(tmp_path / "missing.lock.txt")]
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr[-2000:]
    assert "missing.lock.txt not found" in done.stderr
    assert not (tmp_path / "bentoml").exists()  # nothing was imported into a model store
