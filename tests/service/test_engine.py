"""The serving engine in-process, on a tiny bundle: every request path and every refusal.

These tests check the model's own order, so their engines run with the exposure policy
off (``RAW``); tests/service/test_engine_exposure.py covers the policy.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lmrec import artifacts
from lmrec.config import ExposureParams, ServeParams
from lmrec.features.dataset import load_split
from lmrec.models.popularity import PopularityRecommender
from lmrec.serving.bundle import Bundle, build_bundle
from lmrec.serving.engine import Engine, RequestError
from lmrec.stages import embed
from lmrec.train.trainer import train_sequential

torch.set_num_threads(1)

#: serving params with the exposure policy off: lists in the model's order
RAW = ServeParams(exposure=ExposureParams(slots=0))


def save_with_ids(model, directory: Path, item_ids: list[str]) -> Path:
    model.save(directory)
    (directory / "item_ids.json").write_text(json.dumps(item_ids))
    return directory


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tiny_split_dir, tiny_params):
    """A trained tiny sequential model's bundle, plus the split and embeddings it came from."""
    root = tmp_path_factory.mktemp("engine")
    embed_dir = root / "embed"
    embed.run(tiny_params.embed, tiny_split_dir, embed_dir, False)
    split = load_split(tiny_split_dir)
    emb, _ = artifacts.load_embeddings(embed_dir)
    result = train_sequential(split, emb, tiny_params.train, root / "ckpt")
    ids = split.items.sort_values("item_idx")["item_id"].astype(str).tolist()
    model_dir = save_with_ids(result.model, root / "model", ids)
    bundle_dir = root / "bundle"
    build_bundle(model_dir, tiny_split_dir, embed_dir, bundle_dir, {"version": "3"})
    return {
        "root": root,
        "bundle": bundle_dir,
        "split": split,
        "split_dir": tiny_split_dir,
        "embed": embed_dir,
        "ids": ids,
    }


@pytest.fixture(scope="module")
def engine(tiny) -> Engine:
    return Engine.load(tiny["bundle"], RAW)


def known_user(engine: Engine) -> tuple[str, np.ndarray]:
    user_id, history = next((u, h) for u, h in engine.bundle.users.items() if len(h) >= 5)
    return user_id, history


def ids(result: dict) -> list[str]:
    return [item["item_id"] for item in result["items"]]


def test_known_user_gets_k_unseen_items_best_first(engine):
    user_id, history = known_user(engine)
    result = engine.recommend(user_id=user_id, k=10)
    assert result["path"] == "model" and result["known_user"]
    assert result["history_length"] == len(history)
    assert len(ids(result)) == 10 and len(set(ids(result))) == 10
    seen = {engine.item_ids[i] for i in history}
    assert not seen & set(ids(result))
    scores = [item["score"] for item in result["items"]]
    assert scores == sorted(scores, reverse=True)
    assert all(item["title"] for item in result["items"])


def test_exclude_seen_false_can_return_history_items(engine):
    user_id, history = known_user(engine)
    k = min(engine.n_items, 100)
    result = engine.recommend(user_id=user_id, k=k, exclude_seen=False)
    assert len(ids(result)) == k
    assert {engine.item_ids[i] for i in history} & set(ids(result))


def test_scores_match_the_model_on_the_same_history(engine):
    user_id, history = known_user(engine)
    result = engine.recommend(user_id=user_id, k=5)
    expected = engine.model.score([history])[0]
    for item in result["items"]:
        assert item["score"] == pytest.approx(expected[engine.index[item["item_id"]]], abs=1e-4)


def test_posted_history_is_a_session_after_the_stored_one(engine):
    user_id, history = known_user(engine)
    session = [engine.item_ids[i] for i in range(3)]
    result = engine.recommend(user_id=user_id, history=session, k=5)
    assert result["history_length"] == len(history) + 3
    anonymous = engine.recommend(history=session, k=5)
    assert anonymous["path"] == "model" and not anonymous["known_user"]
    assert not set(session) & set(ids(anonymous))


def test_unknown_user_without_history_gets_the_popular_items(engine):
    result = engine.recommend(user_id="never-seen-before", k=5)
    assert result["path"] == "cold_start" and not result["known_user"]
    popularity = engine.popularity[[engine.index[i] for i in ids(result)]]
    assert list(popularity) == sorted(engine.popularity, reverse=True)[:5]


def test_explanations_name_a_history_item(engine):
    user_id, history = known_user(engine)
    result = engine.recommend(user_id=user_id, k=5, explain=True)
    titles = {engine.titles[i] for i in history}
    for item in result["items"]:
        assert item["reason"].startswith("similar to ")
        assert any(repr(t) in item["reason"] for t in titles)
    cold = engine.recommend(k=3, explain=True)
    assert all(item["reason"].startswith("popular: ") for item in cold["items"])


def test_diversity_lowers_intra_list_similarity(engine):
    user_id, _ = known_user(engine)

    def mean_similarity(result: dict) -> float:
        vecs = engine.text[[engine.index[i] for i in ids(result)]]
        sims = vecs @ vecs.T
        return float(sims[~np.eye(len(vecs), dtype=bool)].mean())

    plain = engine.recommend(user_id=user_id, k=10)
    diverse = engine.recommend(user_id=user_id, k=10, diversity=0.9)
    assert len(set(ids(diverse))) == 10
    assert ids(diverse) != ids(plain)
    assert mean_similarity(diverse) < mean_similarity(plain)
    assert ids(engine.recommend(user_id=user_id, k=10, diversity=0.0)) == ids(plain)


def test_similar_items_are_nearest_by_text(engine):
    anchor = engine.item_ids[0]
    result = engine.similar_items(anchor, k=5)
    assert anchor not in ids(result) and len(ids(result)) == 5
    sims = [item["score"] for item in result["items"]]
    assert sims == sorted(sims, reverse=True)
    with pytest.raises(RequestError) as err:
        engine.similar_items("no-such-item")
    assert err.value.status == 404 and "no-such-item" in str(err.value)


@pytest.mark.parametrize(
    ("request_", "status", "words"),
    [
        ({"k": 0}, 400, "k must be"),
        ({"k": 101}, 400, "k must be"),
        ({"k": True}, 400, "k must be"),
        ({"history": ["nope", "also-nope"]}, 422, "'nope'"),
        ({"history": ["x"] * 10_000}, 413, "10000 items"),
        ({"diversity": 1.5}, 400, "diversity"),
        ({"user_id": ""}, 400, "user_id"),
    ],
)
def test_bad_requests_are_refused_with_a_status_and_a_message(engine, request_, status, words):
    with pytest.raises(RequestError) as err:
        engine.recommend(**request_)
    assert err.value.status == status
    assert words in str(err.value)


def test_faiss_index_agrees_with_exact_scoring(tiny, engine):
    indexed = Engine.load(tiny["bundle"], RAW.model_copy(update={"faiss_min_items": 1}))
    assert indexed.faiss_index is not None and engine.faiss_index is None
    overlaps = []
    for user_id in list(engine.bundle.users)[:30]:
        exact = set(ids(engine.recommend(user_id=user_id, k=10)))
        approx = set(ids(indexed.recommend(user_id=user_id, k=10)))
        overlaps.append(len(exact & approx) / 10)
    assert np.mean(overlaps) >= 0.9


def test_int8_quantised_encoder_keeps_the_ranking_close(tiny, engine):
    quantised = Engine.load(tiny["bundle"], RAW.model_copy(update={"quantize_int8": True}))
    overlaps = []
    for user_id in list(engine.bundle.users)[:30]:
        exact = set(ids(engine.recommend(user_id=user_id, k=10)))
        approx = set(ids(quantised.recommend(user_id=user_id, k=10)))
        overlaps.append(len(exact & approx) / 10)
    assert np.mean(overlaps) >= 0.7
    torch.backends.mha.set_fastpath_enabled(True)


def test_a_model_of_an_older_catalog_serves_its_own_items(tiny):
    """The bundle's catalog is the model's item list; histories keep only known items."""
    ids_all = tiny["ids"]
    older = ids_all[:-10]  # the model never saw the last 10 items
    model = PopularityRecommender()
    model.n_items = len(older)
    model.counts = np.arange(len(older), dtype=np.float32)
    model_dir = save_with_ids(model, tiny["root"] / "older-model", older)
    out = tiny["root"] / "older-bundle"
    info = build_bundle(model_dir, tiny["split_dir"], tiny["embed"], out, {"version": "1"})
    assert info["n_items"] == len(older) and info["items_missing_from_split"] == 0
    bundle = Bundle.read(out)
    assert bundle.catalog["item_id"].tolist() == older
    assert all(h.max(initial=-1) < len(older) for h in bundle.users.values())
    served = Engine(bundle, ServeParams())
    assert set(ids(served.recommend(k=5))) <= set(older)
    with pytest.raises(RequestError):
        served.recommend(history=[ids_all[-1]])
