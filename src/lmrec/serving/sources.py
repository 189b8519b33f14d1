"""Where the served bundles come from: environment variables or the BentoML model store.

A source's ``identity`` changes with its content, so the service knows when to reload.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import bentoml

from lmrec.serving.bundle import BUNDLE_FILE

CHAMPION_TAG = "lmrec-champion:latest"
CHALLENGER_TAG = "lmrec-challenger:latest"


@dataclass(frozen=True)
class Source:
    """Where a variant's bundle is and what identifies its content (a new identity is a
    new deployment: a newer model in the store, or a rewritten bundle directory)."""

    path: Path
    identity: str


def source(env: str, tag: str, required: bool) -> Source | None:
    """The bundle directory named by ``env``, else the newest ``tag`` in the model store."""
    if os.environ.get(env):
        path = Path(os.environ[env])
        try:
            stamp = (path / BUNDLE_FILE).stat().st_mtime_ns
        except OSError:
            stamp = 0
        return Source(path, f"{path.resolve()}@{stamp}")
    try:
        model = bentoml.models.get(tag)
    except bentoml.exceptions.NotFound:
        if required:
            raise RuntimeError(
                f"no model to serve: set {env} to a bundle directory or run `lmrec package` "
                f"(BentoML model {tag} not found)"
            ) from None
        return None
    return Source(Path(model.path), f"{model.tag}@{model.info.creation_time.isoformat()}")


def sources() -> dict[str, Source]:
    """The bundles to serve now: the champion, and the challenger when there is one."""
    found = {"champion": source("LMREC_BUNDLE", CHAMPION_TAG, required=True)}
    challenger = source("LMREC_CHALLENGER_BUNDLE", CHALLENGER_TAG, required=False)
    if challenger is not None:
        found["challenger"] = challenger
    return found
