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

The virtualenvs come from cluster/venvs.py (``fresh_venv``), cached by a hash of the
requirements: the cluster's service (tests/cluster) uses the same Bento environment, so a
CI run builds it once.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
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
MAX_K = 7
READY_TIMEOUT_S = 300.0  # the first start in a fresh virtualenv compiles every .pyc


def _load_venvs():
    """cluster/venvs.py, once per process (cluster/cluster.py imports it as ``venvs``)."""
    if "venvs" not in sys.modules:
        spec = importlib.util.spec_from_file_location("venvs", REPO / "cluster" / "venvs.py")
        sys.modules["venvs"] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules["venvs"])
    return sys.modules["venvs"]


venvs = _load_venvs()
fresh_venv, _check_pinned, _clean_env = venvs.fresh_venv, venvs.check_pinned, venvs.clean_env


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
    cmd += ["--split", str(tmp_path / "split"), "--embeddings", str(tmp_path / "embed")]
    cmd += ["--out", str(tmp_path / "pkg"), "--bentofile", str(REPO / "bentofile.yaml")]
    cmd += ["--lock", str(tmp_path / "missing.lock.txt")]
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr[-2000:]
    assert "missing.lock.txt not found" in done.stderr
    assert not (tmp_path / "bentoml").exists()  # nothing was imported into a model store
