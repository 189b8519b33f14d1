"""``POST /items`` against a real ``bentoml serve`` process: no mocks, the real encoder.

One server for the module, behind a bearer token, on a copy of the champion bundle whose
catalog items all count one training interaction, so that a posted item is the only fresh
one and the exposure policy's reserved slot must show it. The module ends by killing that
server and starting another on the same feedback database: the item is still served.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import time

import httpx
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.slow

NEW_ID = "new-twin-of-5"
TWIN = "item00005"  # the catalog item the new one copies the text of


def ids(result: dict) -> list[str]:
    return [item["item_id"] for item in result["items"]]


@pytest.fixture(scope="module")
def catalog(tmp_path_factory, bundles) -> tuple[object, pd.DataFrame]:
    """A copy of the champion bundle with no fresh catalog item, and its catalog."""
    bundle = tmp_path_factory.mktemp("items-bundle") / "champion"
    shutil.copytree(bundles.champion, bundle)
    table = pd.read_parquet(bundle / "catalog.parquet")
    table["popularity"] = table["popularity"].clip(lower=1)
    table.to_parquet(bundle / "catalog.parquet", index=False)
    return bundle, table.sort_values("item_idx").set_index("item_id")


@pytest.fixture(scope="module")
def items_server(tmp_path_factory, catalog, launcher):
    root = tmp_path_factory.mktemp("items-server")
    server = launcher.start(
        root / "first", catalog[0], token=launcher.token, feedback_db=root / "fb.db"
    )
    try:
        yield server
    finally:
        server.stop()


class Api:
    def __init__(self, base: str, token: str) -> None:
        self.base, self.headers = base, {"authorization": f"Bearer {token}"}

    def post(self, path: str, body: object = None, **kwargs) -> httpx.Response:
        if "content" not in kwargs:
            kwargs["content"] = json.dumps(body)
        headers = {"content-type": "application/json", **self.headers, **kwargs.pop("headers", {})}
        return httpx.post(f"{self.base}{path}", headers=headers, timeout=60, **kwargs)

    def ok(self, path: str, body: object) -> dict:
        response = self.post(path, body)
        assert response.status_code == 200, (path, body, response.status_code, response.text[:500])
        return response.json()


@pytest.fixture(scope="module")
def api(items_server, launcher) -> Api:
    return Api(items_server.base, launcher.token)


def twin_body(catalog, item_id: str = NEW_ID) -> dict:
    """The fields of TWIN as the synthetic source wrote them (text from its encoder text)."""
    row = catalog[1].loc[TWIN]
    text = row["text"].split(". ", 1)[1].split(" Categories:")[0]  # "A story about ..."
    return {
        "item_id": item_id,
        "title": row["title"],
        "text": text,
        "categories": [row["categories"]],
    }


def test_items_need_the_bearer_token(items_server, catalog):
    for headers in ({}, {"authorization": "Bearer wrong"}):
        response = httpx.post(
            f"{items_server.base}/items", json=twin_body(catalog), headers=headers
        )
        assert response.status_code == 401 and "token" in response.json()["error"]


def test_a_posted_item_is_similar_searchable_and_recommended_at_once(api, catalog):
    started = time.monotonic()
    answer = api.ok("/items", twin_body(catalog))
    assert answer == {"status": "added", "item_id": NEW_ID, "model_version": "7"}
    posted = time.monotonic()
    similar = api.ok("/similar_items", {"item_id": TWIN, "k": 3})
    assert ids(similar)[0] == NEW_ID and similar["items"][0]["score"] == pytest.approx(1, abs=1e-4)
    table = catalog[1]
    close = [i for i in table.index if table.loc[i, "categories"] == table.loc[TWIN, "categories"]]
    result = api.ok("/recommend", {"history": close[:4], "k": 10})
    assert NEW_ID in ids(result), result  # the only fresh item: the reserved slot
    assert time.monotonic() - posted < 1.0, "visible within a second of the answer"
    assert ids(api.ok("/recommend", {"k": 6}))[-1] == NEW_ID  # cold start: newest first
    assert api.ok("/similar_items", {"item_id": NEW_ID, "k": 2})["items"][0]["item_id"] == TWIN
    session = api.ok("/recommend", {"history": [NEW_ID, "never-posted"], "k": 5})
    assert session["ignored_items"] == ["never-posted"] and NEW_ID not in ids(session)
    print(f"[items] first POST /items (loads the encoder) took {posted - started:.1f} s")


def test_posting_an_existing_id_updates_its_text(api, catalog):
    other = catalog[1].loc["item00020"]
    body = {"item_id": NEW_ID, "title": other["title"], "text": "", "categories": "topic-x"}
    assert api.ok("/items", body)["status"] == "updated"
    assert ids(api.ok("/similar_items", {"item_id": NEW_ID, "k": 1})) != [TWIN]
    assert api.ok("/items", twin_body(catalog))["status"] == "updated"  # back, for the restart
    assert ids(api.ok("/similar_items", {"item_id": TWIN, "k": 1})) == [NEW_ID]


def test_metrics_count_the_added_items(items_server):
    metrics = httpx.get(f"{items_server.base}/metrics", timeout=10).text
    assert re.search(r'^lmrec_items_added_total\{[^}]*status="added"[^}]*\} 1\.0', metrics, re.M)
    assert re.search(r'^lmrec_items_added_total\{[^}]*status="updated"[^}]*\} 2\.0', metrics, re.M)
    assert re.search(r"^lmrec_added_items(\{[^}]*\})? 1\.0", metrics, re.M), metrics[-2000:]


BAD_ITEMS = [
    ("missing-title", {"item_id": "x"}, 400),
    ("missing-id", {"title": "X"}, 400),
    ("empty-id", {"item_id": "", "title": "X"}, 422),
    ("blank-title", {"item_id": "x", "title": "  "}, 422),
    ("long-id", {"item_id": "x" * 300, "title": "X"}, 422),
    ("id-int", {"item_id": 5, "title": "X"}, 400),
    ("text-list", {"item_id": "x", "title": "X", "text": ["a"]}, 400),
    ("categories-int", {"item_id": "x", "title": "X", "categories": 3}, 400),
    ("categories-pipe-in-list", {"item_id": "x", "title": "X", "categories": ["a|b"]}, 422),
    ("text-too-long", {"item_id": "x", "title": "X", "text": "t" * 20_001}, 422),
    ("list-body", ["x", "X"], 400),
    ("null-body", None, 400),
]


@pytest.mark.parametrize(("body", "status"), [pytest.param(b, s, id=n) for n, b, s in BAD_ITEMS])
def test_bad_item_bodies_are_4xx_with_a_message(api, body, status):
    response = api.post("/items", body)
    assert response.status_code == status, response.text[:300]
    assert response.json()["error"].strip()


@pytest.mark.parametrize("raw", [b"{", b"not json", b'{"item_id": "\\ud800", "title": "x"}'])
def test_malformed_item_json_is_400(api, raw):
    assert api.post("/items", content=raw).status_code == 400


def test_an_oversized_item_is_413(api):
    body = {"item_id": "big", "title": "Big", "text": "x" * 1_100_000}
    assert api.post("/items", body).status_code == 413


FIELD_VALUES = (
    st.none()
    | st.integers()
    | st.text(max_size=30)
    | st.lists(st.text(max_size=8), max_size=4)
    | st.dictionaries(st.text(max_size=4), st.integers(), max_size=2)
)


def test_arbitrary_item_bodies_never_answer_5xx(api):
    fields = ("item_id", "title", "text", "categories")

    @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
    @given(body=st.fixed_dictionaries({}, optional={f: FIELD_VALUES for f in fields}))
    def run(body):
        response = api.post("/items", body)
        assert response.status_code < 500, (body, response.text[:300])
        if response.status_code == 200:
            assert response.json()["status"] in ("added", "updated")
        else:
            assert response.json()["error"].strip()

    run()


def test_a_restart_keeps_the_added_items(items_server, catalog, launcher):
    """Killed without a chance to flush anything, then started again on the same store."""
    items_server.kill(signal.SIGKILL)
    items_server.stop()
    root = items_server.root.parent
    second = launcher.start(
        root / "second", catalog[0], token=launcher.token, feedback_db=items_server.feedback_db
    )
    try:
        again = Api(second.base, launcher.token)
        assert ids(again.ok("/similar_items", {"item_id": TWIN, "k": 1})) == [NEW_ID]
        everything = again.ok("/recommend", {"history": [TWIN], "k": 100})  # scored: listed
        assert NEW_ID in ids(everything)
        assert again.ok("/items", twin_body(catalog))["status"] == "updated"
    finally:
        second.stop()
