"""The gate's latency check times the served path: ``Engine.recommend`` on a serving bundle
of the candidate, not the model's own ``recommend``.

The candidate is a popularity model on the tiny split (fits at once); the embeddings are
seeded vectors in the embed stage's format (the gate reads them only to build the bundle).
The comparison is the evaluate stage's format with no configured checks, so the verdict
rests on the non-finite and latency checks alone.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from lmrec.artifacts import COMPARISON_FILE, EMBEDDINGS_FILE, write_model_dir
from lmrec.artifacts import ENCODER_FILE as META_FILE
from lmrec.features.dataset import load_split
from lmrec.models.base import Recommender
from lmrec.models.popularity import PopularityRecommender
from lmrec.registry.store import model_digest
from lmrec.serving.engine import Engine
from lmrec.stages import gate as gate_stage


@pytest.fixture()
def candidate(tmp_path, tiny_split_dir) -> dict[str, Path]:
    split = load_split(tiny_split_dir)
    train_dir, embed_dir, eval_dir = tmp_path / "train", tmp_path / "embed", tmp_path / "eval"
    item_ids = split.items["item_id"].astype(str).tolist()
    write_model_dir(PopularityRecommender().fit(split), train_dir / "model", item_ids, {})
    embed_dir.mkdir()
    vectors = np.random.default_rng(0).normal(size=(split.n_items, 16)).astype(np.float32)
    save_file({"embeddings": vectors}, str(embed_dir / EMBEDDINGS_FILE))
    (embed_dir / META_FILE).write_text(json.dumps({"encoder": "seeded-test-vectors"}))
    eval_dir.mkdir()
    candidate_metrics = {"overall": {"n_users": split.n_users, "n_nonfinite": 0}}
    comparison = {
        "stage": "test",
        "candidate_digest": model_digest(train_dir / "model"),
        "models": {"candidate": candidate_metrics},
    }
    (eval_dir / COMPARISON_FILE).write_text(json.dumps(comparison))
    return {"train": train_dir, "embed": embed_dir, "eval": eval_dir, "split": tiny_split_dir}


def test_latency_is_timed_on_the_engine_of_the_served_bundle(
    candidate, tiny_params, tmp_path, monkeypatch
):
    calls = {"engine": [], "model": 0}
    engine_recommend, model_recommend = Engine.recommend, Recommender.recommend

    def spy_engine(self, *args, **kwargs):  # the real method runs; the call is recorded
        calls["engine"].append((self.version, kwargs))
        return engine_recommend(self, *args, **kwargs)

    def spy_model(self, *args, **kwargs):
        calls["model"] += 1
        return model_recommend(self, *args, **kwargs)

    monkeypatch.setattr(Engine, "recommend", spy_engine)
    monkeypatch.setattr(Recommender, "recommend", spy_model)
    latency = tiny_params.gate.latency.model_copy(update={"requests": 30, "warmup": 5})
    params = tiny_params.model_copy(
        update={"gate": tiny_params.gate.model_copy(update={"checks": [], "latency": latency})}
    )
    report = gate_stage.run(
        params,
        eval_dir=candidate["eval"],
        train_dir=candidate["train"],
        split_dir=candidate["split"],
        embed_dir=candidate["embed"],
        out_dir=tmp_path / "gate",
    )
    assert calls["model"] == 0, "the gate timed Recommender.recommend, not the served engine"
    assert len(calls["engine"]) == 35 and report["latency"]["requests"] == 30
    version, request = calls["engine"][0]
    assert version == "candidate"  # the bundle the gate built for the candidate
    assert request["k"] == latency.k and all(isinstance(i, str) for i in request["history"])
    written = json.loads((tmp_path / "gate" / "gate.json").read_text())
    assert written["passed"] and written["latency"]["p95_ms"] > 0
    assert any(c["check"] == "latency p95" and c["status"] == "pass" for c in written["checks"])
