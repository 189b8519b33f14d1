"""A durable, append-only store for the feedback events ``POST /feedback`` receives.

SQLite in WAL mode with ``synchronous=FULL``: when :meth:`FeedbackStore.append` returns,
the event's transaction is on disk, so a service killed and restarted loses no event it
acknowledged. The next ``lmrec ingest`` with ``ingest.source: feedback`` reads the log
(``lmrec.data.feedback``, which also holds the table's schema).

The log never holds a raw user id: :meth:`FeedbackStore.append_many` stores the same
HMAC pseudonym ingest makes (``lmrec.data.contract.pseudonymise_id``, salt
``$LMREC_USER_ID_SALT``). An event with a ``request_id`` is stored once: a client retrying
a post whose answer it did not get (a 503, a timeout) gets the first one's ``seq`` back.
A write that cannot be done now (another writer holds the lock past the busy timeout, the
disk is full, the file is read-only) raises ``sqlite3.OperationalError`` with nothing of
the transaction written; the service answers 503 with ``Retry-After``.

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
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import pandas as pd

from lmrec.data.contract import pseudonymise_id, user_id_salt
from lmrec.data.feedback import (
    EVENT_FIELDS,
    FORGOTTEN_SCHEMA,
    IMPRESSIONS_SCHEMA,
    ONCE,
    SCHEMA,
    SCHEMA_VERSION,
    TABLE,
    events_query,
    rows_frame,
)

T = TypeVar("T")

MAX_LENGTH = 512
BUSY_TIMEOUT_S = 30.0
_REQUIRED = ("user_id", "item_id", "event")
_OPTIONAL = ("request_id", "model_version", "variant")


@dataclass(frozen=True)
class FeedbackEvent:
    """One feedback event, as received; invalid values are refused on construction.

    Attributes:
        user_id: the user id the product service sends; the store keeps only its
            pseudonym (what :meth:`FeedbackStore.read` returns).
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


def open_durable(
    path: Path, schema: str, busy_timeout_s: float = BUSY_TIMEOUT_S
) -> sqlite3.Connection:
    """A connection to ``path`` in WAL mode with ``synchronous=FULL`` and ``schema`` applied
    (folder and tables created when missing). Autocommit (``isolation_level=None``): a lone
    INSERT is its own durable transaction.

    Raises:
        sqlite3.OperationalError: the file cannot be opened or WAL mode is unavailable.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(
        path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False
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
    triggers refuse both at the database level too: only ``lmrec.serving.erasure``, for
    ``lmrec forget`` and the retention limit, lifts them inside its own transaction).

    Args:
        path: the database file; its folder and the tables are created when missing.
        salt: the pseudonymisation salt (default ``$LMREC_USER_ID_SALT``, read once).
        busy_timeout_s: how long a write waits for another writer's lock before it fails.

    Raises:
        sqlite3.OperationalError: the file cannot be opened or WAL mode is unavailable.
    """

    def __init__(
        self, path: str | Path, salt: str | None = None, busy_timeout_s: float = BUSY_TIMEOUT_S
    ) -> None:
        self.path = Path(path)
        self.salt = salt if salt is not None else user_id_salt()
        self._lock = threading.Lock()
        schema = SCHEMA + IMPRESSIONS_SCHEMA + FORGOTTEN_SCHEMA
        self._conn: sqlite3.Connection | None = open_durable(self.path, schema, busy_timeout_s)
        try:
            migrate(self._conn, self.salt)
        except BaseException:
            self.close()
            raise

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError(f"feedback store {self.path} is closed")
        return self._conn

    def append(self, event: FeedbackEvent) -> int:
        """Store one event; return its sequence number once it is on disk."""
        return self.append_many([event])[0]

    def append_many(self, events: Iterable[FeedbackEvent]) -> list[int]:
        """Store events in one transaction (all or none); return their sequence numbers.

        An event whose (request_id, item_id, event) is already stored is not stored again:
        its ``seq`` is the stored one's.

        Raises:
            sqlite3.OperationalError: the write cannot be done now (locked, disk full,
                read-only); nothing of it was written.
        """
        events = list(events)
        bad = [type(e).__name__ for e in events if not isinstance(e, FeedbackEvent)]
        if bad:
            raise TypeError(f"expected FeedbackEvent, got {bad[0]}")
        if not events:
            return []
        with self._lock:
            return in_transaction(self._db(), lambda db: [self._insert(db, e) for e in events])

    def _insert(self, db: sqlite3.Connection, event: FeedbackEvent) -> int:
        row = _values(event, pseudonymise_id(event.user_id, self.salt))
        cursor = db.execute(_INSERT, row)
        if cursor.rowcount == 1:
            return cursor.lastrowid
        key = (event.request_id, event.item_id, event.event)  # a repeat: the first one's seq
        return db.execute(_SEQ_OF, key).fetchone()[0]

    def transaction(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """``work(connection)`` in one write transaction, under the store's lock (erasure:
        ``lmrec.serving.erasure``)."""
        with self._lock:
            return in_transaction(self._db(), work)

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


_COLUMNS = ", ".join(EVENT_FIELDS)
_INSERT = (
    f"INSERT INTO {TABLE} ({_COLUMNS}) VALUES ({', '.join('?' * len(EVENT_FIELDS))}) "
    "ON CONFLICT (request_id, item_id, event) WHERE request_id IS NOT NULL DO NOTHING"
)
_SEQ_OF = f"SELECT seq FROM {TABLE} WHERE request_id = ? AND item_id = ? AND event = ?"


def in_transaction(db: sqlite3.Connection, work: Callable[[sqlite3.Connection], T]) -> T:
    """``work(db)`` in one ``BEGIN IMMEDIATE`` transaction: committed, or rolled back and
    the error re-raised (SQLite has already rolled back after some errors, such as a full
    disk: a second rollback would hide the first error)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        result = work(db)
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    return result


def migrate(db: sqlite3.Connection, salt: str) -> None:
    """Bring a feedback log to ``SCHEMA_VERSION`` in one transaction: version 0 stored raw
    user ids and let a retried post be stored twice; their rows get pseudonymised ids and
    the later copies of a (request_id, item_id, event) go."""
    if db.execute("PRAGMA user_version").fetchone()[0] >= SCHEMA_VERSION:
        return

    def upgrade(db: sqlite3.Connection) -> None:
        if db.execute("PRAGMA user_version").fetchone()[0] >= SCHEMA_VERSION:
            return  # another process migrated it while this one waited for the lock
        db.create_function("lmrec_pseudonym", 1, lambda raw: pseudonymise_id(raw, salt))
        with lifted(db, TABLE, "update", "delete"):
            db.execute(f"UPDATE {TABLE} SET user_id = lmrec_pseudonym(user_id)")
            db.execute(
                f"DELETE FROM {TABLE} WHERE request_id IS NOT NULL AND seq NOT IN "
                f"(SELECT MIN(seq) FROM {TABLE} WHERE request_id IS NOT NULL "
                "GROUP BY request_id, item_id, event)"
            )
        for statement in ONCE.split(";"):
            if statement.strip():
                db.execute(statement)
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    in_transaction(db, upgrade)


@contextmanager
def lifted(db: sqlite3.Connection, table: str, *operations: str) -> Iterator[None]:
    """Inside a transaction: drop ``table``'s append-only triggers for ``operations``
    (update, delete), run the block, put them back. SQLite's DDL is transactional, so no
    other connection ever sees the table without them."""
    for op in operations:
        db.execute(f"DROP TRIGGER IF EXISTS {table}_no_{op}")
    yield
    for op in operations:
        db.execute(
            f"CREATE TRIGGER {table}_no_{op} BEFORE {op.upper()} ON {table} "
            f"BEGIN SELECT RAISE(ABORT, '{table} is append-only'); END"
        )


def _values(event: FeedbackEvent, user_id: str) -> tuple:
    """The event's column values in ``EVENT_FIELDS`` order (pseudonymised ``user_id``,
    timestamp as a float)."""
    row = {name: getattr(event, name) for name in EVENT_FIELDS}
    return tuple({**row, "user_id": user_id, "timestamp": float(event.timestamp)}.values())
