"""ASGI middleware in front of the API: bearer-token auth and a request-body size limit.

- Auth: when the environment variable named by ``token_env`` is set, every request except
  the open paths (``/livez``, ``/readyz``, ``/metrics``, ``/healthz``, the docs and the
  OpenAPI spec) needs ``Authorization: Bearer <token>``; otherwise 401 with a JSON message.
  ``/admin/*`` needs the token named by ``admin_token_env`` instead (the API token is
  refused there) when that one is set. Tokens are compared in constant time. Whether an
  unset token may leave the API open is ``lmrec.serving.production``'s call.
- Size: a body over ``max_body_bytes`` gets 413, whether it declares its length or streams
  (a chunked body is read here, up to the limit, before the API sees it).
"""

from __future__ import annotations

import hmac
import json
import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

OPEN_PATHS = frozenset({"/livez", "/readyz", "/healthz", "/metrics", "/docs.json", "/"})
OPEN_PREFIXES = ("/docs", "/static_content")
ADMIN_PREFIX = "/admin/"


async def _reply(send: Send, status: int, message: str, headers: list | None = None) -> None:
    body = json.dumps({"error": message}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class GuardMiddleware:
    """Auth + body limit around an ASGI app (BentoML's ``add_asgi_middleware``).

    The token is read from the environment once, when the worker builds its app (a
    deployment sets it before starting the server; rotating it means restarting workers).
    """

    def __init__(
        self,
        app: Callable,
        token_env: str,
        max_body_bytes: int,
        admin_token_env: str | None = None,
    ) -> None:
        self.app = app
        self.token = (os.environ.get(token_env) or "").encode() or None
        admin = (os.environ.get(admin_token_env) or "").encode() if admin_token_env else b""
        self.admin_token = admin or self.token
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        admin = scope.get("path", "").startswith(ADMIN_PREFIX)
        token = self.admin_token if admin else self.token
        if token is not None and not self._authorized(scope, token):
            await _reply(
                send,
                401,
                "missing or wrong bearer token (send 'Authorization: Bearer <token>')",
                [(b"www-authenticate", b"Bearer")],
            )
            return
        declared = self._content_length(scope)
        if declared is not None:
            if declared > self.max_body_bytes:
                await _reply(send, 413, self._too_large(declared))
                return
            await self.app(scope, receive, send)
            return
        # No declared length (chunked): read the body here, within the limit, and replay it.
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break  # the client went away
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_body_bytes:
                await _reply(send, 413, self._too_large(size))
                return
            if not message.get("more_body", False):
                break
        replay = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

        async def replayed() -> Message:
            return replay.pop() if replay else await receive()

        await self.app(scope, replayed, send)

    def _too_large(self, size: int) -> str:
        return f"request body of {size} bytes is over the limit of {self.max_body_bytes} bytes"

    @staticmethod
    def _content_length(scope: Scope) -> int | None:
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    return int(value)
                except ValueError:
                    return None
        return None

    @staticmethod
    def _authorized(scope: Scope, token: bytes) -> bool:
        path = scope.get("path", "")
        if path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
            return True
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                scheme, _, given = value.partition(b" ")
                if scheme.lower() == b"bearer":
                    return hmac.compare_digest(given.strip(), token)
        return False
