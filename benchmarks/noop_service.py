"""The serving benchmark's floor: lmrec's ``POST /recommend`` with no model behind it.

    bentoml serve noop_service:NoopService --working-dir benchmarks

Same BentoML settings as ``lmrec.serving.service:LmrecService`` (one worker, 30 s timeout,
an async API run on the event loop) and the same request and response shape,
but the answer is a constant list of ``k`` items: what is left is what BentoML itself costs
(HTTP, JSON, validation, dispatch). Like lmrec it hands its answer over as a ready
``JSONResponse`` (BentoML would otherwise build a pydantic schema of the ``dict`` return
type per request), so the ratio measures lmrec's own work. Nothing from lmrec is imported.
"""

from __future__ import annotations

import uuid
from functools import lru_cache
from typing import Any

import bentoml
from starlette.responses import JSONResponse


@lru_cache(maxsize=128)
def _items(k: int) -> tuple[dict[str, Any], ...]:
    return tuple(
        {"item_id": f"item{i:05d}", "title": f"Item {i}", "score": round(1.0 - i / 100, 6)}
        for i in range(k)
    )


@bentoml.service(name="lmrec-noop", traffic={"timeout": 30}, workers=1)
class NoopService:
    """``/recommend`` answering a constant top-k list."""

    @bentoml.api(route="/recommend")
    async def recommend(
        self,
        user_id: str | None = None,
        history: list[str] | None = None,
        k: int = 10,
        exclude_seen: bool = True,
        explain: bool = False,
        diversity: float = 0.0,
    ) -> dict[str, Any]:
        """A constant list of ``k`` items, shaped like lmrec's answer."""
        return JSONResponse(
            {
                "items": list(_items(max(1, min(k, 100)))),
                "model_version": "noop",
                "variant": "champion",
                "request_id": uuid.uuid4().hex,
                "path": "noop",
            }
        )
