"""A durable, append-only store for the feedback events ``POST /feedback`` receives.

SQLite in WAL mode with ``synchronous=FULL``: when :meth:`FeedbackStore.append` returns,
the event's transaction is on disk, so a service killed and restarted loses no event it
acknowledged. The next ``lmrec ingest`` with ``ingest.source: feedback`` reads the log
(``lmrec.data.feedback``, which also holds the table's schema).

Threading: one connection per store, shared by all threads and serialised by a lock.
SQLite admits one writer at a time anyway, so per-thread connections would only trade the
lock for ``SQLITE_BUSY`` retries. Several processes (service workers) may each open a
store on the same file: SQLite's file locks serialise them, and the busy timeout makes a
writer wait for another instead of failing.
"""

from __future__ import annotations

import math
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from lmrec.data.feedback import EVENT_FIELDS, SCHEMA, TABLE, events_query, rows_frame

MAX_LENGTH = 512
BUSY_TIMEOUT_S = 30.0
_REQUIRED = ("user_id", "item_id", "event")
_OPTIONAL = ("request_id", "model_version", "variant")


@dataclass(frozen=True)
class FeedbackEvent:
    """One feedback event, as received; invalid values are refused on construction.

    Attributes:
        user_id: the raw user id the product service sends (pseudonymised at ingest).
        item_id: the catalog item the event is about.
        event: what happened: click, purchase, dismiss...
        timestamp: server-side receipt time, unix seconds (now, by default).
        request_id: the ``/recommend`` response this event follows, when known.
        model_version: the model version that served that response.
        variant: the A/B variant (champion / challenger) that served it.
    """

    user_id: str
    item_id: str
    event: str
    timestamp: float = field(default_factory=time.time)
    request_id: str | None = None
    model_version: str | None = None
    variant: str | None = None

    def __post_init__(self) -> None:
        for name in _REQUIRED + _OPTIONAL:
            value = getattr(self, name)
            if value is None and name in _OPTIONAL:
                continue
            if not isinstance(value, str):
                raise ValueError(f"{name} must be a string, got {type(value).__name__}")
            if not value.strip():
                raise ValueError(f"{name} must not be empty")
            if len(value) > MAX_LENGTH:
                raise ValueError(f"{name} is longer than {MAX_LENGTH} characters ({len(value)})")
        ok = isinstance(self.timestamp, int | float) and not isinstance(self.timestamp, bool)
        if not ok or not math.isfinite(self.timestamp) or self.timestamp < 0:
            raise ValueError(f"timestamp must be a finite unix time, got {self.timestamp!r}")


def open_durable(path: Path, schema: str) -> sqlite3.Connection:
    """A connection to ``path`` in WAL mode with ``synchronous=FULL`` and ``schema`` applied
    (folder and tables created when missing). Autocommit (``isolation_level=None``): a lone
    INSERT is its own durable transaction.

    Raises:
        sqlite3.OperationalError: the file cannot be opened or WAL mode is unavailable.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(
        path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
    )
    try:
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise sqlite3.OperationalError(f"{path}: WAL mode unavailable (got {mode})")
        conn.execute("PRAGMA synchronous=FULL")
        conn.executescript(schema)
    except BaseException:
        conn.close()
        raise
    return conn


class FeedbackStore:
    """An append-only SQLite log of :class:`FeedbackEvent` (no update or delete API;
    triggers refuse both at the database level too).

    Args:
        path: the database file; its folder and the table are created when missing.

    Raises:
        sqlite3.OperationalError: the file cannot be opened or WAL mode is unavailable.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = open_durable(self.path, SCHEMA)

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError(f"feedback store {self.path} is closed")
        return self._conn

    def append(self, event: FeedbackEvent) -> int:
        """Store one event; return its sequence number once it is on disk."""
        return self.append_many([event])[0]

    def append_many(self, events: Iterable[FeedbackEvent]) -> list[int]:
        """Store events in one transaction (all or none); return their sequence numbers."""
        events = list(events)
        bad = [type(e).__name__ for e in events if not isinstance(e, FeedbackEvent)]
        if bad:
            raise TypeError(f"expected FeedbackEvent, got {bad[0]}")
        if not events:
            return []
        marks = ", ".join("?" * len(EVENT_FIELDS))
        sql = f"INSERT INTO {TABLE} ({', '.join(EVENT_FIELDS)}) VALUES ({marks})"
        with self._lock:
            db = self._db()
            db.execute("BEGIN IMMEDIATE")
            try:
                seqs = [db.execute(sql, _values(e)).lastrowid for e in events]
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return seqs

    def count(self) -> int:
        """How many events the store holds."""
        with self._lock:
            return self._db().execute(f"SELECT COUNT(*) FROM {TABLE}").fetchone()[0]

    def read(self, since_seq: int = 0, limit: int | None = None) -> list[FeedbackEvent]:
        """Events with a sequence number above ``since_seq``, oldest first."""
        sql, args = events_query(since_seq, limit)
        with self._lock:
            rows = self._db().execute(sql, args).fetchall()
        return [FeedbackEvent(**dict(zip(EVENT_FIELDS, row[1:], strict=True))) for row in rows]

    def to_frame(self, since_seq: int = 0) -> pd.DataFrame:
        """Events above ``since_seq`` as a DataFrame: ``seq`` plus every event field."""
        sql, args = events_query(since_seq)
        with self._lock:
            rows = self._db().execute(sql, args).fetchall()
        return rows_frame(rows)

    def close(self) -> None:
        """Close the connection (checkpointing the WAL); later calls raise RuntimeError."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> FeedbackStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _values(event: FeedbackEvent) -> tuple:
    """The event's column values in ``EVENT_FIELDS`` order (timestamp as a float)."""
    row = {name: getattr(event, name) for name in EVENT_FIELDS}
    return tuple({**row, "timestamp": float(event.timestamp)}.values())
