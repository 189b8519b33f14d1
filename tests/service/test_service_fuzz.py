"""Fuzzing the real server: whatever arrives, the answer is never a 5xx, and a 4xx is a JSON
``{"error": message}``.

Two generators against the session's plain server (see conftest.py):

- schemathesis, from the service's own OpenAPI spec (``/docs.json``): valid and invalid
  bodies for every POST operation;
- hypothesis, raw: arbitrary JSON documents, objects with the endpoint's field names bound
  to arbitrary JSON values (plus real catalog ids, to reach past the id checks), and
  arbitrary bytes. A 200 must still keep the API's promises (unique items, history
  excluded by default, the champion's version).

Bounded to ~50 examples per endpoint and generator so the module runs in well under a
minute on 2 cores.
"""

from __future__ import annotations

import json

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

pytestmark = pytest.mark.slow

FUZZ = settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
FIELDS = {
    "/recommend": ("user_id", "history", "k", "exclude_seen", "explain", "diversity"),
    "/similar_items": ("item_id", "k"),
    "/feedback": ("user_id", "item_id", "event", "request_id", "variant"),
}
ENDPOINTS = sorted(FIELDS)


def check_answer(response, path: str, body: object = None) -> None:
    """The invariants every answer keeps, whatever the request."""
    status = response.status_code
    assert status < 500, (path, body, status, response.text[:500])
    if 400 <= status < 500 and status not in (405,):
        content_type = response.headers.get("content-type") or ""
        if isinstance(content_type, list):  # schemathesis' Response: name -> all values
            content_type = content_type[0] if content_type else ""
        assert content_type.startswith("application/json"), (status, content_type)
        message = response.json().get("error")
        assert isinstance(message, str) and message.strip(), response.text[:500]
    if status == 200 and path != "/feedback":
        result = response.json()
        items = [item["item_id"] for item in result["items"]]
        assert len(items) == len(set(items)), result
        assert result["model_version"] == "7"
        if isinstance(body, dict):
            history = body.get("history")
            if "exclude_seen" not in body and isinstance(history, list):
                assert not set(items) & {h for h in history if isinstance(h, str)}, result


# ----------------------------------------------------------------- schemathesis
@pytest.fixture(scope="module")
def api_schema(server):
    """The service's OpenAPI spec, as served."""
    return schemathesis.openapi.from_url(f"{server.base}/docs.json")


# Schemathesis' pytest loader (``schemathesis.pytest.from_fixture(...).parametrize()``) reads
# ``request.node._nodeid``, which pytest 9 removed, and ``schema.parametrize()`` needs the
# spec at collection time, before the server runs; so the operation's Hypothesis strategy is
# used directly, which is the same generator.
@pytest.mark.parametrize("mode", list(GenerationMode), ids=lambda m: m.value)
@pytest.mark.parametrize("path", ENDPOINTS)
def test_openapi_cases_never_answer_5xx(api_schema, server, path, mode):
    operation = api_schema[path]["POST"]

    @FUZZ
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case):
        response = case.call(base_url=server.base, timeout=30)
        check_answer(response, path, case.body)

    run()


# ------------------------------------------------------------------ hypothesis
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5)
    ),
    max_leaves=12,
)


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.base, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def known_values(bundles) -> st.SearchStrategy:
    """Values that pass the type checks and the id lookups, to reach the deeper paths."""
    items = st.sampled_from(bundles.item_ids)
    return (
        items
        | st.sampled_from(sorted(bundles.histories)[:20])
        | st.lists(items, max_size=8)
        | st.integers(min_value=-2, max_value=120)
        | st.floats(min_value=-0.5, max_value=1.5)
        | st.sampled_from(["champion", "challenger", "click", "", " "])
    )


def post_raw(http: httpx.Client, path: str, content: bytes):
    return http.post(path, content=content, headers={"content-type": "application/json"})


@pytest.mark.parametrize("path", ENDPOINTS)
def test_arbitrary_json_documents_never_answer_5xx(http, path):
    @FUZZ
    @given(body=JSON_VALUES)
    def run(body):
        check_answer(post_raw(http, path, json.dumps(body).encode()), path, body)

    run()


@pytest.mark.parametrize("path", ENDPOINTS)
def test_objects_with_the_api_fields_never_answer_5xx(http, known_values, path):
    values = known_values | JSON_VALUES
    bodies = st.fixed_dictionaries({}, optional={name: values for name in FIELDS[path]})

    @FUZZ
    @given(body=bodies)
    def run(body):
        check_answer(post_raw(http, path, json.dumps(body).encode()), path, body)

    run()


@pytest.mark.parametrize("path", ENDPOINTS)
def test_arbitrary_bytes_never_answer_5xx(http, path):
    @FUZZ
    @given(content=st.binary(max_size=200))
    def run(content):
        check_answer(post_raw(http, path, content), path)

    run()


# -------------------------------------------------------- valid requests, any mix
def expected_length(bundles, body: dict) -> int:
    """How many items a valid /recommend body must get back."""
    seen = set(bundles.histories.get(body.get("user_id"), [])) | set(body.get("history") or [])
    available = len(bundles.item_ids) - (len(seen) if body.get("exclude_seen", True) else 0)
    return min(body.get("k", 10), available)


def test_valid_recommend_requests_keep_the_api_promises(http, bundles):
    items = st.sampled_from(bundles.item_ids)
    bodies = st.fixed_dictionaries(
        {},
        optional={
            "user_id": st.sampled_from(sorted(bundles.histories))
            | st.text(min_size=1, max_size=20),
            "history": st.lists(items, max_size=8),
            "k": st.integers(min_value=1, max_value=100),
            "exclude_seen": st.booleans(),
            "explain": st.booleans(),
            "diversity": st.floats(min_value=0.0, max_value=1.0),
        },
    )

    @FUZZ
    @given(body=bodies)
    def run(body):
        response = http.post("/recommend", json=body)
        assert response.status_code == 200, (body, response.text[:500])
        result = response.json()
        got = [item["item_id"] for item in result["items"]]
        assert len(got) == len(set(got)) == expected_length(bundles, body), (body, result)
        known = bundles.histories.get(body.get("user_id"), [])
        seen = set(known) | set(body.get("history") or [])
        assert result["path"] == ("model" if seen else "cold_start")
        if body.get("exclude_seen", True):
            assert not set(got) & seen
        if body.get("explain"):
            assert all(item["reason"] for item in result["items"])
        if not body.get("diversity"):  # best first, but for the exposure policy's last slot
            scores = [item["score"] for item in result["items"]]
            head = scores[:-1] if len(scores) >= 5 else scores  # serve.exposure.min_k
            assert head == sorted(head, reverse=True)

    run()


def test_valid_similar_items_requests_keep_the_api_promises(http, bundles):
    @FUZZ
    @given(item_id=st.sampled_from(bundles.item_ids), k=st.integers(min_value=1, max_value=100))
    def run(item_id, k):
        response = http.post("/similar_items", json={"item_id": item_id, "k": k})
        assert response.status_code == 200, response.text[:500]
        got = [item["item_id"] for item in response.json()["items"]]
        assert len(got) == len(set(got)) == min(k, len(bundles.item_ids) - 1)
        assert item_id not in got

    run()


def test_valid_feedback_requests_are_recorded(http):
    text = st.text(min_size=1, max_size=60).filter(str.strip)
    bodies = st.fixed_dictionaries(
        {"user_id": text, "item_id": text, "event": text},
        optional={"request_id": text, "variant": st.just("champion")},
    )
    seqs, first = [], {}  # (request_id, item_id, event) -> the seq it was stored under

    @FUZZ
    @given(body=bodies)
    def run(body):
        response = http.post("/feedback", json=body)
        assert response.status_code == 200, (body, response.text[:500])
        assert response.json()["variant"] == "champion"
        seq = response.json()["seq"]
        key = (body.get("request_id"), body["item_id"], body["event"])
        if key[0] is not None and key in first:  # a retry: stored once, the first seq
            assert seq == first[key], (body, first[key])
            return
        assert not seqs or seq > seqs[-1]
        seqs.append(seq)
        if key[0] is not None:
            first[key] = seq

    run()
    assert len(set(seqs)) == len(seqs)
