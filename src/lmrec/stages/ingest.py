"""Ingest stage: bring a source into the data contract under ``data/``.

Writes ``interactions.parquet`` and ``items.parquet`` together (atomically: both or
neither), then optionally snapshots the directory with ``dvc add`` so ``data.dvc``
records its hash. Ingest converts; it never judges the data: the validate stage does.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from lmrec.config import IngestParams
from lmrec.data import feedback, movielens, synthetic, tabular
from lmrec.io import LmrecError, atomic_dir

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IngestInputs:
    """Paths a file source reads (csv/parquet only)."""

    interactions: Path | None = None
    items: Path | None = None


def load_source(cfg: IngestParams, inputs: IngestInputs) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Load the configured source as contract tables (interactions, items)."""
    if cfg.source == "movielens-100k":
        return movielens.load(movielens.Mirror(cfg.movielens))
    if cfg.source == "synthetic":
        interactions, items, _ = synthetic.generate(cfg.synthetic)
        return interactions, items
    if cfg.source == "feedback":
        return feedback.load(cfg.feedback)
    if inputs.interactions is None or inputs.items is None:
        raise LmrecError(f"--source {cfg.source} needs both --interactions and --items paths")
    return tabular.load(inputs.interactions, inputs.items, cfg.columns, cfg.default_event)


def drop_forgotten(interactions: pd.DataFrame, feedback_db: Path) -> pd.DataFrame:
    """``interactions`` without the users ``lmrec forget`` erased (listed in the feedback
    log at ``feedback_db``), whatever the source: a forgotten user stays out of every later
    snapshot."""
    forgotten = feedback.forgotten_users(feedback_db)
    if not forgotten:
        return interactions
    gone = interactions["user_id"].isin(forgotten)
    if gone.any():
        log.info("dropped %d interaction(s) of %d forgotten user(s)", gone.sum(), len(forgotten))
    return interactions[~gone].reset_index(drop=True)


def run(cfg: IngestParams, inputs: IngestInputs, out_dir: Path) -> dict:
    """Ingest the source into ``out_dir``; return a summary (counts per table)."""
    interactions, items = load_source(cfg, inputs)
    interactions = drop_forgotten(interactions, Path(cfg.feedback.db))
    with atomic_dir(out_dir) as tmp:
        interactions.to_parquet(tmp / "interactions.parquet", index=False)
        items.to_parquet(tmp / "items.parquet", index=False)
    summary = {
        "source": cfg.source,
        "interactions": len(interactions),
        "users": int(interactions["user_id"].nunique()),
        "items": len(items),
        "items_interacted": int(interactions["item_id"].nunique()),
    }
    log.info("ingested %s", summary)
    return summary


def snapshot(out_dir: Path, push: bool = False) -> None:
    """Version ``out_dir`` with ``dvc add`` (and push it to the default remote)."""
    for cmd in (["add", str(out_dir)], ["push", f"{out_dir}.dvc"] if push else None):
        if cmd is None:
            continue
        done = subprocess.run([sys.executable, "-m", "dvc", *cmd], capture_output=True, text=True)
        if done.returncode != 0:
            raise LmrecError(f"dvc {' '.join(cmd)} failed:\n{done.stdout}{done.stderr}")
