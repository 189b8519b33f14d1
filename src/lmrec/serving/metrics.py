"""The service's Prometheus metrics (BentoML serves them at ``/metrics``)."""

from __future__ import annotations

from typing import Any

import bentoml

REQUESTS = bentoml.metrics.Counter(
    name="lmrec_requests_total",
    documentation="Answered API requests by variant, endpoint and scoring path",
    labelnames=["variant", "endpoint", "path"],
)
RELOADS = bentoml.metrics.Counter(
    name="lmrec_model_reloads_total",
    documentation="Model (re)loads by result: loaded or failed (the old model stays served)",
    labelnames=["result"],
)
ITEMS_ADDED = bentoml.metrics.Counter(
    name="lmrec_items_added_total",
    documentation="Items posted to /items by status: added (a new id) or updated",
    labelnames=["status"],
)
ADDED_ITEMS = bentoml.metrics.Gauge(
    name="lmrec_added_items",
    documentation="Items served that the champion's catalog did not have (added via /items)",
)
IMPRESSIONS_DROPPED = bentoml.metrics.Counter(
    name="lmrec_impressions_dropped_total",
    documentation="Served items not written to the impression log (queue full or write failed)",
)
_COUNTERS: dict[tuple[str, str, str], Any] = {}


def count(variant: str, endpoint: str, path: str) -> None:
    """``lmrec_requests_total{variant,endpoint,path} += 1`` (label children cached: the
    label lookup is a lock and a dict per call otherwise)."""
    key = (variant, endpoint, path)
    child = _COUNTERS.get(key)
    if child is None:
        child = _COUNTERS[key] = REQUESTS.labels(variant=variant, endpoint=endpoint, path=path)
    child.inc()
