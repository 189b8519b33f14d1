"""train -> evaluate -> gate -> refit -> register on the tiny profile, through the real CLI,
a real MLflow SQLite store and the real serving bundle builder.

The refit has trained on what the candidate never saw (every user's validation and test
events, the cold-holdout items), for the candidate's chosen epoch count; it refuses a
refused or stale verdict; register refuses a refit of another candidate and otherwise
versions the refit with the candidate's metrics; the bundle built from the refit's data
carries the users' full histories and the popularity of every event.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml
from safetensors.numpy import load_file

from lmrec.cli.dvc_stages import stage_argv
from lmrec.features.dataset import load_split
from lmrec.models.registry import load_model
from lmrec.registry.store import (
    CANDIDATE_MODEL_TAG,
    DIGEST_TAG,
    REFIT_DIGEST_TAG,
    Registry,
    lmrec_model_dir,
    model_digest,
)
from lmrec.serving.bundle import Bundle, build_bundle
from lmrec.stages import embed

REPO = Path(__file__).resolve().parents[2]
LMREC = str(Path(sys.executable).parent / "lmrec")
DVC_YAML = REPO / "dvc.yaml"
pytestmark = pytest.mark.slow


def lmrec(root: Path, command: str, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{root}/mlflow.db"}
    argv = stage_argv(command, "--params", str(root / "params.yaml"), *extra, dvc_yaml=DVC_YAML)
    cmd = [LMREC, *argv[1:]]
    return subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=600)


def ok(done: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def read(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def ws(tmp_path_factory, tiny_split_dir, tiny_params, synthetic_world) -> Path:
    """The tiny profile's split, data and embeddings, a candidate that passed the gate, and
    its refit."""
    root = tmp_path_factory.mktemp("refit")
    interactions, items, _ = synthetic_world
    (root / "data").mkdir()
    interactions.to_parquet(root / "data/interactions.parquet", index=False)
    items.to_parquet(root / "data/items.parquet", index=False)
    shutil.copytree(tiny_split_dir, root / "artifacts/preprocess")
    embed.run(tiny_params.embed, root / "artifacts/preprocess", root / "artifacts/embed", False)
    raw = yaml.safe_load((REPO / "profiles/tiny.yaml").read_text())
    raw["gate"]["latency"]["p95_ms"] = 10000.0  # the shared CI box's load is not the point
    (root / "params.yaml").write_text(yaml.safe_dump(raw))
    ok(lmrec(root, "train", "--no-progress"))
    ok(lmrec(root, "evaluate"))
    ok(lmrec(root, "gate"))
    done = ok(lmrec(root, "refit", "--no-progress"))
    assert "refit model written to artifacts/refit/model/" in done.stdout
    return root


def test_refit_trains_on_every_event_for_the_chosen_epochs(ws):
    split = load_split(ws / "artifacts/preprocess")
    record = read(ws / "artifacts/refit/refit.json")
    candidate_dir, refit_dir = ws / "artifacts/train/model", ws / "artifacts/refit/model"
    assert record["candidate_digest"] == model_digest(candidate_dir)
    assert record["candidate_digest"] == read(ws / "artifacts/gate/gate.json")["candidate_digest"]
    assert record["model_digest"] == model_digest(refit_dir)
    epochs = read(candidate_dir / "training.json")["best_epoch"] + 1
    assert record["epochs"] == epochs == read(refit_dir / "config.json")["epochs_trained"]
    counts = split.summary
    held = counts["val"] + counts["test"] + counts["cold_interactions"]
    assert record["interactions"] == counts["train"] + held
    assert (record["users"], record["items"]) == (split.n_users, split.n_items)
    # The same layout as the candidate's model directory, loadable the same way.
    assert {p.name for p in refit_dir.iterdir()} == {p.name for p in candidate_dir.iterdir()}
    refit, candidate = load_model(refit_dir), load_model(candidate_dir)
    # The holdout items' ID embeddings were trained by the refit only.
    cold = split.items["is_cold"].to_numpy()
    assert cold.any()
    refit_known = load_file(str(refit_dir / "weights.safetensors"))["id_known"].astype(bool)
    cand_known = load_file(str(candidate_dir / "weights.safetensors"))["id_known"].astype(bool)
    assert not cand_known[cold].any() and refit_known[cold].all()
    assert not np.allclose(refit.item_matrix()[cold], candidate.item_matrix()[cold], atol=1e-3)
    # Its training data holds every user's validation and test item and the cold events.
    data = load_split(ws / "artifacts/refit/data")
    seen = {u: set(s.tolist()) for u, s in zip(data.user_ids, data.train, strict=True)}
    for user, user_id in enumerate(split.user_ids):
        assert {split.val_items[user], split.test_items[user]} <= seen[user_id], user_id
    for row in split.cold.itertuples():
        assert row.item_idx in seen[split.user_ids[row.user_idx]]


def test_refit_logs_an_mlflow_run_linked_to_the_candidate(ws):
    facts = read(ws / "artifacts/refit/run.json")
    record = read(ws / "artifacts/refit/refit.json")
    candidate_run = read(ws / "artifacts/train/run.json")["mlflow_run_id"]
    assert facts["candidate_run_id"] == candidate_run and facts["refit_seconds"] > 0
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{ws}/mlflow.db")
    run = client.get_run(facts["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.info.run_name == "refit"
    assert run.data.tags["candidate_digest"] == record["candidate_digest"]
    assert run.data.tags["candidate_run_id"] == candidate_run
    assert run.data.params["refit.epochs"] == str(record["epochs"])
    losses = client.get_metric_history(run.info.run_id, "loss")
    assert sorted(m.step for m in losses) == list(range(record["epochs"]))
    mlflow.set_tracking_uri(f"sqlite:///{ws}/mlflow.db")
    logged = mlflow.artifacts.download_artifacts(
        artifact_uri=facts["mlflow_model_uri"], dst_path=str(ws / "logged")
    )
    assert model_digest(lmrec_model_dir(Path(logged))) == record["model_digest"]


def test_refit_refuses_a_refused_or_stale_verdict(ws):
    verdict = read(ws / "artifacts/gate/gate.json")
    refused = {**verdict, "passed": False, "exit_code": 4}
    refused["checks"] = [{"check": "x", "status": "fail", "reason": "ndcg@10 too low"}]
    (ws / "refused.json").write_text(json.dumps(refused))
    done = lmrec(ws, "refit", "--gate", "refused.json", "--out", "refit-refused")
    assert done.returncode == 4, done.stdout + done.stderr
    assert "gate refused" in done.stderr and "ndcg@10 too low" in done.stderr
    stale = {**verdict, "candidate_digest": "0" * 64}
    (ws / "stale.json").write_text(json.dumps(stale))
    done = lmrec(ws, "refit", "--gate", "stale.json", "--out", "refit-stale")
    assert done.returncode == 2 and "stale.json: judged another model" in done.stderr
    assert not (ws / "refit-refused").exists() and not (ws / "refit-stale").exists()


def test_register_refuses_a_refit_of_another_candidate(ws):
    other = ws / "refit-other"
    shutil.copytree(ws / "artifacts/refit", other)
    record = read(other / "refit.json")
    (other / "refit.json").write_text(json.dumps({**record, "candidate_digest": "f" * 64}))
    done = lmrec(ws, "register", "--refit", str(other), "--out", "reg-other")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "refit.json: refit of candidate ffffffffffff, not of the gated" in done.stderr
    (other / "refit.json").write_text(json.dumps(record))
    (other / "model/extra.json").write_text("{}")  # not the model refit.json records
    done = lmrec(ws, "register", "--refit", str(other), "--out", "reg-other")
    assert done.returncode == 2 and "records another model" in done.stderr
    assert Registry(f"sqlite:///{ws}/mlflow.db", "lmrec").versions() == []


def test_register_versions_the_refit_with_the_candidates_metrics(ws):
    ok(lmrec(ws, "register"))
    registry = Registry(f"sqlite:///{ws}/mlflow.db", "lmrec")
    (version,) = registry.versions()
    record = read(ws / "artifacts/refit/refit.json")
    facts, train_run = read(ws / "artifacts/refit/run.json"), read(ws / "artifacts/train/run.json")
    assert version.source == facts["mlflow_model_uri"] and version.run_id == facts["mlflow_run_id"]
    assert version.tags[DIGEST_TAG] == record["candidate_digest"] == version.digest
    assert version.tags[REFIT_DIGEST_TAG] == record["model_digest"] == version.served_digest
    assert version.tags["mlflow_run_id"] == train_run["mlflow_run_id"]
    assert version.tags[CANDIDATE_MODEL_TAG] == train_run["mlflow_model_uri"]
    assert float(version.tags["metric.test.overall.ndcg_at_10"]) > 0.3
    served = registry.download(version.number, ws / "dl-served", served=True)
    evaluated = registry.download(version.number, ws / "dl-evaluated")
    assert model_digest(served) == record["model_digest"]
    assert model_digest(evaluated) == record["candidate_digest"]
    again = read(ws / "artifacts/register/registration.json")
    assert again["refit_digest"] == record["model_digest"] and again["created"]
    ok(lmrec(ws, "register"))
    assert not read(ws / "artifacts/register/registration.json")["created"]
    assert len(registry.versions()) == 1


def test_the_refit_bundle_has_full_histories_and_the_popularity_of_every_event(ws):
    info = build_bundle(
        ws / "artifacts/refit/model",
        ws / "artifacts/refit/data",
        ws / "artifacts/embed",
        ws / "bundle",
        {"version": "test", "alias": "local", "digest": "x"},
    )
    assert info["items_missing_from_split"] == 0
    bundle = Bundle.read(ws / "bundle")
    split = load_split(ws / "artifacts/preprocess")
    data = load_split(ws / "artifacts/refit/data")
    for user, user_id in enumerate(split.user_ids):
        history = bundle.users[str(user_id)].tolist()
        newest = [split.val_items[user], split.test_items[user]]
        warm = [i for i in history if not split.items["is_cold"][i]]
        assert warm[-2:] == newest and len(history) > len(split.train[user]) + 1, user_id
    popularity = bundle.catalog.sort_values("item_idx")["popularity"].to_numpy()
    np.testing.assert_array_equal(popularity, data.items["n_train"].to_numpy())
    assert popularity.sum() == read(ws / "artifacts/refit/refit.json")["interactions"]
    cold = split.items["is_cold"].to_numpy()
    assert (popularity[cold] > 0).all() and (split.items["n_train"].to_numpy()[cold] == 0).all()
