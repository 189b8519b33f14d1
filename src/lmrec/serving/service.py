"""The lmrec HTTP service (BentoML 1.4): the docs/design.md serving API.

    bentoml serve lmrec.serving.service:LmrecService       # or: lmrec serve

Endpoints: ``POST /recommend``, ``POST /similar_items``, ``POST /feedback``,
``POST /items``, ``POST /admin/reload``; BentoML's ``/livez``, ``/readyz`` (503 until the
model is loaded) and ``/metrics`` (Prometheus, with ``lmrec_requests_total{variant,endpoint,
path}``, ``lmrec_model_reloads_total{result}``, ``lmrec_items_added_total{status}`` and the
``lmrec_added_items`` gauge, ``lmrec_impressions_dropped_total``).

``POST /items`` adds an item to the served catalog (or replaces an item's text) and keeps
it durably (``lmrec.serving.new_items``): it is in ``/recommend`` and ``/similar_items``
from the answer on, since the one worker process (``workers=1``) applies it in-process
before answering; every later load or reload re-applies the stored items.

Deployment without dropped requests: every worker checks every ``serve.reload_poll_s``
seconds whether a newer champion/challenger was packaged (``lmrec package`` imports it into
the BentoML model store as the newest ``lmrec-champion``), loads it beside the one being
served, smoke-tests it and swaps it in; requests in flight finish on the model they started
with. ``POST /admin/reload`` does the same at once (on the worker that takes the call).

Configuration (environment; the params file's ``serve`` block for everything else):

- ``LMREC_BUNDLE`` / ``LMREC_CHALLENGER_BUNDLE``: serving bundle directories; without them
  the BentoML model store's ``lmrec-champion:latest`` (and ``lmrec-challenger:latest``
  when it exists) are served, as ``lmrec package`` left them.
- ``LMREC_PARAMS``: params file. Without it: the serve params the Bento was packaged with
  (``lmrec.serving.bento``), else ``params.yaml`` when present, else the defaults.
- ``LMREC_API_TOKEN``: when set, every API call needs ``Authorization: Bearer <token>``
  (401 otherwise); ``/livez``, ``/readyz``, ``/metrics`` and the docs stay open.
- ``LMREC_ADMIN_TOKEN``: the bearer token of ``/admin/reload`` (the API token when unset).
- ``LMREC_PRODUCTION=1`` (the Bento image's and docker/compose.yaml's default): the service
  refuses to start without both tokens and a secret ``LMREC_USER_ID_SALT``
  (``lmrec.serving.production``); unset, as in the local demo, the API may run open.
- ``LMREC_FEEDBACK_DB``: the feedback store (default ``serve.feedback_db``); the items
  added through ``POST /items`` are kept in the same file.
- ``LMREC_TORCH_THREADS``: torch threads per worker (default 1).

Privacy: the feedback log and the impression log (every answer's items by ``request_id``,
``lmrec.serving.impressions``, for online metrics per variant) hold pseudonymised user ids
(``$LMREC_USER_ID_SALT``, as ingest), never raw ones; events older than
``serve.feedback.retention_days`` are erased at start and then daily, and ``lmrec forget
--user-id`` erases one user's (``lmrec.serving.erasure``), each with a line in the audit log.

A/B: with a challenger loaded, ``serve.challenger_share`` of the users (by a salted hash of
the user id; requests without one go to the champion) are served by the challenger. Every
response names its ``variant`` and ``model_version``.

Length: BentoML 1.4 takes the HTTP API as the methods of one ``@bentoml.service`` class,
so every endpoint is here; the work behind them is in ``engine``, ``feedback``,
``new_items`` and ``erasure``.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import logging
import os
import sqlite3
import threading
import time
import uuid
from pathlib import Path
from typing import Annotated, Any

import bentoml
import torch
from pydantic import Field
from starlette.responses import JSONResponse

from lmrec.config import ServeParams, load_params
from lmrec.serving import erasure, production
from lmrec.serving.bento import carried_serve_params
from lmrec.serving.catalog_store import NewItem
from lmrec.serving.engine import Engine, RequestError
from lmrec.serving.feedback import FeedbackEvent, FeedbackStore
from lmrec.serving.guard import GuardMiddleware
from lmrec.serving.impressions import ImpressionLog
from lmrec.serving.metrics import ADDED_ITEMS, ITEMS_ADDED, RELOADS, count
from lmrec.serving.new_items import NewItems
from lmrec.serving.sources import sources

log = logging.getLogger("lmrec.serving")

# JSON types are taken as they are: `"k": true` or `"k": "5"` is a 400, not k=1 or k=5.
StrictInt = Annotated[int, Field(strict=True)]
StrictBool = Annotated[bool, Field(strict=True)]

#: a bundle that failed to load is retried this many times before waiting for a new one
MAX_LOAD_ATTEMPTS = 3


def feedback_db(params: ServeParams) -> str:
    return os.environ.get("LMREC_FEEDBACK_DB") or params.feedback_db


def serve_params() -> ServeParams:
    """The ``serve`` block in effect: ``$LMREC_PARAMS``'s, else the one a Bento carries
    (``lmrec.serving.bento``), else ``params.yaml``'s in the working directory (``lmrec
    serve`` on a working tree), else the defaults."""
    path = os.environ.get("LMREC_PARAMS")
    if path:
        return load_params(path).serve
    carried = carried_serve_params()
    if carried is not None:
        return carried
    return load_params("params.yaml").serve if Path("params.yaml").is_file() else ServeParams()


# Read at import, on purpose: BentoML 1.4 builds the service's ASGI app from the class when
# `bentoml serve` imports this module, and `add_asgi_middleware` below takes the body limit
# as a constructor argument; the production check must stop the process before it serves.
SERVE_PARAMS = serve_params()  # read once per process
production.check()  # a production service without its tokens or salt never starts


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def answer(body: dict[str, Any]) -> JSONResponse:
    """A 200 JSON answer, handed to the HTTP layer as it is: BentoML would otherwise build a
    pydantic JSON schema and model of the declared ``dict`` return type on every request."""
    return JSONResponse(body)


def _settle_heap() -> None:
    """Collect, then move everything alive (the loaded models: many long-lived objects)
    out of the garbage collector's sight, so that full collections during serving stay
    short instead of walking the catalog and user tables (latency tails)."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


@bentoml.service(name="lmrec", traffic={"timeout": 30}, workers=1)
class LmrecService:
    """Top-k recommendations, similar items and feedback over HTTP."""

    def __init__(self) -> None:
        self.params = SERVE_PARAMS
        self.engines: dict[str, Any] = {}  # replaced whole, never mutated: see _refresh
        self.load_error: str | None = None
        self._identities: dict[str, str] = {}
        self._failed: tuple[dict[str, str], int] = ({}, 0)  # identities, attempts
        self._reload_lock = threading.Lock()
        self._feedback = None
        self._feedback_lock = threading.Lock()
        timeout = self.params.feedback.busy_timeout_s
        self._impressions = ImpressionLog(feedback_db(self.params), busy_timeout_s=timeout)
        self._new_items = NewItems(feedback_db(self.params))
        self._items_lock = asyncio.Lock()  # one POST /items at a time (on the event loop)
        # Here too, not only in the loading thread: OpenMP's thread count is per thread, and
        # the async endpoints run on this (the event loop's) thread.
        torch.set_num_threads(int(os.environ.get("LMREC_TORCH_THREADS", "1")))
        threading.Thread(target=self._load, name="lmrec-load", daemon=True).start()
        if self.params.feedback.retention_days is not None:
            threading.Thread(target=self._retain, name="lmrec-retention", daemon=True).start()

    # ------------------------------------------------------------ loading
    def _load(self) -> None:
        """Load the engines in the background (so that /readyz can say "not yet"), then
        watch for newly packaged models every ``serve.reload_poll_s`` seconds."""
        # One request at a time per worker: intra-op threads would only fight the HTTP
        # layer for the cores (scale with workers/replicas instead).
        torch.set_num_threads(int(os.environ.get("LMREC_TORCH_THREADS", "1")))
        time.sleep(float(os.environ.get("LMREC_LOAD_DELAY_S", "0")))  # slow storage, tests
        self._refresh()
        while self.params.reload_poll_s > 0:
            time.sleep(self.params.reload_poll_s)
            self._refresh()

    def _retain(self) -> None:
        """Erase the events older than ``serve.feedback.retention_days`` from the feedback
        and impression logs at start, then every day (``lmrec.serving.erasure``)."""
        db, cfg = Path(feedback_db(self.params)), self.params.feedback
        while True:
            try:
                if db.is_file():
                    record = erasure.expire(
                        db, cfg.retention_days, erasure.audit_path(db, cfg.audit_log)
                    )
                    log.info("retention %g days: deleted %s", cfg.retention_days, record["deleted"])
            except Exception as err:  # retention must not stop the service; it runs again
                log.error("retention on %s failed: %s", db, err)
            time.sleep(erasure.DAY_S)

    def _refresh(self) -> dict[str, Any]:
        """Load what is to be served now if it changed, then swap it in atomically.

        Requests hold on to the engine dict they started with, so a swap never interrupts
        one: answers switch to the new model from the next request on. A model that fails
        to load (or to answer a smoke request) is never swapped in; the old one stays
        served, and the failure is in the answer, the log and ``lmrec_model_reloads_total``.
        """
        with self._reload_lock:
            current = self.engines
            try:
                found = sources()
            except Exception as err:  # e.g. nothing packaged yet: keep serving what we have
                return self._failure(current, {}, err)
            identities = {variant: source.identity for variant, source in found.items()}
            if identities == self._identities:
                return self._status("unchanged", current)
            failed, attempts = self._failed
            if failed == identities and attempts >= MAX_LOAD_ATTEMPTS:
                return self._status("failed", current)
            try:
                engines = {}
                for variant, source in found.items():
                    if self._identities.get(variant) == source.identity:
                        engines[variant] = current[variant]
                        continue
                    engine = Engine.load(source.path, self.params)
                    engine.recommend(None, [], 1, True, False, 0.0)  # it answers
                    self._new_items.reapply(engine)
                    engines[variant] = engine
            except Exception as err:
                return self._failure(current, identities, err)
            self.engines, self._identities = engines, identities
            self.load_error, self._failed = None, ({}, 0)
            ADDED_ITEMS.set(self._added(engines))
            RELOADS.labels(result="loaded").inc()
            previous = self._versions(current)
            current = {}  # the replaced engines go once no request holds them any more
            _settle_heap()
            log.info("lmrec models loaded: %s (before: %s)", self._versions(engines), previous)
            return {**self._status("reloaded", engines), "previous": previous}

    def _failure(
        self, current: dict[str, Any], identities: dict[str, str], err: Exception
    ) -> dict[str, Any]:
        failed, attempts = self._failed
        self._failed = (identities, attempts + 1 if failed == identities else 1)
        message = f"{type(err).__name__}: {err}"
        if message != self.load_error:  # log a persistent failure once, not every poll
            log.error("lmrec: loading the model failed: %s", message)
        self.load_error = message
        RELOADS.labels(result="failed").inc()
        return self._status("failed", current)

    @staticmethod
    def _added(engines: dict[str, Any]) -> int:
        champion = engines["champion"]
        return champion.n_items - champion.model_items

    @staticmethod
    def _versions(engines: dict[str, Any]) -> dict[str, str]:
        return {variant: engine.version for variant, engine in engines.items()}

    def _status(self, status: str, engines: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {"status": status, "versions": self._versions(engines)}
        if status == "failed":
            out["error"] = self.load_error
        return out

    @bentoml.on_shutdown
    def _flush_impressions(self) -> None:
        """A graceful stop (SIGTERM) writes the impressions still queued first."""
        self._impressions.flush(timeout_s=5.0)

    def __is_ready__(self) -> bool:
        return bool(self.engines)

    def _variant(self, engines: dict[str, Any], user_id: str | None) -> str:
        if "challenger" not in engines or user_id is None:
            return "champion"
        digest = hashlib.sha256(f"{self.params.ab_salt}:{user_id}".encode()).digest()
        bucket = int.from_bytes(digest[:8], "big") / 2**64
        return "challenger" if bucket < self.params.challenger_share else "champion"

    def _not_ready(self) -> JSONResponse | None:
        if self.engines:
            return None
        detail = f" ({self.load_error})" if self.load_error else ""
        return error(503, "the model is not loaded yet" + detail)

    # ---------------------------------------------------------------- API
    # recommend and similar_items are async: a request is a fraction of a millisecond of
    # CPU (and never waits on I/O), so it runs on the event loop instead of paying a hop to
    # the thread pool and the GIL hand-offs that come with it. feedback (a durable SQLite
    # write) and reload (a model load) stay synchronous, in the thread pool.
    @bentoml.api(route="/recommend")
    async def recommend(
        self,
        user_id: str | None = None,
        history: list[str] | None = None,
        k: StrictInt = 10,
        exclude_seen: StrictBool = True,
        explain: StrictBool = False,
        diversity: float = 0.0,
    ) -> dict[str, Any]:
        """Top-k items for a user (by id), a posted session history, or both. The answer's
        items are logged as impressions under its ``request_id`` (``lmrec.serving
        .impressions``)."""
        if (busy := self._not_ready()) is not None:
            return busy
        engines = self.engines  # one model set for the whole request, even across a reload
        variant = self._variant(engines, user_id)
        engine = engines[variant]
        if engine.applied_seq < self._new_items.last_seq:  # an item stored during a reload
            self._new_items.sync(engine)
        try:
            result = engine.recommend(user_id, history, k, exclude_seen, explain, diversity)
        except RequestError as err:
            return error(err.status, str(err))
        count(variant, "recommend", result["path"])
        request_id = uuid.uuid4().hex
        served = [item["item_id"] for item in result["items"]]
        self._impressions.log(request_id, user_id, engine.version, variant, served)
        return answer(
            {
                "items": result["items"],
                "model_version": engine.version,
                "variant": variant,
                "request_id": request_id,
                "path": result["path"],
                "ignored_items": result["ignored_items"],
            }
        )

    @bentoml.api(route="/similar_items")
    async def similar_items(self, item_id: str, k: StrictInt = 10) -> dict[str, Any]:
        """The items closest to ``item_id`` by text embedding."""
        if (busy := self._not_ready()) is not None:
            return busy
        engine = self.engines["champion"]  # one lookup: a reload swaps the whole dict
        if engine.applied_seq < self._new_items.last_seq:
            self._new_items.sync(engine)
        try:
            result = engine.similar_items(item_id, k)
        except RequestError as err:
            return error(err.status, str(err))
        count("champion", "similar_items", "text")
        return answer({**result, "model_version": engine.version, "request_id": uuid.uuid4().hex})

    @bentoml.api(route="/feedback")
    def feedback(
        self,
        user_id: str,
        item_id: str,
        event: str,
        request_id: str | None = None,
        variant: str | None = None,
    ) -> dict[str, Any]:
        """Record one feedback event durably (on disk before the answer); feeds the next
        retraining through the ``feedback`` ingest source. A retried post (the same
        ``request_id``, ``item_id`` and ``event``) is stored once and answered with the
        first one's ``seq``; 503 with ``Retry-After`` when the log cannot be written now."""
        if (busy := self._not_ready()) is not None:
            return busy
        engines = self.engines
        variant = variant or self._variant(engines, user_id)
        if variant not in engines:
            return error(422, f"variant must be one of {sorted(engines)}, got {variant!r}")
        try:
            event_row = FeedbackEvent(
                user_id=user_id,
                item_id=item_id,
                event=event,
                timestamp=time.time(),
                request_id=request_id,
                model_version=engines[variant].version,
                variant=variant,
            )
        except ValueError as err:
            return error(422, str(err))
        try:
            seq = self._feedback_store().append(event_row)
        except ValueError as err:
            return error(422, str(err))
        except sqlite3.OperationalError as err:  # locked, disk full, read-only: not the input
            log.warning("POST /feedback: the feedback log cannot be written now: %s", err)
            retry = self.params.feedback.retry_after_s
            message = f"the feedback log cannot be written now ({err}); retry in {retry} s"
            return JSONResponse(
                {"error": message}, status_code=503, headers={"Retry-After": str(retry)}
            )
        count(variant, "feedback", "store")
        return answer({"status": "recorded", "seq": seq, "variant": variant})

    def _feedback_store(self) -> FeedbackStore:
        """The feedback log, opened on first use (``sqlite3.OperationalError`` if it cannot
        be opened now: the next call tries again)."""
        with self._feedback_lock:
            if self._feedback is None:
                timeout = self.params.feedback.busy_timeout_s
                self._feedback = FeedbackStore(feedback_db(self.params), busy_timeout_s=timeout)
            return self._feedback

    @bentoml.api(route="/items")
    async def items(
        self,
        item_id: str,
        title: str,
        text: str = "",
        categories: str | list[str] | None = None,
    ) -> dict[str, Any]:
        """Add an item to the served catalog, or replace the text of one it has (``status``
        added | updated). Stored durably before the answer and applied in this worker
        process, so the next /recommend and /similar_items see it (one worker:
        ``workers=1``); ``categories`` is a ``|``-separated string or a list of strings."""
        if (busy := self._not_ready()) is not None:
            return busy
        try:
            item = NewItem.parse(item_id, title, text, categories)
        except ValueError as err:
            return error(422, str(err))
        async with self._items_lock:
            engines = self.engines
            status = "updated" if item.item_id in engines["champion"].index else "added"
            try:  # encoding and the durable write: off the event loop
                prepared = await asyncio.to_thread(self._new_items.prepare, item, engines)
            except Exception as err:  # no encoder, no store: the service, not the input
                log.error("POST /items %r failed: %s", item.item_id, err)
                return error(503, f"cannot add items now: {type(err).__name__}: {err}")
            engines = self.engines  # a reload may have swapped them meanwhile
            for engine in engines.values():
                self._new_items.sync(engine, prepared)
        ITEMS_ADDED.labels(status=status).inc()
        ADDED_ITEMS.set(self._added(engines))
        count("champion", "items", status)
        champion = engines["champion"].version
        return answer({"status": status, "item_id": item.item_id, "model_version": champion})

    @bentoml.api(route="/admin/reload")
    def reload(self) -> dict[str, Any]:
        """Load a newly packaged champion/challenger now (workers also poll for one every
        ``serve.reload_poll_s``) and swap it in without interrupting requests. Answers
        ``status`` (reloaded | unchanged | failed, with ``error``) and the ``versions`` served
        by this worker afterwards; a failed load leaves the previous model served (409)."""
        result = self._refresh()
        if result["status"] == "failed":
            return JSONResponse(result, status_code=409 if self.engines else 503)
        return answer(result)


LmrecService.add_asgi_middleware(
    GuardMiddleware,
    token_env=production.API_TOKEN_ENV,
    admin_token_env=production.ADMIN_TOKEN_ENV,
    max_body_bytes=SERVE_PARAMS.max_body_bytes,
)
