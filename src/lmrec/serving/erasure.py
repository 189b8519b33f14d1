"""Erasing events from the feedback and impression logs: a user's (``lmrec forget
--user-id``) and those past the retention limit (``serve.feedback.retention_days``).

Both run in one transaction on the log (the append-only triggers are lifted inside it
only, ``lmrec.serving.feedback.lifted``), with ``secure_delete`` on so the freed pages are
zeroed, then checkpoint the WAL so the deleted rows' old pages leave the ``-wal`` file
too. A forgotten user's pseudonym goes into ``forgotten_users``: ingest drops that user's
rows from whatever source the next snapshot is built from (``lmrec.data.feedback
.forgotten_users``). Each erasure appends one JSON line to the audit log (fsynced): when,
what, how many rows per table, and the pseudonym, never the raw id.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path

from lmrec.data.contract import pseudonymise_id
from lmrec.data.feedback import FORGOTTEN_TABLE, IMPRESSIONS_TABLE, TABLE
from lmrec.io import DataError
from lmrec.serving.feedback import FeedbackStore, lifted

DAY_S = 86_400.0
ERASABLE = (TABLE, IMPRESSIONS_TABLE)


def audit_path(feedback_db: Path, audit_log: str | None) -> Path:
    """The audit log: ``audit_log`` when set, else ``audit.log`` beside the feedback log."""
    return Path(audit_log) if audit_log else feedback_db.parent / "audit.log"


def forget(db: Path, user_id: str, audit_log: Path, salt: str | None = None) -> dict:
    """Erase every event of ``user_id`` (the raw id; an id that is already a pseudonym is
    matched too, as ``/recommend`` accepts both) from the log at ``db``.

    Returns:
        The audit record: ``action``, ``user`` (the pseudonym), ``deleted`` per table.

    Raises:
        DataError: no log at ``db``, or an empty ``user_id``.
    """
    if not user_id.strip():
        raise DataError("--user-id must not be empty")
    with _open(db, salt) as store:
        pseudonym = pseudonymise_id(user_id, store.salt)
        keys = (pseudonym, user_id)

        def erase(conn: sqlite3.Connection) -> dict[str, int]:
            deleted = _delete(conn, "user_id IN (?, ?)", keys)
            conn.execute(
                f"INSERT OR REPLACE INTO {FORGOTTEN_TABLE} (user_id, forgotten_at) VALUES (?, ?)",
                (pseudonym, time.time()),
            )
            return deleted

        deleted = store.transaction(erase)
    return _audit(audit_log, db, {"action": "forget", "user": pseudonym, "deleted": deleted})


def expire(db: Path, retention_days: float, audit_log: Path, now: float | None = None) -> dict:
    """Erase the events older than ``retention_days`` from the log at ``db``.

    Returns:
        The record: ``action``, ``before`` (the cutoff, unix s), ``deleted`` per table;
        audited when a row was deleted.

    Raises:
        DataError: no log at ``db``.
    """
    cutoff = (time.time() if now is None else now) - retention_days * DAY_S
    with _open(db, None) as store:
        deleted = store.transaction(lambda conn: _delete(conn, "timestamp < ?", (cutoff,)))
    record = {"action": "expire", "retention_days": retention_days, "before": cutoff}
    record["deleted"] = deleted
    return _audit(audit_log, db, record) if sum(deleted.values()) else record


def _open(db: Path, salt: str | None) -> FeedbackStore:
    if not db.is_file():
        raise DataError(f"{db}: no feedback log there (serve.feedback_db / --feedback)")
    return FeedbackStore(db, salt=salt)


def _delete(conn: sqlite3.Connection, where: str, args: tuple) -> dict[str, int]:
    conn.execute("PRAGMA secure_delete = ON")
    deleted = {}
    for table in ERASABLE:
        with lifted(conn, table, "delete"):
            deleted[table] = conn.execute(f"DELETE FROM {table} WHERE {where}", args).rowcount
    return deleted


def _audit(audit_log: Path, db: Path, record: dict) -> dict:
    """Checkpoint the WAL of ``db``, then append ``record`` (plus time and log) as a line."""
    conn = sqlite3.connect(db, timeout=30)
    try:
        busy = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
    finally:
        conn.close()
    record = {"at": time.time(), "log": str(db), **record, "wal_checkpointed": busy == 0}
    audit_log.parent.mkdir(parents=True, exist_ok=True)
    with audit_log.open("a", encoding="utf-8") as out:
        out.write(json.dumps(record, sort_keys=True) + "\n")
        out.flush()
        os.fsync(out.fileno())
    return record
