"""Production mode and the admin token, in-process: ``lmrec.serving.production.check`` on
environments, and ``GuardMiddleware`` driven as the ASGI app it wraps sees it. That a
real ``bentoml serve`` refuses to start is in test_service_http.py."""

from __future__ import annotations

import asyncio
import json

import pytest

from lmrec.data.contract import DEFAULT_SALT
from lmrec.io import LmrecError
from lmrec.serving import production
from lmrec.serving.guard import GuardMiddleware

READY = {
    "LMREC_PRODUCTION": "1",
    "LMREC_API_TOKEN": "api-token",
    "LMREC_ADMIN_TOKEN": "admin-token",
    "LMREC_USER_ID_SALT": "a-secret-salt",
}


def test_a_complete_production_environment_starts():
    production.check(READY)


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"LMREC_API_TOKEN": ""}, "LMREC_API_TOKEN is unset or empty"),
        ({"LMREC_API_TOKEN": None}, "LMREC_API_TOKEN is unset or empty"),
        ({"LMREC_ADMIN_TOKEN": " "}, "LMREC_ADMIN_TOKEN is unset or empty"),
        ({"LMREC_ADMIN_TOKEN": "api-token"}, "LMREC_ADMIN_TOKEN must differ"),
        ({"LMREC_USER_ID_SALT": None}, "LMREC_USER_ID_SALT is unset or the public default"),
        ({"LMREC_USER_ID_SALT": DEFAULT_SALT}, "LMREC_USER_ID_SALT is unset or the public"),
    ],
    ids=["api-empty", "api-unset", "admin-blank", "admin-same", "salt-unset", "salt-default"],
)
def test_production_refuses_a_missing_token_or_the_public_salt(change, named):
    environ = {k: v for k, v in {**READY, **change}.items() if v is not None}
    with pytest.raises(LmrecError, match=named):
        production.check(environ)
    production.check({**environ, "LMREC_PRODUCTION": "0"})  # the local demo: no checks


def test_the_flag_is_off_by_default_and_a_typo_is_an_error():
    assert not production.is_production({})
    assert production.is_production({"LMREC_PRODUCTION": "true"})
    with pytest.raises(LmrecError, match="LMREC_PRODUCTION must be 1 or 0.*'on'"):
        production.check({"LMREC_PRODUCTION": "on"})


# ------------------------------------------------------------------ the guard
def _status(monkeypatch, env: dict[str, str], path: str, token: str | None) -> int:
    """The status ``GuardMiddleware`` answers a POST to ``path`` with, under ``env``."""
    for name in ("LMREC_API_TOKEN", "LMREC_ADMIN_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    guard = GuardMiddleware(
        app, "LMREC_API_TOKEN", max_body_bytes=1024, admin_token_env="LMREC_ADMIN_TOKEN"
    )
    headers = [(b"content-length", b"2")]
    if token is not None:
        headers.append((b"authorization", f"Bearer {token}".encode()))
    scope = {"type": "http", "path": path, "method": "POST", "headers": headers}
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message):
        sent.append(message)

    asyncio.run(guard(scope, receive, send))
    if sent[0]["status"] == 401:
        assert "token" in json.loads(sent[1]["body"])["error"]
    return sent[0]["status"]


TOKENS = {"LMREC_API_TOKEN": "api", "LMREC_ADMIN_TOKEN": "admin"}


@pytest.mark.parametrize(
    ("path", "token", "status"),
    [
        ("/admin/reload", "admin", 200),
        ("/admin/reload", "api", 401),  # the API token does not redeploy
        ("/admin/reload", None, 401),
        ("/recommend", "api", 200),
        ("/recommend", "admin", 401),
        ("/readyz", None, 200),
    ],
)
def test_admin_paths_take_the_admin_token_only(monkeypatch, path, token, status):
    assert _status(monkeypatch, TOKENS, path, token) == status


def test_without_an_admin_token_admin_takes_the_api_token(monkeypatch):
    api_only = {"LMREC_API_TOKEN": "api"}
    assert _status(monkeypatch, api_only, "/admin/reload", "api") == 200
    assert _status(monkeypatch, api_only, "/admin/reload", None) == 401
    assert _status(monkeypatch, {}, "/admin/reload", None) == 200  # the open local demo
