"""The exposure policy in the engine (``serve.exposure``) and unknown posted history items.

The tiny catalog holds items without training interactions (the cold holdout): they are
fresh, so every list of ``min_k`` items or more shows one unless the model put one there.
"""

from __future__ import annotations

import numpy as np
import pytest

from lmrec.config import ExposureParams, ServeParams
from lmrec.serving.engine import Engine, RequestError

RAW = ServeParams(exposure=ExposureParams(slots=0))
K = 10


def ids(result: dict) -> list[str]:
    return [item["item_id"] for item in result["items"]]


@pytest.fixture(scope="module")
def engines(bundles) -> tuple[Engine, Engine]:
    """(policy on, the defaults; policy off) on the session's champion bundle."""
    return Engine.load(bundles.champion, ServeParams()), Engine.load(bundles.champion, RAW)


def best_fresh(engine: Engine, vector: np.ndarray, seen: set[int]) -> int:
    """The fresh unseen item the model scores highest (ties: lower index)."""
    fresh = [i for i in np.flatnonzero(engine.fresh.mask) if i not in seen]
    scores = engine.item_matrix[fresh] @ vector
    return int(min(zip(-scores, fresh, strict=True))[1])


def test_fresh_items_are_the_catalog_items_without_training_interactions(engines, bundles):
    exposed, _ = engines
    fresh = [exposed.item_ids[i] for i in np.flatnonzero(exposed.fresh.mask)]
    assert fresh == bundles.fresh and fresh
    assert exposed.fresh.scored.tolist() == np.flatnonzero(exposed.fresh.mask).tolist()


def test_a_known_users_list_ends_with_the_models_best_unseen_fresh_item(engines, bundles):
    exposed, raw = engines
    checked = 0
    for user_id in sorted(bundles.histories)[:30]:
        got, plain = ids(exposed.recommend(user_id, k=K)), ids(raw.recommend(user_id, k=K))
        if set(plain) & set(bundles.fresh):
            assert got == plain  # the model listed a fresh item already
            continue
        cached = exposed.user_cache[user_id]
        expected = exposed.item_ids[best_fresh(exposed, cached.vector, set(cached.seen))]
        assert got == plain[: K - 1] + [expected], user_id
        checked += 1
    assert checked >= 10


@pytest.mark.parametrize(
    "request_",
    [
        {"history": ["item00010", "item00011", "item00012"]},
        {"history": ["item00010"], "diversity": 0.7},
        {"history": ["item00010"], "exclude_seen": False},
        {"k": 20},
    ],
    ids=["posted-history", "diversity", "seen-kept", "known-user-k20"],
)
def test_every_model_path_reserves_a_slot(engines, bundles, request_):
    exposed, raw = engines
    request_ = {"user_id": sorted(bundles.histories)[0], "k": K} | request_
    if "history" in request_:
        request_.pop("user_id")
    got = ids(exposed.recommend(**request_))
    plain = ids(raw.recommend(**request_))
    assert set(got) & set(bundles.fresh)
    keep = len(got) - 1 if not set(plain) & set(bundles.fresh) else len(got)
    assert got[:keep] == plain[:keep]


@pytest.mark.parametrize(
    "serve", [{"faiss_min_items": 1}, {"quantize_int8": True}], ids=["faiss", "int8-torch"]
)
def test_the_faiss_and_torch_paths_reserve_a_slot(bundles, serve):
    engine = Engine.load(bundles.champion, ServeParams(**serve))
    for request_ in ({"user_id": sorted(bundles.histories)[1]}, {"history": ["item00003"]}):
        assert set(ids(engine.recommend(k=K, **request_))) & set(bundles.fresh)


def test_short_lists_and_the_policy_off_keep_the_model_order(engines, bundles):
    exposed, raw = engines
    user_id = sorted(bundles.histories)[2]
    assert exposed.recommend(user_id, k=4)["items"] == raw.recommend(user_id, k=4)["items"]
    assert ids(raw.recommend(k=K)) == bundles.popular[:K]


def test_cold_start_shows_fresh_items_in_recency_then_popularity_order(engines, bundles):
    exposed, _ = engines
    result = exposed.recommend(k=6, explain=True)
    assert ids(result) == bundles.popular[:5] + bundles.fresh[:1]
    assert result["items"][-1]["reason"] == "new: 0 interactions"
    assert result["items"][0]["reason"].startswith("popular: ")


def test_a_baseline_reserves_a_slot_from_its_own_scores(bundles):
    engine = Engine.load(bundles.challenger, ServeParams())  # popularity: fresh items score 0
    result = engine.recommend(history=["item00001"], k=K)
    assert ids(result)[-1] == bundles.fresh[0]


# ------------------------------------------------------------ unknown history items
def test_unknown_history_items_are_left_out_and_listed(engines, bundles):
    exposed, _ = engines
    result = exposed.recommend(history=["item00010", "ghost", "item00011", "ghost", "x"], k=5)
    assert result["ignored_items"] == ["ghost", "x"]
    assert result["history_length"] == 2
    assert result["items"] == exposed.recommend(history=["item00010", "item00011"], k=5)["items"]
    user_id = sorted(bundles.histories)[0]
    known = exposed.recommend(user_id, history=["ghost"], k=5)
    assert known["ignored_items"] == ["ghost"] and known["known_user"]
    assert known["history_length"] == len(bundles.histories[user_id])


def test_a_history_with_nothing_known_is_refused_naming_the_ids(engines):
    exposed, _ = engines
    with pytest.raises(RequestError) as err:
        exposed.recommend(user_id="nobody", history=[f"ghost{i}" for i in range(7)])
    assert err.value.status == 422
    assert "'ghost0'" in str(err.value) and "and 2 more" in str(err.value)


def test_a_score_quantile_keeps_weak_fresh_items_out(bundles):
    """With ``min_score_quantile`` q, only users whose best fresh item scores at least the
    q-quantile of all known users' best fresh scores get it in a reserved slot."""
    q = 0.5
    gated = Engine.load(
        bundles.champion, ServeParams(exposure=ExposureParams(min_score_quantile=q))
    )
    raw = Engine.load(bundles.champion, RAW)
    fresh = np.flatnonzero(gated.fresh.mask)
    vectors = np.stack([u.vector for u in gated.user_cache.values()])
    best = (vectors @ gated.item_matrix[fresh].T).max(axis=1)
    assert gated.fresh.threshold == pytest.approx(np.quantile(best, q), rel=1e-5)
    slotted = strong = 0
    for user_id in sorted(bundles.histories):
        got, plain = ids(gated.recommend(user_id, k=K)), ids(raw.recommend(user_id, k=K))
        if set(plain) & set(bundles.fresh):
            continue
        cached = gated.user_cache[user_id]
        top = best_fresh(gated, cached.vector, set(cached.seen))
        is_strong = float(gated.item_matrix[top] @ cached.vector) >= gated.fresh.threshold
        assert (got != plain) == is_strong, user_id
        slotted += got != plain
        strong += is_strong
    assert 0 < slotted < len(bundles.histories)


@pytest.mark.parametrize("weight", [0.4, 1.0])
def test_a_text_weighted_pick_blends_the_model_score_with_the_text_affinity(bundles, weight):
    """``text_weight`` w: the reserved slot goes to the fresh unseen item with the best
    (1-w) z(model score) + w z(text affinity to the last 20 history items), z over the known
    users x fresh items; at w = 1 that is the fresh item closest in text to the history."""
    from lmrec.serving.exposure import TEXT_WINDOW

    policy = ExposureParams(text_weight=weight)
    engine = Engine.load(bundles.champion, ServeParams(exposure=policy))
    raw = Engine.load(bundles.champion, RAW)
    fresh = np.flatnonzero(engine.fresh.mask)
    users = list(engine.user_cache)
    vectors = np.stack([engine.user_cache[u].vector for u in users])
    model = vectors @ engine.item_matrix[fresh].T
    profiles = np.stack([engine.text[engine.bundle.users[u][-TEXT_WINDOW:]].mean(0) for u in users])
    text = profiles @ engine.text[fresh].T
    scale = engine.fresh.scale
    assert scale.model_mean == pytest.approx(model.mean(), rel=1e-4)
    assert scale.text_std == pytest.approx(text.std(), rel=1e-4)
    checked = moved = 0
    for row, user_id in enumerate(users[:40]):
        got, plain = ids(engine.recommend(user_id, k=K)), ids(raw.recommend(user_id, k=K))
        if set(plain) & set(bundles.fresh):
            continue
        unseen = ~np.isin(fresh, engine.user_cache[user_id].seen)
        z = (1 - weight) * (model[row] - model.mean()) / model.std()
        z = z + weight * (text[row] - text.mean()) / text.std()
        if weight == 1.0:
            z = text[row]  # the text affinity alone: the same order
        expected = engine.item_ids[fresh[unseen][np.argmax(z[unseen])]]
        assert got == plain[: K - 1] + [expected], user_id
        posted = engine.recommend(
            history=[engine.item_ids[i] for i in engine.bundle.users[user_id]], k=K
        )
        assert ids(posted)[-1] == expected  # a posted history picks the same way
        checked += 1
        moved += expected != engine.item_ids[fresh[unseen][np.argmax(model[row][unseen])]]
    assert checked >= 10
    assert moved > 0  # the text moved some picks away from the model's own choice


def test_a_popularity_prior_chooses_the_fresh_item_but_not_which_lists_get_one(bundles):
    """``prior_weight`` g: the slot goes to the fresh unseen item with the best
    z(model score) + g * prior (the popularity its text predicts, ``PopularityPrior``), while
    which lists get a slot is decided by the model score alone, as without the prior."""
    from lmrec.serving.exposure import PopularityPrior

    gate = dict(min_score_quantile=0.5)
    engine = Engine.load(
        bundles.champion, ServeParams(exposure=ExposureParams(prior_weight=2.0, **gate))
    )
    plain_gate = Engine.load(bundles.champion, ServeParams(exposure=ExposureParams(**gate)))
    fresh = np.flatnonzero(engine.fresh.mask)
    prior = PopularityPrior.fit(engine.text, engine.popularity, engine.fresh.mask)
    assert np.allclose(engine.fresh.prior[fresh], 2.0 * prior(engine.text[fresh]))
    scale, raw = engine.fresh.scale, Engine.load(bundles.champion, RAW)
    checked = moved = 0
    for user_id in sorted(bundles.histories):
        plain = ids(raw.recommend(user_id, k=K))
        got, without = ids(engine.recommend(user_id, k=K)), ids(plain_gate.recommend(user_id, k=K))
        assert got[: K - 1] == without[: K - 1] == plain[: K - 1], user_id
        assert (got != plain) == (without != plain), user_id  # the same lists get a slot
        if got == plain:
            continue
        cached = engine.user_cache[user_id]
        unseen = fresh[~np.isin(fresh, cached.seen)]
        z = (engine.item_matrix[unseen] @ cached.vector - scale.model_mean) / scale.model_std
        expected = engine.item_ids[unseen[np.argmax(z + engine.fresh.prior[unseen])]]
        assert got[-1] == expected, user_id
        checked += 1
        moved += got[-1] != without[-1]
    assert checked >= 5
    assert moved > 0  # the prior moved some picks away from the model's own choice
