"""Items joining a served catalog (``lmrec.serving.new_items``), in-process.

Applied to an engine, an added item is similar-searchable, recommendable with the vector the
model gives text alone, usable in posted histories and fresh for the exposure policy; known
users' prepared lists stay what live scoring returns; faiss, baselines and updates of
existing items are covered. Through ``NewItems`` (a real store and the real encoder) a copy
of a catalog item reproduces the embed stage's embedding, and a restarted engine gets the
stored items back without encoding them again.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from lmrec.config import ExposureParams, ServeParams
from lmrec.io import LmrecError
from lmrec.serving.catalog_store import NewItem, StoredItem
from lmrec.serving.engine import Engine
from lmrec.serving.new_items import Encoders, NewItems, apply

RAW = ServeParams(exposure=ExposureParams(slots=0))
DAY = 86_400.0


def ids(result: dict) -> list[str]:
    return [item["item_id"] for item in result["items"]]


def embedding(engine: Engine, item_id: str, scale: float = 1.0) -> np.ndarray:
    """The text embedding the model holds for a catalog item (the embed stage's output)."""
    return engine.item_net.item_text[engine.index[item_id]].numpy() * scale


def stored(item_id: str, added_at: float | None = None, **fields) -> StoredItem:
    item = NewItem(item_id, fields.pop("title", f"Title of {item_id}"), **fields)
    return StoredItem(1, item, time.time() if added_at is None else added_at)


def text_only(engine: Engine, vector: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return engine.item_net.text_proj(torch.from_numpy(vector)).numpy()


@pytest.fixture()
def engine(bundles) -> Engine:
    return Engine.load(bundles.champion, ServeParams())


@pytest.fixture(scope="module")
def encoders() -> Encoders:
    return Encoders()  # the real encoder, loaded once for the module


def test_an_added_item_is_searchable_recommendable_and_fresh(engine):
    status = apply(engine, [stored("new-1", categories="t5")], embedding(engine, "item00005")[None])
    assert status == ["added"]
    new = engine.index["new-1"]
    assert (new, engine.n_items, engine.model_items) == (80, 81, 80)
    nearest = engine.similar_items("item00005", k=1)["items"][0]
    assert nearest["item_id"] == "new-1" and nearest["score"] == pytest.approx(1.0, abs=1e-5)
    assert len(ids(engine.similar_items("new-1", k=3))) == 3
    # the model's vector for text alone, as for its own items without training interactions
    expected = text_only(engine, embedding(engine, "item00005"))
    np.testing.assert_allclose(engine.item_matrix[new], expected, rtol=1e-6, atol=1e-6)
    session = engine.recommend(history=["item00005", "new-1"], k=5)
    assert session["ignored_items"] == [] and session["history_length"] == 2
    assert "new-1" not in ids(session)
    assert engine.fresh.mask[new] and new in engine.fresh.scored
    assert engine.fresh.recent[0] == new  # the newest addition first
    assert ids(engine.recommend(k=6))[-1] == "new-1"  # cold start: its reserved slot


def test_the_only_fresh_item_reaches_every_list(engine, bundles):
    apply(engine, [stored("new-1")], embedding(engine, "item00020")[None])
    engine.popularity = np.maximum(engine.popularity, 1.0)  # catalog items: not fresh now
    engine.popularity[engine.index["new-1"]] = 0.0
    engine.set_fresh()
    for user_id in sorted(bundles.histories)[:20]:
        assert "new-1" in ids(engine.recommend(user_id, k=10))
        assert "new-1" in ids(engine.recommend(history=bundles.histories[user_id][-3:], k=5))


def test_a_known_users_fresh_pick_is_kept_until_the_catalog_changes(engine, bundles):
    user_id = sorted(bundles.histories)[3]
    first = engine.recommend(user_id, k=10)
    assert user_id in engine.fresh.by_user
    assert engine.recommend(user_id, k=10) == first
    apply(engine, [stored("new-1")], embedding(engine, "item00020", 4.0)[None])
    assert engine.fresh.by_user == {}  # recomputed for the new catalog
    cached = engine.user_cache[user_id]
    expected = engine.fresh.best(1, cached.seen, cached.vector, None, engine.item_matrix)[0][0]
    assert ids(engine.recommend(user_id, k=10))[-1] == engine.item_ids[expected]


def test_an_added_item_ages_out_of_the_policy(engine, bundles):
    apply(
        engine,
        [stored("old", added_at=time.time() - 31 * DAY)],
        embedding(engine, "item00001")[None],
    )
    assert not engine.fresh.mask[engine.index["old"]]
    assert ids(engine.recommend(k=6))[-1] == bundles.fresh[0]
    almost = time.time() - 30 * DAY + 1.0  # ages out in a second
    apply(engine, [stored("young", added_at=almost)], embedding(engine, "item00002")[None])
    assert ids(engine.recommend(k=6))[-1] == "young"
    time.sleep(1.2)
    assert ids(engine.recommend(k=6))[-1] == bundles.fresh[0]


def test_an_update_replaces_the_text_and_keeps_the_trained_id_part(engine):
    x = engine.index["item00005"]
    net = engine.item_net
    new_text = embedding(engine, "item00020")
    result = apply(engine, [stored("item00005", title="Renamed", categories="a|b")], new_text[None])
    assert result == ["updated"] and engine.n_items == engine.model_items
    assert engine.titles[x] == "Renamed" and engine.categories[x] == {"a", "b"}
    np.testing.assert_allclose(engine.text[x], new_text / np.linalg.norm(new_text), atol=1e-6)
    id_part = (net.item_id.weight[x] * net.id_known[x]).detach().numpy()
    expected = text_only(engine, new_text) + id_part
    np.testing.assert_allclose(engine.item_matrix[x], expected, rtol=1e-5, atol=1e-6)
    assert not engine.fresh.mask[x]  # still the trained, popular item
    apply(engine, [stored("new-1", added_at=123.0)], embedding(engine, "item00001")[None])
    apply(engine, [stored("new-1", title="Again")], new_text[None])  # an update of an added item
    new = engine.index["new-1"]
    assert engine.titles[new] == "Again" and engine.added_at[new] == 123.0
    np.testing.assert_allclose(engine.item_matrix[new], text_only(engine, new_text), atol=1e-6)


@pytest.mark.parametrize("faiss_min_items", [10**9, 1], ids=["exact", "faiss"])
def test_prepared_lists_stay_what_live_scoring_returns(bundles, faiss_min_items):
    params = RAW.model_copy(update={"precompute_top_k": 5, "faiss_min_items": faiss_min_items})
    prepared = Engine.load(bundles.champion, params)
    live = Engine.load(bundles.champion, params.model_copy(update={"precompute_top_k": 0}))
    common = max(set(prepared.item_ids[i] for u in prepared.user_cache.values() for i in u.top[:1]))
    changes = [
        ("new-1", "item00003", 1.0),
        ("new-2", "item00030", 3.0),  # a long vector: it enters many lists
        (common, "item00040", 1.0),  # an item many lists hold, now another text
        ("new-2", "item00031", 0.5),  # and an added one, changed
    ]
    for item_id, text_of, scale in changes:
        vector = embedding(prepared, text_of, scale)[None]
        apply(prepared, [stored(item_id)], vector)
        apply(live, [stored(item_id)], vector)
    assert any(prepared.index["new-1"] in u.top for u in prepared.user_cache.values()) or any(
        prepared.index["new-2"] in u.top for u in prepared.user_cache.values()
    )
    for user_id in sorted(bundles.histories)[:40]:
        for k in (1, 5, 8):
            a, b = prepared.recommend(user_id, k=k), live.recommend(user_id, k=k)
            assert a["items"] == b["items"], (user_id, k)
            assert len(set(ids(a))) == len(ids(a))


def test_faiss_serves_added_and_updated_items_like_exact_scoring(bundles):
    exact = Engine.load(bundles.champion, RAW)
    indexed = Engine.load(bundles.champion, RAW.model_copy(update={"faiss_min_items": 1}))
    for engine in (exact, indexed):
        apply(engine, [stored("new-1")], embedding(engine, "item00030", 3.0)[None])
        apply(engine, [stored("item00030")], embedding(engine, "item00031")[None])
    overlaps = []
    for user_id in sorted(bundles.histories)[:30]:
        a = ids(exact.recommend(history=bundles.histories[user_id][-5:], k=10))
        b = ids(indexed.recommend(history=bundles.histories[user_id][-5:], k=10))
        assert len(set(b)) == len(b) == 10  # the replaced row is never listed twice
        overlaps.append(len(set(a) & set(b)) / 10)
    assert np.mean(overlaps) >= 0.9


def test_a_baseline_searches_added_items_but_cannot_score_them(bundles):
    engine = Engine.load(bundles.challenger, ServeParams())  # popularity: no text tower
    assert not engine.vectorized
    apply(engine, [stored("new-1")], np.ones((1, engine.text.shape[1]), np.float32))
    assert len(ids(engine.similar_items("new-1", k=3))) == 3
    assert ids(engine.recommend(k=6))[-1] == "new-1"  # cold start: by recency
    listed = engine.recommend(history=["item00001", "new-1"], k=100)
    assert listed["ignored_items"] == ["new-1"] and "new-1" not in ids(listed)
    with pytest.raises(Exception, match="no item of the history is known"):
        engine.recommend(history=["new-1"])


# --------------------------------------------------------------------- NewItems
def copy_of(synthetic_world, item_id: str, new_id: str | None = None) -> NewItem:
    items = synthetic_world[1].set_index("item_id")
    row = items.loc[item_id]
    return NewItem.parse(new_id or item_id, row["title"], row["text"], row["categories"])


def test_a_copy_of_a_catalog_item_gets_the_embed_stages_embedding(
    engine, synthetic_world, encoders
):
    item = copy_of(synthetic_world, "item00005", "copy-5")
    x = engine.index["item00005"]
    assert item.encoder_text == engine.trained_text[x]  # assembled as preprocess does
    vector = encoders.encode(engine.encoder, [item.encoder_text])[0]
    np.testing.assert_allclose(vector, embedding(engine, "item00005"), atol=1e-5)


def test_stored_items_come_back_in_a_new_engine_without_encoding(
    bundles, synthetic_world, encoders, tmp_path
):
    db = tmp_path / "fb.db"
    served = Engine.load(bundles.champion, ServeParams())
    first = NewItems(db, encoders=encoders)
    first.reapply(served)
    posts = [
        NewItem.parse("new-a", "Brand new", "A story about kalo.", ["topic1", "fresh"]),
        NewItem.parse("item00005", "Retitled 5", "Another story.", "topic5"),
        copy_of(synthetic_world, "item00007"),  # what the model was trained on: nothing to do
    ]
    before = served.item_matrix[served.index["item00007"]].copy()
    for post in posts:
        first.sync(served, first.prepare(post, {"champion": served}))
    assert served.applied_seq == first.last_seq == 3
    np.testing.assert_array_equal(served.item_matrix[served.index["item00007"]], before)
    second = NewItems(db)  # a restart: nothing loaded
    again = Engine.load(bundles.champion, ServeParams())
    second.reapply(again)
    assert second.encoders._loaded == {}  # the stored embeddings were used
    assert again.item_ids == served.item_ids and again.titles == served.titles
    np.testing.assert_array_equal(again.item_matrix, served.item_matrix)
    np.testing.assert_array_equal(again.text, served.text)
    np.testing.assert_array_equal(again.added_at, served.added_at)
    assert again.applied_seq == 3


def test_sync_catches_up_an_engine_loaded_while_items_were_stored(bundles, encoders, tmp_path):
    items = NewItems(tmp_path / "fb.db", encoders=encoders)
    served, loading = (Engine.load(bundles.champion, ServeParams()) for _ in range(2))
    items.reapply(served)
    items.reapply(loading)  # read the store before the post below
    post = NewItem.parse("new-b", "Late", "", "")
    items.sync(served, items.prepare(post, {"champion": served}))
    assert "new-b" not in loading.index and loading.applied_seq < items.last_seq
    items.sync(loading)
    assert loading.index["new-b"] == served.index["new-b"]
    np.testing.assert_array_equal(loading.item_matrix, served.item_matrix)


def test_an_engine_without_an_encoder_record_refuses_items(engine, tmp_path):
    engine.encoder = None
    with pytest.raises(LmrecError, match="encoder.json"):
        NewItems(tmp_path / "fb.db").prepare(NewItem.parse("x", "X", "", ""), {"champion": engine})
