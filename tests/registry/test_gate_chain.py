"""evaluate -> gate -> refit -> register on the tiny profile, through the real CLI and a
real MLflow SQLite registry: worse candidates are refused with reasons and the champion
stays; a better one is promoted; re-running changes nothing; rollback serves the previous
version. The champion is compared as its held-out candidate (a refit has seen the test
events) and served as its refit.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from mlflow import MlflowClient

from lmrec.cli.dvc_stages import stage_argv, stage_names
from lmrec.exit_codes import ExitCode
from lmrec.features.dataset import load_split
from lmrec.models.random import RandomRecommender
from lmrec.models.registry import load_model
from lmrec.registry.store import CHAMPION, ROLLED_BACK_TAG, Registry
from lmrec.stages import embed

REPO = Path(__file__).resolve().parents[2]
LMREC = str(Path(sys.executable).parent / "lmrec")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ws(tmp_path_factory, tiny_split_dir, tiny_params, synthetic_world) -> Path:
    """A workspace with the tiny data, its split and embeddings (the refit reads the data)."""
    root = tmp_path_factory.mktemp("chain")
    (root / "data").mkdir()
    synthetic_world[0].to_parquet(root / "data/interactions.parquet", index=False)
    shutil.copytree(tiny_split_dir, root / "artifacts/preprocess")
    embed.run(tiny_params.embed, root / "artifacts/preprocess", root / "artifacts/embed", False)
    return root


def write_params(root: Path, name: str, **train) -> Path:
    """The tiny profile with train overrides; the first champion only has to reach half
    the best baseline, so that a better candidate exists for the promotion step."""
    raw = yaml.safe_load((REPO / "profiles/tiny.yaml").read_text())
    raw["train"]["sequential"].update(train.pop("sequential", {}))
    raw["train"].update(train)
    for check in raw["gate"]["checks"]:
        if check["against"] == "baselines":
            check["min_ratio"] = 0.5
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def lmrec(root: Path, command: str, params: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{root}/mlflow.db"}
    argv = [command, "--params", str(params), *extra]
    if command in stage_names(REPO / "dvc.yaml"):  # its paths as dvc.yaml gives them
        argv = stage_argv(command, *argv[1:], dvc_yaml=REPO / "dvc.yaml")[1:]
    cmd = [LMREC, *argv]
    return subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=600)


def ok(done: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def evaluate_and_gate(root: Path, params: Path) -> tuple[subprocess.CompletedProcess, dict]:
    ok(lmrec(root, "evaluate", params))
    gate = lmrec(root, "gate", params)
    return gate, json.loads((root / "artifacts/gate/gate.json").read_text())


def registry(root: Path) -> Registry:
    return Registry(f"sqlite:///{root}/mlflow.db", "lmrec")


def champion_number(root: Path) -> int | None:
    champion = registry(root).alias(CHAMPION)
    return None if champion is None else champion.number


def failed_reasons(verdict: dict) -> list[str]:
    return [c["reason"] for c in verdict["checks"] if c["status"] == "fail"]


def test_gate_refuses_worse_candidates_promotes_better_and_rolls_back(ws):
    first = write_params(ws, "first", sequential={"epochs": 6}, extra_seeds=[1])
    better = write_params(ws, "better")  # the tiny profile's 20 epochs
    scarce = write_params(ws, "scarce", data_fraction=0.05)
    split = load_split(ws / "artifacts/preprocess")
    probe = [split.history_for(u, "test") for u in range(20)]

    # 1. First registration: no champion, so champion checks are skipped.
    ok(lmrec(ws, "train", first, "--no-progress"))
    gate, verdict = evaluate_and_gate(ws, first)
    assert gate.returncode == 0, gate.stdout + gate.stderr
    skipped = [c for c in verdict["checks"] if c["status"] == "skip"]
    assert skipped and all("no champion yet" in c["reason"] for c in skipped)
    ok(lmrec(ws, "refit", first, "--no-progress"))
    ok(lmrec(ws, "register", first))
    assert champion_number(ws) == 1
    # The evaluation reached the candidate's MLflow run: test metrics and the PNG report.
    run_id = json.loads((ws / "artifacts/train/run.json").read_text())["mlflow_run_id"]
    client = registry(ws).client
    assert client.get_run(run_id).data.metrics["test.overall.ndcg_at_10"] > 0.3
    # What the version serves is the refit of that candidate on every event.
    v1_refit = json.loads((ws / "artifacts/refit/refit.json").read_text())["model_digest"]
    assert registry(ws).version(1).served_digest == v1_refit
    logged = {a.path for a in client.list_artifacts(run_id, "evaluation")}
    assert logged == {"evaluation/report.png", "evaluation/comparison.json"}
    assert registry(ws).version(1).tags["git_commit"]
    assert registry(ws).version(1).tags["params_sha256"]
    seeds = json.loads((ws / "artifacts/evaluate/metrics.json").read_text())["seeds"]
    assert seeds["n"] == 2 and seeds["replicas"] == ["seed_1"]
    assert seeds["overall"]["ndcg@10"]["n"] == 2 and seeds["overall"]["ndcg@10"]["std"] > 0
    v1_scores = load_model(ws / "artifacts/train/model").score(probe)
    v1_served = load_model(ws / "artifacts/refit/model").score(probe)

    # 2. A model trained on 5% of the users: refused against the champion.
    ok(lmrec(ws, "train", scarce, "--no-progress"))
    gate, verdict = evaluate_and_gate(ws, scarce)
    assert gate.returncode == ExitCode.REFUSED, gate.stdout + gate.stderr
    assert not verdict["passed"] and verdict["champion_version"] == 1
    reasons = failed_reasons(verdict)
    assert any("overall.ndcg@10" in r and "champion v1" in r for r in reasons), reasons
    assert "gate refused" in gate.stdout and "FAIL" in gate.stdout
    refused = lmrec(ws, "register", scarce)
    assert refused.returncode == ExitCode.REFUSED
    assert "refused" in refused.stderr
    assert [v.number for v in registry(ws).versions()] == [1]
    assert champion_number(ws) == 1

    # 3. Random scores: refused on value, baseline and champion checks.
    model = RandomRecommender().fit(split)
    model_dir = ws / "artifacts/train/model"
    shutil.rmtree(model_dir)
    model.save(model_dir)
    ids = split.items.sort_values("item_idx")["item_id"].astype(str).tolist()
    (model_dir / "item_ids.json").write_text(json.dumps(ids))
    gate, verdict = evaluate_and_gate(ws, scarce)
    assert gate.returncode == ExitCode.REFUSED
    failed = {c["check"] for c in verdict["checks"] if c["status"] == "fail"}
    assert {
        "overall.ndcg@10 value",
        "overall.ndcg@10 vs baselines",
        "overall.ndcg@10 vs champion",
    } <= failed
    assert lmrec(ws, "register", scarce).returncode == ExitCode.REFUSED
    assert champion_number(ws) == 1

    # 4. A better model (more epochs): passes and becomes the champion. The champion it
    # beat is v1's held-out candidate, not v1's refit (which trained on the test events).
    ok(lmrec(ws, "train", better, "--no-progress"))
    gate, verdict = evaluate_and_gate(ws, better)
    assert gate.returncode == 0, gate.stdout + gate.stderr
    compared = [c for c in verdict["checks"] if c["check"].endswith("vs champion")]
    assert sum(c["status"] == "pass" for c in compared) >= 5, compared
    comparison = json.loads((ws / "artifacts/evaluate/comparison.json").read_text())
    assert comparison["models"]["champion"]["champion"]["digest"] == registry(ws).version(1).digest
    # The champion's registration time is in the outputs; its age (which changes every
    # second) only in what is printed and logged to the candidate's MLflow run.
    registered = registry(ws).version(1).created_at
    assert comparison["models"]["champion"]["champion"]["registered_at"] == registered
    metrics = json.loads((ws / "artifacts/evaluate/metrics.json").read_text())
    assert metrics["champion"]["registered_at"] == registered
    assert "age_days" not in comparison["models"]["champion"]["champion"]
    run_id = json.loads((ws / "artifacts/train/run.json").read_text())["mlflow_run_id"]
    logged = MlflowClient(f"sqlite:///{ws}/mlflow.db").get_run(run_id).data.metrics
    assert 0 < logged["test.champion.age_days"] < 1  # v1 was registered minutes ago
    stale = lmrec(ws, "register", better)  # artifacts/refit is still v1's
    assert stale.returncode == 2 and "not of the gated candidate" in stale.stderr
    ok(lmrec(ws, "refit", better, "--no-progress"))
    ok(lmrec(ws, "register", better))
    record = json.loads((ws / "artifacts/register/registration.json").read_text())
    assert record["version"] == 2 and record["promoted"] and record["previous_champion"] == 1
    assert champion_number(ws) == 2
    v2_scores = load_model(ws / "artifacts/train/model").score(probe)

    # 5. Re-running the chain for the same candidate changes nothing.
    before = [(v.number, v.aliases, v.tags) for v in registry(ws).versions()]
    gate, verdict = evaluate_and_gate(ws, better)
    assert gate.returncode == 0 and verdict["candidate_is_champion"]
    ok(lmrec(ws, "register", better))
    record = json.loads((ws / "artifacts/register/registration.json").read_text())
    assert not record["created"] and not record["promoted"] and not record["challenger_set"]
    assert [(v.number, v.aliases, v.tags) for v in registry(ws).versions()] == before
    assert "champion unchanged" in ok(lmrec(ws, "promote", better, "--version", "2")).stdout

    # 6. Rollback: the next load of the champion serves version 1 again.
    assert "2 -> version 1" in ok(lmrec(ws, "rollback", better, "--from-version", "2")).stdout
    assert "unchanged" in ok(lmrec(ws, "rollback", better, "--from-version", "2")).stdout
    assert champion_number(ws) == 1
    reg = registry(ws)
    served = load_model(reg.download(reg.alias(CHAMPION).number, ws / "served", served=True))
    np.testing.assert_array_equal(served.score(probe), v1_served)
    evaluated = load_model(reg.download(reg.alias(CHAMPION).number, ws / "evaluated"))
    np.testing.assert_array_equal(evaluated.score(probe), v1_scores)
    assert not np.array_equal(v1_scores, v2_scores)
    assert not np.array_equal(v1_scores, v1_served)
    assert ROLLED_BACK_TAG in reg.version(2).tags

    # 7. The pipeline does not quietly re-promote a rolled-back version.
    ok(lmrec(ws, "evaluate", better))
    ok(lmrec(ws, "gate", better))
    ok(lmrec(ws, "register", better))
    assert champion_number(ws) == 1
    listing = ok(lmrec(ws, "versions", better)).stdout
    assert "v1" in listing and "champion" in listing and "rolled back" in listing


def test_rollback_without_an_earlier_champion_is_a_clear_error(tmp_path):
    params = write_params(tmp_path, "p")
    done = lmrec(tmp_path, "rollback", params)
    assert done.returncode == 1
    assert "no champion to roll back" in done.stderr
