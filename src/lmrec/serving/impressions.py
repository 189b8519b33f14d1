"""The impression log: every item of every ``/recommend`` answer, keyed by ``request_id``.

Online metrics per variant join it with the feedback log (same file, table
``impressions``, schema in ``lmrec.data.feedback``): impressions, clicks and CTR per model
version and variant. A row holds the pseudonymised user id (never the raw one; None for a
request by posted history only), the model version and variant that answered, the item
and its position (0 = first) and the answer's time.

An answer never waits for the disk: ``ImpressionLog.log`` queues the answer's rows (a
bounded queue; when it is full the rows are dropped and counted in
``lmrec_impressions_dropped_total``) and one writer thread stores them in batches, one
transaction a batch, with ``synchronous=NORMAL``: a stored row survives the service being
killed; an OS crash may lose the last batches, a kill the rows still queued (milliseconds'
worth). A write that fails (locked, disk full) is retried a few times, then dropped and
counted: losing impressions must not stop the service from answering.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from pathlib import Path

from lmrec.data.contract import pseudonymise_id, user_id_salt
from lmrec.data.feedback import IMPRESSION_FIELDS, IMPRESSIONS_SCHEMA, IMPRESSIONS_TABLE
from lmrec.serving.feedback import BUSY_TIMEOUT_S, in_transaction, open_durable
from lmrec.serving.metrics import IMPRESSIONS_DROPPED

log = logging.getLogger("lmrec.serving")

MAX_QUEUED = 10_000  # answers
MAX_BATCH = 256  # answers per transaction
WRITE_ATTEMPTS = 3
_INSERT = (
    f"INSERT INTO {IMPRESSIONS_TABLE} ({', '.join(IMPRESSION_FIELDS)}) "
    f"VALUES ({', '.join('?' * len(IMPRESSION_FIELDS))})"
)

# one answer as queued: request_id, raw user id (or None), model version, variant,
# item ids in served order, time
Answer = tuple[str, str | None, str, str, list[str], float]


class ImpressionLog:
    """Queue served answers; a daemon thread appends them to ``path``'s impression table.

    Args:
        path: the database file (the feedback log's); opened by the writer thread.
        salt: the pseudonymisation salt (default ``$LMREC_USER_ID_SALT``, read once).
        busy_timeout_s: how long a batch waits for another writer's lock.
    """

    def __init__(
        self, path: str | Path, salt: str | None = None, busy_timeout_s: float = BUSY_TIMEOUT_S
    ) -> None:
        self.path = Path(path)
        self.salt = salt if salt is not None else user_id_salt()
        self.busy_timeout_s = busy_timeout_s
        self._queue: queue.Queue[Answer] = queue.Queue(MAX_QUEUED)
        self._thread = threading.Thread(target=self._run, name="lmrec-impressions", daemon=True)
        self._thread.start()

    def log(
        self,
        request_id: str,
        user_id: str | None,
        model_version: str,
        variant: str,
        item_ids: list[str],
    ) -> bool:
        """Queue one answer's items (returns at once); False when the queue was full."""
        answer = (request_id, user_id, model_version, variant, item_ids, time.time())
        try:
            self._queue.put_nowait(answer)
        except queue.Full:
            IMPRESSIONS_DROPPED.inc(len(item_ids))
            return False
        return True

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until every queued answer is written (or dropped); False on timeout."""
        deadline = time.monotonic() + timeout_s
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)
        return not self._queue.unfinished_tasks

    def _rows(self, answers: list[Answer]) -> list[tuple]:
        rows = []
        for request_id, user_id, version, variant, items, at in answers:
            user = None if user_id is None else pseudonymise_id(user_id, self.salt)
            rows += [(request_id, user, version, variant, item, position, at)
                     for position, item in enumerate(items)]  # fmt: skip
        return rows

    def _run(self) -> None:
        conn = None
        while True:
            answers = [self._queue.get()]
            while len(answers) < MAX_BATCH and not self._queue.empty():
                answers.append(self._queue.get_nowait())
            rows = self._rows(answers)
            for attempt in range(1, WRITE_ATTEMPTS + 1):
                try:
                    if conn is None:
                        conn = open_durable(self.path, IMPRESSIONS_SCHEMA, self.busy_timeout_s)
                        conn.execute("PRAGMA synchronous=NORMAL")
                    in_transaction(conn, lambda db, rows=rows: db.executemany(_INSERT, rows))
                    break
                except Exception as err:  # the log must never stop the answers
                    log.warning("impression log %s: write %d failed: %s", self.path, attempt, err)
                    if attempt == WRITE_ATTEMPTS:
                        IMPRESSIONS_DROPPED.inc(len(rows))
                    time.sleep(0.1 * attempt)
            for _ in answers:
                self._queue.task_done()
