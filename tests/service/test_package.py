"""`lmrec package`: registry aliases -> serving bundles -> BentoML models -> a Bento, with a
real MLflow SQLite registry, a real BentoML store (BENTOML_HOME in a temp dir) and a real
`bentoml build`. The packaged champion follows promotions and rollbacks; a refit version is
packaged as its refit, with the full histories and popularity of the refit's data.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from lmrec.features.dataset import load_split, write_all_events
from lmrec.features.split import all_events
from lmrec.models.popularity import PopularityRecommender
from lmrec.models.random import RandomParams, RandomRecommender
from lmrec.registry.store import (
    CANDIDATE_MODEL_TAG,
    DIGEST_TAG,
    REFIT_DIGEST_TAG,
    Registry,
    model_digest,
)
from lmrec.serving.bundle import Bundle
from lmrec.stages import embed
from lmrec.train.tracking import Tracker

REPO = Path(__file__).resolve().parents[2]
LMREC = str(Path(sys.executable).parent / "lmrec")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ws(tmp_path_factory, tiny_split_dir, tiny_params) -> Iterator[dict]:
    root = tmp_path_factory.mktemp("package")
    embed.run(tiny_params.embed, tiny_split_dir, root / "embed", False)
    uri = f"sqlite:///{root}/mlflow.db"
    with pytest.MonkeyPatch.context() as mp:
        # Tracker (MLflow) sets MLFLOW_TRACKING_URI process-wide; undone after the module.
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        yield _logged_models(root, tiny_split_dir, uri)


def _logged_models(root: Path, tiny_split_dir: Path, uri: str) -> dict:
    split = load_split(tiny_split_dir)
    ids = split.items.sort_values("item_idx")["item_id"].astype(str).tolist()
    registry = Registry(uri, "lmrec")
    versions = []
    for n, model in enumerate([PopularityRecommender(), RandomRecommender()]):
        model_dir = root / f"model{n}"
        model.fit(split).save(model_dir)
        (model_dir / "item_ids.json").write_text(json.dumps(ids))
        tracker = Tracker(uri, "package-test")
        model_uri = tracker.log_model(model_dir)
        tracker.end()
        tags = {DIGEST_TAG: model_digest(model_dir)}
        versions.append(registry.register(model_uri, tracker.run_id, tags).number)
    params = root / "params.yaml"
    params.write_text((REPO / "profiles/tiny.yaml").read_text())
    return {"root": root, "split": tiny_split_dir, "uri": uri, "params": params, "v": versions}


def package(ws: dict, *extra: str, split: Path | None = None) -> dict:
    env = {**os.environ, "MLFLOW_TRACKING_URI": ws["uri"], "BENTOML_HOME": str(ws["root"] / "bh")}
    cmd = [LMREC, "package", "--params", str(ws["params"]), "--split", str(split or ws["split"])]
    cmd += ["--embeddings", str(ws["root"] / "embed"), "--out", str(ws["root"] / "pkg")]
    cmd += ["--bentofile", str(REPO / "bentofile.yaml"), *extra]
    done = subprocess.run(cmd, cwd=ws["root"], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return json.loads((ws["root"] / "pkg/package.json").read_text())


def store_models(ws: dict) -> list[tuple[str, str, str]]:
    """(name, version, alias label) of every model in the test's BentoML store, oldest first."""
    env = {**os.environ, "BENTOML_HOME": str(ws["root"] / "bh")}
    code = (
        "import bentoml, json; ms = sorted(bentoml.models.list(), key=lambda m: "
        "m.info.creation_time); print(json.dumps([(m.tag.name, m.tag.version, "
        "m.info.labels.get('version')) for m in ms]))"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return [tuple(row) for row in json.loads(out.stdout)]


def test_no_champion_is_a_clear_error(ws):
    env = {**os.environ, "MLFLOW_TRACKING_URI": ws["uri"], "BENTOML_HOME": str(ws["root"] / "bh")}
    cmd = [LMREC, "package", "--params", str(ws["params"]), "--no-build", "--split", "s"]
    cmd += ["--embeddings", "e", "--out", "pkg", "--bentofile", str(REPO / "bentofile.yaml")]
    done = subprocess.run(cmd, cwd=ws["root"], env=env, capture_output=True, text=True)
    assert done.returncode == 1
    assert "has no champion" in done.stderr


def test_package_follows_the_champion_alias(ws):
    registry = Registry(ws["uri"], "lmrec")
    v1, v2 = ws["v"]
    registry.promote(v1)

    record = package(ws)
    champion = record["models"]["champion"]
    assert champion["version"] == v1 and champion["bentoml_model"].startswith("lmrec-champion:v1-")
    assert record["models"]["challenger"]["version"] is None
    assert record["bento"].startswith("lmrec:")
    bundle = ws["root"] / "pkg/bundles/champion"
    assert {p.name for p in bundle.iterdir()} >= {"model", "catalog.parquet", "bundle.json"}
    bento_file = (ws["root"] / "bh/bentos/lmrec").glob("*/bento.yaml")
    assert any("lmrec-champion" in p.read_text() for p in bento_file)

    # Idempotent: packaging the same champion again imports nothing new.
    before = store_models(ws)
    assert (
        package(ws, "--no-build")["models"]["champion"]["bentoml_model"]
        == (champion["bentoml_model"])
    )
    assert store_models(ws) == before

    # A challenger is packaged beside the champion; promoting it moves :latest.
    registry.set_challenger(v2)
    record = package(ws, "--no-build")
    assert record["models"]["challenger"]["version"] == v2
    registry.promote(v2)
    record = package(ws, "--no-build")
    assert record["models"]["champion"]["version"] == v2
    assert record["models"]["challenger"] == {"version": None, "stale_removed": 1}
    latest = [m for m in store_models(ws) if m[0] == "lmrec-champion"][-1]
    assert latest[2] == str(v2)
    assert not [m for m in store_models(ws) if m[0] == "lmrec-challenger"]

    # Rollback: the next package makes version 1 the newest (served) champion again.
    registry.rollback()
    record = package(ws, "--no-build")
    assert record["models"]["champion"]["version"] == v1
    latest = [m for m in store_models(ws) if m[0] == "lmrec-champion"][-1]
    assert latest[2] == str(v1)


def _refit_data(ws: dict, interactions, preprocess) -> Path:
    """The refit stage's data for the tiny split: every event as training data."""
    split = load_split(ws["split"])
    events, _ = all_events(interactions, split.items["item_id"], preprocess)
    out = ws["root"] / "refit-data"
    write_all_events(out, events, split.items, {"interactions": len(events)})
    return out


def test_a_refit_version_is_packaged_as_its_refit_with_full_histories(
    ws, synthetic_world, tiny_params
):
    data_dir = _refit_data(ws, synthetic_world[0], tiny_params.preprocess)
    data, split = load_split(data_dir), load_split(ws["split"])
    refit_dir = ws["root"] / "refit-model"
    RandomRecommender(RandomParams(seed=5)).fit(data).save(refit_dir)  # a stand-in refit
    (refit_dir / "item_ids.json").write_text(json.dumps(data.items["item_id"].tolist()))
    tracker = Tracker(ws["uri"], "package-test")
    refit_uri = tracker.log_model(refit_dir)
    tracker.end()
    registry = Registry(ws["uri"], "lmrec")
    candidate = registry.version(ws["v"][0])
    refit_digest = model_digest(refit_dir)
    tags = {
        DIGEST_TAG: candidate.digest,
        REFIT_DIGEST_TAG: refit_digest,
        CANDIDATE_MODEL_TAG: candidate.source,
    }
    number = registry.register(refit_uri, tracker.run_id, tags).number
    registry.promote(number)

    champion = package(ws, "--no-build", split=data_dir)["models"]["champion"]
    assert champion["version"] == number and champion["digest"] == refit_digest
    assert champion["candidate_digest"] == candidate.digest
    assert champion["bentoml_model"] == f"lmrec-champion:v{number}-{refit_digest[:8]}"
    bundle = Bundle.read(ws["root"] / "pkg/bundles/champion")
    assert model_digest(bundle.root / "model") == refit_digest  # the refit, not the candidate
    cold = split.items["is_cold"].to_numpy()
    for user, user_id in enumerate(split.user_ids):
        history = bundle.users[str(user_id)].tolist()
        warm = [i for i in history if not cold[i]]
        assert warm[-2:] == [split.val_items[user], split.test_items[user]], user_id
    popularity = bundle.catalog.sort_values("item_idx")["popularity"].to_numpy()
    np.testing.assert_array_equal(popularity, data.items["n_train"].to_numpy())
    assert (popularity[cold] > 0).all()  # the holdout items' events count too
