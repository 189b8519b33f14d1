"""The lmrec HTTP service (BentoML 1.4): the DESIGN.md serving API.

    bentoml serve lmrec.serving.service:LmrecService       # or: lmrec serve

Endpoints: ``POST /recommend``, ``POST /similar_items``, ``POST /feedback``; BentoML's
``/livez``, ``/readyz`` (503 until the model is loaded) and ``/metrics`` (Prometheus,
with ``lmrec_requests_total{variant,endpoint,path}``).

Configuration (environment; the params file's ``serve`` block for everything else):

- ``LMREC_BUNDLE`` / ``LMREC_CHALLENGER_BUNDLE``: serving bundle directories; without them
  the BentoML model store's ``lmrec-champion:latest`` (and ``lmrec-challenger:latest``
  when it exists) are served, as ``lmrec package`` left them.
- ``LMREC_PARAMS``: params file (default ``params.yaml`` when present, else defaults).
- ``LMREC_API_TOKEN``: when set, every API call needs ``Authorization: Bearer <token>``
  (401 otherwise); ``/livez``, ``/readyz``, ``/metrics`` and the docs stay open.
- ``LMREC_FEEDBACK_DB``: the feedback store (default ``serve.feedback_db``).
- ``LMREC_TORCH_THREADS``: torch threads per worker (default 1).

A/B: with a challenger loaded, ``serve.challenger_share`` of the users (by a salted hash of
the user id; requests without one go to the champion) are served by the challenger. Every
response names its ``variant`` and ``model_version``.
"""

from __future__ import annotations

import hashlib
import logging
import os
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
from lmrec.serving.engine import Engine, RequestError
from lmrec.serving.feedback import FeedbackEvent, FeedbackStore
from lmrec.serving.guard import GuardMiddleware

log = logging.getLogger("lmrec.serving")

CHAMPION_TAG = "lmrec-champion:latest"
CHALLENGER_TAG = "lmrec-challenger:latest"

# JSON types are taken as they are: `"k": true` or `"k": "5"` is a 400, not k=1 or k=5.
StrictInt = Annotated[int, Field(strict=True)]
StrictBool = Annotated[bool, Field(strict=True)]

REQUESTS = bentoml.metrics.Counter(
    name="lmrec_requests_total",
    documentation="Answered API requests by variant, endpoint and scoring path",
    labelnames=["variant", "endpoint", "path"],
)


def serve_params() -> ServeParams:
    path = os.environ.get("LMREC_PARAMS")
    if path:
        return load_params(path).serve
    return load_params("params.yaml").serve if Path("params.yaml").is_file() else ServeParams()


SERVE_PARAMS = serve_params()  # read once per process (the middleware needs it at import)


def _bundle_dir(env: str, tag: str, required: bool) -> Path | None:
    if os.environ.get(env):
        return Path(os.environ[env])
    try:
        return Path(bentoml.models.get(tag).path)
    except bentoml.exceptions.NotFound:
        if required:
            raise RuntimeError(
                f"no model to serve: set {env} to a bundle directory or run `lmrec package` "
                f"(BentoML model {tag} not found)"
            ) from None
        return None


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


@bentoml.service(name="lmrec", traffic={"timeout": 30}, workers=1)
class LmrecService:
    """Top-k recommendations, similar items and feedback over HTTP."""

    def __init__(self) -> None:
        self.params = SERVE_PARAMS
        self.engines: dict[str, Any] = {}
        self.load_error: str | None = None
        self._feedback = None
        self._feedback_lock = threading.Lock()
        threading.Thread(target=self._load, name="lmrec-load", daemon=True).start()

    # ------------------------------------------------------------ loading
    def _load(self) -> None:
        """Load the engines in the background so that /readyz can say "not yet"."""
        try:
            delay = float(os.environ.get("LMREC_LOAD_DELAY_S", "0"))  # slow storage, tests
            # One request at a time per worker: intra-op threads would only fight the HTTP
            # layer for the cores (scale with workers/replicas instead).
            torch.set_num_threads(int(os.environ.get("LMREC_TORCH_THREADS", "1")))

            champion = _bundle_dir("LMREC_BUNDLE", CHAMPION_TAG, required=True)
            challenger = _bundle_dir("LMREC_CHALLENGER_BUNDLE", CHALLENGER_TAG, required=False)
            engines = {"champion": Engine.load(champion, self.params)}
            if challenger is not None:
                engines["challenger"] = Engine.load(challenger, self.params)
            time.sleep(delay)
            self.engines = engines
            versions = {k: e.version for k, e in engines.items()}
            log.info("lmrec models loaded: %s", versions)
        except Exception as err:  # reported by /readyz staying 503 and in the log
            self.load_error = f"{type(err).__name__}: {err}"
            log.exception("lmrec: loading the model failed")

    def __is_ready__(self) -> bool:
        return bool(self.engines)

    def _variant(self, user_id: str | None) -> str:
        if "challenger" not in self.engines or user_id is None:
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
    @bentoml.api(route="/recommend")
    def recommend(
        self,
        user_id: str | None = None,
        history: list[str] | None = None,
        k: StrictInt = 10,
        exclude_seen: StrictBool = True,
        explain: StrictBool = False,
        diversity: float = 0.0,
    ) -> dict[str, Any]:
        """Top-k items for a user (by id), a posted session history, or both."""
        if (busy := self._not_ready()) is not None:
            return busy
        variant = self._variant(user_id)
        engine = self.engines[variant]
        try:
            result = engine.recommend(user_id, history, k, exclude_seen, explain, diversity)
        except RequestError as err:
            return error(err.status, str(err))
        REQUESTS.labels(variant=variant, endpoint="recommend", path=result["path"]).inc()
        return {
            "items": result["items"],
            "model_version": engine.version,
            "variant": variant,
            "request_id": uuid.uuid4().hex,
            "path": result["path"],
        }

    @bentoml.api(route="/similar_items")
    def similar_items(self, item_id: str, k: StrictInt = 10) -> dict[str, Any]:
        """The items closest to ``item_id`` by text embedding."""
        if (busy := self._not_ready()) is not None:
            return busy
        engine = self.engines["champion"]
        try:
            result = engine.similar_items(item_id, k)
        except RequestError as err:
            return error(err.status, str(err))
        REQUESTS.labels(variant="champion", endpoint="similar_items", path="text").inc()
        return {**result, "model_version": engine.version, "request_id": uuid.uuid4().hex}

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
        retraining through the ``feedback`` ingest source."""
        if (busy := self._not_ready()) is not None:
            return busy
        variant = variant or self._variant(user_id)
        if variant not in self.engines:
            return error(422, f"variant must be one of {sorted(self.engines)}, got {variant!r}")
        try:
            event_row = FeedbackEvent(
                user_id=user_id,
                item_id=item_id,
                event=event,
                timestamp=time.time(),
                request_id=request_id,
                model_version=self.engines[variant].version,
                variant=variant,
            )
        except ValueError as err:
            return error(422, str(err))
        with self._feedback_lock:
            if self._feedback is None:
                path = os.environ.get("LMREC_FEEDBACK_DB") or self.params.feedback_db
                self._feedback = FeedbackStore(path)
            try:
                seq = self._feedback.append(event_row)
            except ValueError as err:
                return error(422, str(err))
        REQUESTS.labels(variant=variant, endpoint="feedback", path="store").inc()
        return {"status": "recorded", "seq": seq, "variant": variant}


LmrecService.add_asgi_middleware(
    GuardMiddleware,
    token_env="LMREC_API_TOKEN",
    max_body_bytes=SERVE_PARAMS.max_body_bytes,
)
