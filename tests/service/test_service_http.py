"""The HTTP service end to end: a real ``bentoml serve`` process per configuration, no mocks.

Covers the docs/design.md serving API: recommend by user id (pseudonymised or raw), by a posted
session history (unknown items ignored and listed) and cold start; the exposure policy's
reserved slot (the tiny catalog has items without training interactions); explanations;
MMR diversity; similar items; the feedback round trip into the store; bearer-token auth;
readiness while the model loads; the A/B split (stable per user, versions and metrics per
variant); bad input answered 4xx with a JSON message, never 5xx; no acknowledged feedback
lost when the server is SIGKILLed. ``POST /items`` is in test_service_items.py.
"""

from __future__ import annotations

import functools
import json
import re
import signal
import sqlite3
import threading
import time
import uuid
from pathlib import Path

import bentoml
import httpx
import pytest
import yaml

from lmrec.config import ServeParams
from lmrec.data.contract import pseudonymise_id
from lmrec.serving.engine import Engine
from lmrec.serving.feedback import FeedbackStore

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def post(base: str, path: str, body: object = None, **kwargs) -> httpx.Response:
    """POST ``body`` as JSON (or ``content=`` raw bytes) and return the response."""
    if "content" not in kwargs:
        kwargs["content"] = json.dumps(body)
    headers = {"content-type": "application/json", **kwargs.pop("headers", {})}
    return httpx.post(f"{base}{path}", headers=headers, timeout=30, **kwargs)


def json_error(response: httpx.Response, *statuses: int) -> str:
    """Assert ``response`` is one of ``statuses`` with a JSON ``{"error": message}``."""
    assert response.status_code in statuses, (response.status_code, response.text[:500])
    assert response.headers["content-type"].startswith("application/json"), response.headers
    message = response.json().get("error")
    assert isinstance(message, str) and message.strip(), response.text[:500]
    return message


def ids(result: dict) -> list[str]:
    return [item["item_id"] for item in result["items"]]


@functools.cache
def _tiny_engine(champion: Path) -> Engine:
    serve = yaml.safe_load((REPO / "profiles" / "tiny.yaml").read_text())["serve"]
    return Engine.load(champion, ServeParams(**serve))


def tiny_engine(bundles) -> Engine:
    """The champion bundle in-process, with the serve params the plain server runs with."""
    return _tiny_engine(bundles.champion)


@pytest.fixture(scope="module")
def client(server):
    with bentoml.SyncHTTPClient(server.base, server_ready_timeout=30) as opened:
        yield opened


@pytest.fixture(scope="module")
def user(bundles) -> tuple[str, list[str]]:
    """A known (pseudonymised) user with the longest history, and that history."""
    user_id = max(bundles.histories, key=lambda u: (len(set(bundles.histories[u])), u))
    return user_id, bundles.histories[user_id]


# ------------------------------------------------------------------ recommend
def test_recommend_by_user_id(client, bundles, user):
    user_id, history = user
    result = client.recommend(user_id=user_id, k=5)
    assert len(result["items"]) == 5
    assert len(set(ids(result))) == 5
    assert not set(ids(result)) & set(history)  # exclude_seen defaults to true
    for item in result["items"]:
        assert item["title"] == bundles.titles[item["item_id"]] and item["title"]
        assert "reason" not in item
    scores = [item["score"] for item in result["items"]]
    assert scores[:-1] == sorted(scores[:-1], reverse=True)  # the last slot: exposure policy
    # the engine's answer under the served params (the tiny profile: a fresh item only for
    # users whose best fresh pick clears the score quantile; tests/service/test_engine_exposure)
    assert ids(result) == ids(tiny_engine(bundles).recommend(user_id, k=5))
    assert result["ignored_items"] == []
    assert result["model_version"] == "7"
    assert result["variant"] == "champion"
    assert result["path"] == "model"
    assert re.fullmatch(r"[0-9a-f]{32}", result["request_id"])
    assert client.recommend(user_id=user_id, k=5)["request_id"] != result["request_id"]


def test_raw_user_id_is_pseudonymised_like_ingest(client, bundles):
    raw = next(
        f"user{u:05d}" for u in range(500) if pseudonymise_id(f"user{u:05d}") in bundles.histories
    )
    by_raw = client.recommend(user_id=raw, k=5)
    by_pseudonym = client.recommend(user_id=pseudonymise_id(raw), k=5)
    assert by_raw["path"] == "model"
    assert by_raw["items"] == by_pseudonym["items"]


def test_every_answer_is_logged_as_impressions_under_its_request_id(client, server):
    answer = client.recommend(user_id="dora@example.com", k=4)
    deadline, rows = time.monotonic() + 10, []
    while not rows and time.monotonic() < deadline:  # written by a thread, off the answer
        conn = sqlite3.connect(server.feedback_db)
        rows = conn.execute(
            "SELECT user_id, model_version, variant, item_id, position FROM impressions "
            "WHERE request_id = ? ORDER BY position",
            (answer["request_id"],),
        ).fetchall()
        conn.close()
        time.sleep(0.05)
    user = pseudonymise_id("dora@example.com")  # never the raw id
    assert rows == [(user, "7", "champion", item, i) for i, item in enumerate(ids(answer))]


def test_exclude_seen_drops_history_and_can_be_turned_off(client, bundles, user):
    user_id, history = user
    n_items = len(bundles.item_ids)
    unseen = client.recommend(user_id=user_id, k=100, exclude_seen=True)
    assert len(unseen["items"]) == n_items - len(set(history))
    assert not set(ids(unseen)) & set(history)
    everything = client.recommend(user_id=user_id, k=100, exclude_seen=False)
    assert len(everything["items"]) == n_items  # k is capped at the catalog
    assert set(history) <= set(ids(everything))


def test_recommend_by_posted_history(client, bundles):
    session = bundles.item_ids[10:13]
    result = client.recommend(history=session, k=7)
    assert result["path"] == "model"
    assert len(result["items"]) == 7
    assert not set(ids(result)) & set(session)
    assert result["variant"] == "champion" and result["model_version"] == "7"


def test_unknown_history_items_are_ignored_and_listed(client, bundles, user):
    session = [bundles.item_ids[10], "nope", bundles.item_ids[11], "nada", "nope"]
    result = client.recommend(history=session, k=5)
    assert result["ignored_items"] == ["nope", "nada"]
    assert result["path"] == "model" and len(result["items"]) == 5
    known_only = client.recommend(history=[bundles.item_ids[10], bundles.item_ids[11]], k=5)
    assert result["items"] == known_only["items"]
    known = client.recommend(user_id=user[0], history=["nope"], k=5)  # a known user: kept
    assert known["ignored_items"] == ["nope"] and known["path"] == "model"


def test_user_id_and_posted_history_are_combined(client, bundles, user):
    user_id, history = user
    session = [i for i in bundles.item_ids if i not in history][:2]
    result = client.recommend(user_id=user_id, history=session, k=100)
    assert not set(ids(result)) & (set(history) | set(session))
    assert len(result["items"]) == len(bundles.item_ids) - len(set(history) | set(session))


def test_unknown_user_gets_the_cold_start_popular_items(client, bundles):
    result = client.recommend(user_id="nobody-has-this-id", k=6)
    assert result["path"] == "cold_start"
    assert ids(result) == bundles.popular[:5] + bundles.fresh[:1]  # + the exposure slot
    scores = [item["score"] for item in result["items"]]
    assert scores == sorted(scores, reverse=True)
    assert client.recommend(k=6)["items"] == result["items"]  # no user, no history: same


def test_explain_gives_every_item_a_reason(client, user):
    for result in (
        client.recommend(user_id=user[0], k=8, explain=True),
        client.recommend(history=user[1][:3], k=8, explain=True),
        client.recommend(user_id="nobody-has-this-id", k=8, explain=True),
    ):
        assert len(result["items"]) == 8
        for item in result["items"]:
            assert isinstance(item["reason"], str) and item["reason"].strip(), item
    reasons = [i["reason"] for i in result["items"]]  # cold start: popular, then a new item
    assert all(r.startswith("popular") for r in reasons[:-1]) and reasons[-1].startswith("new")


def test_diversity_reranks_with_mmr(client, user):
    plain = client.recommend(user_id=user[0], k=10)
    diverse = client.recommend(user_id=user[0], k=10, diversity=1.0)
    assert len(diverse["items"]) == 10
    assert len(set(ids(diverse))) == 10
    assert ids(diverse) != ids(plain)
    assert ids(diverse)[0] == ids(plain)[0]  # MMR starts from the most relevant item
    assert not set(ids(diverse)) & set(user[1])


# -------------------------------------------------------------- similar items
def test_similar_items(client, bundles):
    anchor = bundles.item_ids[5]
    result = client.similar_items(item_id=anchor, k=6)
    assert len(result["items"]) == 6
    assert anchor not in ids(result)
    assert len(set(ids(result))) == 6
    assert all(item["title"] == bundles.titles[item["item_id"]] for item in result["items"])
    scores = [item["score"] for item in result["items"]]
    assert scores == sorted(scores, reverse=True)
    assert result["model_version"] == "7"


def test_similar_items_of_an_unknown_item_is_404(server):
    response = post(server.base, "/similar_items", {"item_id": "no-such-item", "k": 3})
    assert "no-such-item" in json_error(response, 404)


# ------------------------------------------------------------------- feedback
def test_feedback_round_trip_reaches_the_store(client, server, bundles):
    request_id = f"rt-{uuid.uuid4().hex}"
    item = bundles.item_ids[3]
    answer = client.feedback(user_id="alice", item_id=item, event="click", request_id=request_id)
    assert answer["status"] == "recorded" and answer["variant"] == "champion"
    assert isinstance(answer["seq"], int) and answer["seq"] >= 1
    with FeedbackStore(server.feedback_db) as store:
        rows = store.to_frame()
    row = rows[rows["request_id"] == request_id]
    assert len(row) == 1
    event = row.iloc[0]
    stored = (event["user_id"], event["item_id"], event["event"])
    assert stored == (pseudonymise_id("alice"), item, "click")  # never the raw id
    assert (event["model_version"], event["variant"]) == ("7", "champion")
    assert int(event["seq"]) == answer["seq"]
    assert abs(float(event["timestamp"]) - time.time()) < 120


def test_feedback_is_503_while_the_log_is_locked_and_a_retry_is_stored_once(server, bundles):
    body = {"user_id": "carol", "item_id": bundles.item_ids[2], "event": "click"}
    tag = uuid.uuid4().hex
    assert post(server.base, "/feedback", {**body, "request_id": f"open-{tag}"}).status_code == 200
    body["request_id"] = f"locked-{tag}"
    other = sqlite3.connect(server.feedback_db, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another writer holds the lock past the busy timeout
    try:
        locked = post(server.base, "/feedback", body)
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert "locked" in json_error(locked, 503)
    assert locked.headers["retry-after"] == "3"
    with FeedbackStore(server.feedback_db) as store:
        assert body["request_id"] not in set(store.to_frame()["request_id"])  # nothing written
    retried = [post(server.base, "/feedback", body) for _ in range(2)]  # the client retries
    assert [r.status_code for r in retried] == [200, 200], retried[0].text
    assert retried[0].json()["seq"] == retried[1].json()["seq"]
    with FeedbackStore(server.feedback_db) as store:
        rows = store.to_frame()
    assert (rows["request_id"] == body["request_id"]).sum() == 1


def test_events_past_the_retention_limit_are_erased_at_start(server, launcher):
    audit = server.feedback_db.parent / "audit.log"  # serve.feedback.audit_log null: beside
    deadline = time.monotonic() + 20
    while not audit.is_file() and time.monotonic() < deadline:  # a thread of its own
        time.sleep(0.1)
    record = json.loads(audit.read_text().splitlines()[0])
    assert record["action"] == "expire" and record["deleted"]["feedback_events"] == 1
    with FeedbackStore(server.feedback_db) as store:
        assert launcher.expired_request not in set(store.to_frame()["request_id"])


# ----------------------------------------------------------------------- auth
@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer wrong", "Bearer {token}x", "Basic {token}", "{token}"],
    ids=["none", "wrong-token", "token-prefix", "wrong-scheme", "no-scheme"],
)
@pytest.mark.parametrize(
    "path", ["/recommend", "/similar_items", "/feedback", "/items", "/admin/reload"]
)
def test_auth_refuses_missing_or_wrong_tokens(auth_server, launcher, path, authorization):
    body = {"user_id": "u", "item_id": "i", "event": "click", "title": "T"}
    headers = (
        {}
        if authorization is None
        else {"authorization": authorization.format(token=launcher.token)}
    )
    response = post(auth_server.base, path, body, headers=headers)
    assert "token" in json_error(response, 401)
    assert response.headers["www-authenticate"] == "Bearer"


def test_auth_accepts_the_bearer_token(auth_server, launcher, bundles):
    headers = {"authorization": f"Bearer {launcher.token}"}
    response = post(auth_server.base, "/recommend", {"k": 3}, headers=headers)
    assert response.status_code == 200, response.text
    with bentoml.SyncHTTPClient(auth_server.base, token=launcher.token) as authed:
        assert len(authed.recommend(k=3)["items"]) == 3
        assert len(authed.similar_items(item_id=bundles.item_ids[0], k=2)["items"]) == 2


def test_admin_reload_takes_the_admin_token_not_the_api_token(auth_server, launcher):
    api = {"authorization": f"Bearer {launcher.token}"}
    refused = post(auth_server.base, "/admin/reload", {}, headers=api)
    assert "token" in json_error(refused, 401)
    admin = {"authorization": f"Bearer {launcher.admin_token}"}
    reloaded = post(auth_server.base, "/admin/reload", {}, headers=admin)
    assert reloaded.status_code == 200, reloaded.text
    assert reloaded.json()["status"] == "unchanged"


def test_production_refuses_to_start_without_tokens_and_a_secret_salt(tmp_path, bundles, launcher):
    bare = {"LMREC_PRODUCTION": "1", "LMREC_USER_ID_SALT": ""}  # no tokens (OWN_ENV), no salt
    server = launcher.launch(tmp_path, bundles.champion, extra_env=bare)
    try:
        assert server.proc.wait(timeout=120) != 0
    finally:
        server.stop()
    log = server.log_tail(20_000)
    assert "LMREC_PRODUCTION=1 and the service refuses to start" in log, log[-3000:]
    for name in ("LMREC_API_TOKEN", "LMREC_ADMIN_TOKEN", "LMREC_USER_ID_SALT"):
        assert f"{name} is unset" in log


@pytest.mark.parametrize("path", ["/livez", "/readyz", "/metrics", "/docs.json"])
def test_auth_leaves_probes_metrics_and_docs_open(auth_server, path):
    assert httpx.get(f"{auth_server.base}{path}", timeout=10).status_code == 200


def test_without_auth_no_header_is_needed(server):
    assert post(server.base, "/recommend", {"k": 2}).status_code == 200
    assert (
        post(server.base, "/recommend", {"k": 2}, headers={"authorization": "Bearer x"}).status_code
        == 200
    )


# ------------------------------------------------------------------ readiness
def test_readyz_is_503_until_the_model_is_loaded(tmp_path, bundles, launcher):
    server = launcher.launch(tmp_path, bundles.champion, load_delay_s=4)
    try:
        launcher.wait_for(server, "/livez")
        ready = httpx.get(f"{server.base}/readyz", timeout=10)
        assert ready.status_code == 503, ready.text
        assert "not loaded" in json_error(post(server.base, "/recommend", {"k": 3}), 503)
        body = {"user_id": "u", "item_id": "i", "event": "click"}
        json_error(post(server.base, "/feedback", body), 503)
        json_error(post(server.base, "/similar_items", {"item_id": "i"}), 503)
        waited = launcher.wait_for(server, "/readyz")
        assert waited > 1.0  # the 4 s delay was still running when /livez came up
        assert post(server.base, "/recommend", {"k": 3}).status_code == 200
    finally:
        server.stop()


# ------------------------------------------------------------------------ A/B
AB_USERS = [f"ab-user-{i:04d}" for i in range(200)]
VERSIONS = {"champion": "7", "challenger": "8"}


def test_ab_split_is_stable_per_user_and_versioned(ab_server):
    with httpx.Client(base_url=ab_server.base, timeout=30) as http:
        first = {}
        for user_id in AB_USERS:
            result = http.post("/recommend", json={"user_id": user_id, "k": 3}).json()
            assert result["model_version"] == VERSIONS[result["variant"]]
            first[user_id] = result["variant"]
        share = sum(v == "challenger" for v in first.values()) / len(first)
        assert 0.3 < share < 0.7, share
        for user_id in AB_USERS[::4]:
            again = http.post("/recommend", json={"user_id": user_id, "k": 3}).json()
            assert again["variant"] == first[user_id]
        anonymous = http.post("/recommend", json={"history": [], "k": 3}).json()
        assert anonymous["variant"] == "champion"
        metrics = http.get("/metrics").text
    for variant in VERSIONS:
        pattern = rf'^lmrec_requests_total\{{[^}}]*variant="{variant}"[^}}]*\}} [1-9]'
        assert re.search(pattern, metrics, re.M), metrics[-3000:]


def test_ab_feedback_records_the_variant_and_its_version(ab_server):
    challenger_user = next(
        u
        for u in AB_USERS
        if post(ab_server.base, "/recommend", {"user_id": u, "k": 1}).json()["variant"]
        == "challenger"
    )
    tag = uuid.uuid4().hex
    implied = post(
        ab_server.base,
        "/feedback",
        {
            "user_id": challenger_user,
            "item_id": "x",
            "event": "click",
            "request_id": f"{tag}-implied",
        },
    )
    named = post(
        ab_server.base,
        "/feedback",
        {
            "user_id": "any",
            "item_id": "x",
            "event": "click",
            "request_id": f"{tag}-named",
            "variant": "challenger",
        },
    )
    assert implied.json()["variant"] == named.json()["variant"] == "challenger"
    with FeedbackStore(ab_server.feedback_db) as store:
        rows = store.to_frame().set_index("request_id")
    for suffix in ("implied", "named"):
        assert rows.loc[f"{tag}-{suffix}", "variant"] == "challenger"
        assert rows.loc[f"{tag}-{suffix}", "model_version"] == "8"


# ------------------------------------------------------------------ bad input
ITEM = "item00000"  # a catalog item of the synthetic tiny data
BAD_REQUESTS = [
    ("k-zero", "/recommend", {"k": 0}, (400,)),
    ("k-over-max", "/recommend", {"k": 101}, (400,)),
    ("k-string", "/recommend", {"k": "x"}, (400,)),
    ("k-float", "/recommend", {"k": 1.5}, (400,)),
    ("k-null", "/recommend", {"k": None}, (400,)),
    ("k-negative", "/recommend", {"k": -3}, (400,)),
    ("k-huge", "/recommend", {"k": 10**30}, (400,)),
    ("no-known-history-item", "/recommend", {"history": ["nope", "nada"]}, (422,)),
    ("history-10000-items", "/recommend", {"history": [ITEM] * 10_000}, (413,)),
    ("history-string", "/recommend", {"history": ITEM}, (400,)),
    ("history-of-ints", "/recommend", {"history": [1, 2]}, (400,)),
    ("history-of-null", "/recommend", {"history": [None]}, (400,)),
    ("user-id-int", "/recommend", {"user_id": 42}, (400,)),
    ("user-id-empty", "/recommend", {"user_id": ""}, (400,)),
    ("user-id-too-long", "/recommend", {"user_id": "u" * 300}, (400,)),
    ("user-id-object", "/recommend", {"user_id": {"a": 1}}, (400,)),
    ("diversity-2", "/recommend", {"diversity": 2}, (400,)),
    ("diversity-negative", "/recommend", {"diversity": -0.1}, (400,)),
    ("diversity-string", "/recommend", {"diversity": "lots"}, (400,)),
    ("exclude-seen-string", "/recommend", {"exclude_seen": "maybe"}, (400,)),
    ("list-body", "/recommend", [1, 2, 3], (400,)),
    ("string-body", "/recommend", "recommend", (400,)),
    ("null-body", "/recommend", None, (400,)),
    ("similar-missing-item", "/similar_items", {"k": 3}, (400,)),
    ("similar-item-int", "/similar_items", {"item_id": 7}, (400,)),
    ("similar-k-zero", "/similar_items", {"item_id": ITEM, "k": 0}, (400,)),
    ("similar-k-over-max", "/similar_items", {"item_id": ITEM, "k": 101}, (400,)),
    ("similar-list-body", "/similar_items", [ITEM], (400,)),
    ("feedback-empty-body", "/feedback", {}, (400,)),
    ("feedback-missing-event", "/feedback", {"user_id": "a", "item_id": ITEM}, (400,)),
    ("feedback-missing-user", "/feedback", {"item_id": ITEM, "event": "click"}, (400,)),
    ("feedback-empty-strings", "/feedback", {"user_id": "", "item_id": "", "event": ""}, (422,)),
    ("feedback-blank-event", "/feedback", {"user_id": "a", "item_id": ITEM, "event": "  "}, (422,)),
    (
        "feedback-empty-request-id",
        "/feedback",
        {"user_id": "a", "item_id": ITEM, "event": "click", "request_id": ""},
        (422,),
    ),
    (
        "feedback-too-long",
        "/feedback",
        {"user_id": "a" * 600, "item_id": ITEM, "event": "click"},
        (422,),
    ),
    (
        "feedback-unknown-variant",
        "/feedback",
        {"user_id": "a", "item_id": ITEM, "event": "click", "variant": "challenger"},
        (422,),
    ),
    ("feedback-user-int", "/feedback", {"user_id": 1, "item_id": ITEM, "event": "click"}, (400,)),
    ("feedback-list-body", "/feedback", ["a", ITEM, "click"], (400,)),
]


@pytest.mark.parametrize(
    ("path", "body", "statuses"),
    [pytest.param(path, body, statuses, id=name) for name, path, body, statuses in BAD_REQUESTS],
)
def test_bad_json_input_is_4xx_with_a_message(server, path, body, statuses):
    json_error(post(server.base, path, body), *statuses)


@pytest.mark.parametrize(
    "raw",
    [b"{", b"not json", b'{"k": 3,}', b"\xff\xfe\x00", b'{"k": 1e999}', b'{"user_id": "\\ud800"}'],
    ids=["truncated", "not-json", "trailing-comma", "binary", "k-infinite", "lone-surrogate"],
)
@pytest.mark.parametrize("path", ["/recommend", "/similar_items", "/feedback"])
def test_malformed_json_is_400(server, path, raw):
    json_error(post(server.base, path, content=raw), 400)


def test_an_oversized_body_is_413(server):
    body = json.dumps({"history": ["x" * 100] * 20_000}).encode()  # ~2 MB, Content-Length set
    assert len(body) > 2_000_000
    assert "limit" in json_error(post(server.base, "/recommend", content=body), 413)


def test_an_oversized_streamed_body_is_413(server):
    def chunks():
        yield b'{"history": ["'
        for _ in range(20):
            yield b"x" * 100_000
        yield b'"]}'

    json_error(post(server.base, "/recommend", content=chunks()), 413)


def test_k_true_is_refused(server):
    json_error(post(server.base, "/recommend", {"k": True}), 400)


def test_the_server_still_answers_after_bad_input(server):
    assert post(server.base, "/recommend", {"k": 2}).status_code == 200


# --------------------------------------------------------------- durability
def test_no_acknowledged_feedback_is_lost_when_the_server_is_killed(tmp_path, bundles, launcher):
    db = tmp_path / "shared-fb.db"
    first = launcher.start(tmp_path / "first", bundles.champion, feedback_db=db)
    acked: list[str] = []
    failed: list[str] = []
    lock = threading.Lock()
    enough = threading.Event()
    killed = threading.Event()

    def poster(worker: int) -> None:
        with httpx.Client(base_url=first.base, timeout=10) as http:
            for i in range(150):
                request_id = f"kill-{worker}-{i}"
                body = {
                    "user_id": f"u{worker}",
                    "item_id": ITEM,
                    "event": "click",
                    "request_id": request_id,
                }
                try:
                    response = http.post("/feedback", json=body)
                except httpx.TransportError:
                    with lock:
                        failed.append(request_id)
                    if killed.is_set():
                        return
                    continue
                with lock:
                    (acked if response.status_code == 200 else failed).append(request_id)
                    if len(acked) >= 60:
                        enough.set()

    def killer() -> None:
        enough.wait(timeout=60)
        first.kill(signal.SIGKILL)
        killed.set()

    threads = [threading.Thread(target=poster, args=(w,)) for w in range(4)]
    threads.append(threading.Thread(target=killer))
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert killed.is_set()
        assert first.proc.wait(timeout=10) == -signal.SIGKILL
        with pytest.raises(httpx.TransportError):  # the whole process group is gone
            httpx.get(f"{first.base}/livez", timeout=2)
    finally:
        first.stop()
    assert len(acked) >= 60
    assert failed, "the kill came after the last request: nothing was in flight"
    second = launcher.start(tmp_path / "second", bundles.champion, feedback_db=db)
    try:
        after = {"user_id": "u", "item_id": ITEM, "event": "click", "request_id": "after-restart"}
        assert post(second.base, "/feedback", after).status_code == 200
    finally:
        second.stop()
    with FeedbackStore(db) as store:
        stored = set(store.to_frame()["request_id"])
    assert set(acked) <= stored, sorted(set(acked) - stored)[:10]
    assert "after-restart" in stored
