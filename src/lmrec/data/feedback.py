"""The feedback log: its SQLite schema and the ``feedback`` ingest source reading it.

The service appends events to this log (``lmrec.serving.feedback.FeedbackStore``); the
next ingest turns them into contract tables, on the catalog the events refer to (the
previous snapshot's ``items.parquet``), so retraining learns from what users did with
the served recommendations. The schema lives here, in the lower layer, so the writer
(serving) and the reader (this source) share one definition.

The same database holds the items added through ``POST /items``
(``lmrec.serving.catalog_store.ItemStore``, table ``catalog_items``): the source adds them
to the catalog it returns (an id already in the catalog takes the posted title, text and
categories), so events on them are kept and the next retraining knows them.

Unlike the other sources this one drops rows, and counts what it drops: events for items
missing from the catalog (validation would refuse the whole snapshot for them), events
not in ``events`` when that filter is set, and repeats of the same (user, item, event)
within one second, which the contract's whole-second timestamps cannot tell apart.
"""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from lmrec.config import FeedbackSourceParams
from lmrec.data.contract import interactions_frame, items_frame, pseudonymise
from lmrec.io import DataError, read_table, strings_as_object

log = logging.getLogger(__name__)

TABLE = "feedback_events"
EVENT_FIELDS = (
    "user_id", "item_id", "event", "timestamp", "request_id", "model_version", "variant",
)  # fmt: skip
SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id TEXT NOT NULL,
    item_id TEXT NOT NULL,
    event TEXT NOT NULL,
    timestamp REAL NOT NULL,
    request_id TEXT,
    model_version TEXT,
    variant TEXT
);
CREATE TRIGGER IF NOT EXISTS {TABLE}_no_update BEFORE UPDATE ON {TABLE}
BEGIN SELECT RAISE(ABORT, '{TABLE} is append-only'); END;
CREATE TRIGGER IF NOT EXISTS {TABLE}_no_delete BEFORE DELETE ON {TABLE}
BEGIN SELECT RAISE(ABORT, '{TABLE} is append-only'); END;
"""
#: the feedback log's schema version (``PRAGMA user_version``): 1 = user ids pseudonymised
#: and one row per (request_id, item_id, event) (``ONCE``); a version-0 log (raw ids) is
#: migrated when ``FeedbackStore`` opens it
SCHEMA_VERSION = 1
ONCE = f"""
CREATE UNIQUE INDEX IF NOT EXISTS {TABLE}_once ON {TABLE} (request_id, item_id, event)
WHERE request_id IS NOT NULL;
"""

IMPRESSIONS_TABLE = "impressions"
#: One row per item of a served /recommend answer: ``position`` 0 is the first item;
#: ``user_id`` is pseudonymised (None for a request by posted history only).
IMPRESSION_FIELDS = (
    "request_id", "user_id", "model_version", "variant", "item_id", "position", "timestamp",
)  # fmt: skip
IMPRESSIONS_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {IMPRESSIONS_TABLE} (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id TEXT NOT NULL,
    user_id TEXT,
    model_version TEXT NOT NULL,
    variant TEXT NOT NULL,
    item_id TEXT NOT NULL,
    position INTEGER NOT NULL,
    timestamp REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS {IMPRESSIONS_TABLE}_request ON {IMPRESSIONS_TABLE} (request_id);
CREATE TRIGGER IF NOT EXISTS {IMPRESSIONS_TABLE}_no_update BEFORE UPDATE ON {IMPRESSIONS_TABLE}
BEGIN SELECT RAISE(ABORT, '{IMPRESSIONS_TABLE} is append-only'); END;
CREATE TRIGGER IF NOT EXISTS {IMPRESSIONS_TABLE}_no_delete BEFORE DELETE ON {IMPRESSIONS_TABLE}
BEGIN SELECT RAISE(ABORT, '{IMPRESSIONS_TABLE} is append-only'); END;
"""

FORGOTTEN_TABLE = "forgotten_users"
#: Pseudonymised ids erased by ``lmrec forget``: ingest drops their rows from any source,
#: so a user forgotten here does not come back with the next snapshot.
FORGOTTEN_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {FORGOTTEN_TABLE} (
    user_id TEXT PRIMARY KEY,
    forgotten_at REAL NOT NULL
);
"""

ITEMS_TABLE = "catalog_items"
#: One row per POST /items (an addition or an update): an append-only log whose latest row
#: per item_id is the item; ``added_at`` is when that row was posted (unix seconds),
#: ``encoder`` and ``embedding`` the text encoder's fingerprint and output (float32 bytes).
ITEM_FIELDS = ("item_id", "title", "text", "categories", "added_at", "encoder", "embedding")
ITEMS_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {ITEMS_TABLE} (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    item_id TEXT NOT NULL,
    title TEXT NOT NULL,
    text TEXT NOT NULL,
    categories TEXT NOT NULL,
    added_at REAL NOT NULL,
    encoder TEXT,
    embedding BLOB
);
CREATE TRIGGER IF NOT EXISTS {ITEMS_TABLE}_no_update BEFORE UPDATE ON {ITEMS_TABLE}
BEGIN SELECT RAISE(ABORT, '{ITEMS_TABLE} is append-only'); END;
CREATE TRIGGER IF NOT EXISTS {ITEMS_TABLE}_no_delete BEFORE DELETE ON {ITEMS_TABLE}
BEGIN SELECT RAISE(ABORT, '{ITEMS_TABLE} is append-only'); END;
"""


@dataclass(frozen=True)
class FeedbackStats:
    """What the source read and what it dropped (logged at ingest)."""

    events_read: int
    dropped_event_filter: int
    dropped_unknown_item: int
    dropped_duplicate: int
    kept: int


def events_query(since_seq: int = 0, limit: int | None = None) -> tuple[str, tuple]:
    """The SELECT (and its parameters) of events after ``since_seq``, oldest first."""
    sql = f"SELECT seq, {', '.join(EVENT_FIELDS)} FROM {TABLE} WHERE seq > ? ORDER BY seq"
    if limit is None:
        return sql, (since_seq,)
    return sql + " LIMIT ?", (since_seq, limit)


def rows_frame(rows: list[tuple]) -> pd.DataFrame:
    """Rows of :func:`events_query` as a frame (strings as ``object``, missing as None)."""
    frame = pd.DataFrame.from_records(rows, columns=["seq", *EVENT_FIELDS])
    return strings_as_object(frame.astype({"seq": "int64", "timestamp": "float64"}))


def read_events(db: Path) -> pd.DataFrame:
    """Every event in the log at ``db``, read-only (the service may be writing to it),
    with pseudonymised user ids (a log of schema version 0 held raw ones).

    Raises:
        DataError: the file is missing, empty, not a feedback log, or holds no events.
    """
    if not db.exists():
        raise DataError(f"{db}: feedback database not found")
    if db.stat().st_size == 0:
        raise DataError(f"{db}: feedback database is empty (0 bytes)")
    try:
        conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            sql, args = events_query()
            rows = conn.execute(sql, args).fetchall()
        finally:
            conn.close()
    except sqlite3.Error as err:
        raise DataError(f"{db}: cannot be read as a feedback log ({TABLE}): {err}") from err
    if not rows:
        raise DataError(f"{db}: feedback log holds no events")
    frame = rows_frame(rows)
    if version < SCHEMA_VERSION:  # written before the store pseudonymised: raw ids
        frame["user_id"] = pseudonymise(frame["user_id"])
    return frame


def forgotten_users(db: Path) -> set[str]:
    """The pseudonymised ids ``lmrec forget`` erased from the log at ``db``, read-only;
    empty when there is no log or no one was forgotten.

    Raises:
        DataError: the file cannot be read as an SQLite database.
    """
    if not db.is_file():
        return set()
    try:
        conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
        try:
            rows = _rows_if_table(conn, FORGOTTEN_TABLE, f"SELECT user_id FROM {FORGOTTEN_TABLE}")
        finally:
            conn.close()
    except sqlite3.Error as err:
        what = f"the forgotten users ({FORGOTTEN_TABLE})"
        raise DataError(f"{db}: cannot read {what}: {err}") from err
    return {row[0] for row in rows}


def _rows_if_table(conn: sqlite3.Connection, table: str, sql: str, args: tuple = ()) -> list:
    """``sql``'s rows, or none when the database has no ``table`` (nothing written yet)."""
    found = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)
    ).fetchone()
    return conn.execute(sql, args).fetchall() if found else []


def items_query(since_seq: int = 0) -> tuple[str, tuple]:
    """The SELECT (and its parameters) of item rows after ``since_seq``, oldest first."""
    columns = ", ".join(ITEM_FIELDS)
    return f"SELECT seq, {columns} FROM {ITEMS_TABLE} WHERE seq > ? ORDER BY seq", (since_seq,)


def latest_items(rows: list[tuple]) -> list[tuple]:
    """Rows of :func:`items_query` → one per item, in first-seen order: the latest row's
    fields with the first row's ``added_at`` (an update does not make an item new again)."""
    first: dict[str, float] = {}
    latest: dict[str, tuple] = {}
    at = 1 + ITEM_FIELDS.index("added_at")
    for row in rows:
        first.setdefault(row[1], row[at])
        latest[row[1]] = row  # a dict keeps the first insertion's place
    return [(*row[:at], first[item], *row[at + 1 :]) for item, row in latest.items()]


def read_added_items(db: Path) -> pd.DataFrame:
    """The items added through ``POST /items`` (:func:`latest_items`), read-only; an empty
    frame when the database has no such table (no item was ever added).

    Raises:
        DataError: the file cannot be read as an SQLite database.
    """
    try:
        conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
        try:
            rows = _rows_if_table(conn, ITEMS_TABLE, *items_query())
        finally:
            conn.close()
    except sqlite3.Error as err:
        raise DataError(f"{db}: cannot read the added items ({ITEMS_TABLE}): {err}") from err
    return pd.DataFrame.from_records(latest_items(rows), columns=["seq", *ITEM_FIELDS])


def with_added_items(items: pd.DataFrame, added: pd.DataFrame) -> pd.DataFrame:
    """The contract catalog ``items`` with ``added`` applied: an existing id takes the
    added title, text and categories, a new id is appended (catalog order, then added)."""
    if added.empty:
        return items
    posted = added.set_index("item_id")[["title", "text", "categories"]]
    table = items.set_index("item_id")
    known = posted.index.isin(table.index)
    table.loc[posted.index[known], posted.columns] = posted[known]
    table = pd.concat([table, posted[~known]]).reset_index()
    return items_frame(table["item_id"], table["title"], table["text"], table["categories"])


def read_catalog(path: Path) -> pd.DataFrame:
    """The contract items table the feedback refers to."""
    raw = read_table(path)
    missing = [c for c in ("item_id", "title") if c not in raw.columns]
    if missing:
        raise DataError(f"{path}: not a contract items table (missing column(s) {missing})")
    if raw.empty:
        raise DataError(f"{path}: item catalog has no rows")
    return items_frame(
        item_id=raw["item_id"],
        title=raw["title"],
        text=raw["text"] if "text" in raw.columns else None,
        categories=raw["categories"] if "categories" in raw.columns else None,
    )


def to_contract(
    events: pd.DataFrame, items: pd.DataFrame, keep_events: list[str] | None
) -> tuple[pd.DataFrame, FeedbackStats]:
    """Feedback events → a contract interactions table, plus counts of what was dropped.

    Timestamps are floored to whole seconds; ``value`` is NaN (feedback has no rating).
    """
    read = len(events)
    if keep_events is not None:
        events = events[events["event"].isin(keep_events)]
    by_filter = read - len(events)
    known = events["item_id"].isin(set(items["item_id"]))
    unknown = int((~known).sum())
    events = events[known]
    seconds = pd.Series(np.floor(events["timestamp"].to_numpy()).astype("int64"))
    interactions = interactions_frame(
        user_id=events["user_id"].reset_index(drop=True),
        item_id=events["item_id"].reset_index(drop=True),
        timestamp=seconds,
        event=events["event"].reset_index(drop=True),
        value=None,
        pseudonymised=True,
    )
    repeat = interactions.duplicated(["user_id", "item_id", "timestamp", "event"])
    interactions = interactions[~repeat].reset_index(drop=True)
    stats = FeedbackStats(read, by_filter, unknown, int(repeat.sum()), len(interactions))
    return interactions, stats


def load(cfg: FeedbackSourceParams) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The feedback log at ``cfg.db`` on the catalog ``cfg.items`` plus the items added
    through the service (:func:`with_added_items`), as contract tables.

    Raises:
        DataError: a file is missing, empty or unreadable, or no event is left to ingest.
    """
    db, catalog = Path(cfg.db), Path(cfg.items)
    items = read_catalog(catalog)
    events = read_events(db)
    added = read_added_items(db)
    if len(added):
        new = int((~added["item_id"].isin(set(items["item_id"]))).sum())
        log.info("%s: %d item(s) added, %d updated by POST /items", db, new, len(added) - new)
        items = with_added_items(items, added)
    interactions, stats = to_contract(events, items, cfg.events)
    if stats.dropped_unknown_item:
        log.warning(
            "%s: dropped %d feedback event(s) for items not in %s",
            db,
            stats.dropped_unknown_item,
            catalog,
        )
    log.info("feedback source %s: %s", db, asdict(stats))
    if not stats.kept:
        raise DataError(
            f"{db}: no feedback event left to ingest ({asdict(stats)}; "
            f"events kept: {cfg.events or 'all'}; catalog: {catalog})"
        )
    return interactions, items
