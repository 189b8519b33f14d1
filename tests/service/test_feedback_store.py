"""The feedback store: round trip, order, threads, durability across a SIGKILL, validation;
pseudonymised user ids, retried posts stored once, writes that cannot be done now (locked,
disk full) failing with nothing written, and the migration of a version-0 log."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import replace

import pytest

from lmrec.data.contract import pseudonymise_id
from lmrec.data.feedback import SCHEMA
from lmrec.serving.feedback import MAX_LENGTH, FeedbackEvent, FeedbackStore


@pytest.fixture()
def store(tmp_path):
    with FeedbackStore(tmp_path / "nested" / "feedback.db") as opened:
        yield opened


def _event(i: int, **kw) -> FeedbackEvent:
    return FeedbackEvent(user_id=f"user{i % 3}", item_id=f"item{i}", event="click", **kw)


def test_round_trip_keeps_every_field(store):
    full = FeedbackEvent("alice", "item7", "purchase", 1_700_000_000.25, "req-1", "3", "challenger")
    bare = FeedbackEvent("bob", "item8", "click")
    first, second = store.append(full), store.append(bare)
    assert second > first >= 1
    assert store.count() == 2
    stored = [replace(e, user_id=pseudonymise_id(e.user_id)) for e in (full, bare)]
    assert store.read() == stored
    assert store.read(since_seq=first) == stored[1:]
    frame = store.to_frame()
    assert frame["seq"].tolist() == [first, second]
    assert frame.loc[0, "variant"] == "challenger" and frame.loc[1, "request_id"] is None
    assert frame.loc[0, "timestamp"] == 1_700_000_000.25


def test_the_table_is_created_with_its_folder_and_survives_reopening(tmp_path):
    path = tmp_path / "a" / "b" / "feedback.db"
    with FeedbackStore(path) as first:
        first.append(_event(0))
    with FeedbackStore(path) as again:
        assert again.count() == 1
        assert again.append(_event(1)) == 2


def test_events_are_read_in_append_order(store):
    seqs = store.append_many([_event(i) for i in range(20)])
    seqs.append(store.append(_event(20)))
    assert seqs == sorted(seqs) and len(set(seqs)) == 21
    assert [e.item_id for e in store.read()] == [f"item{i}" for i in range(21)]
    assert [e.item_id for e in store.read(since_seq=seqs[9], limit=3)] == [
        "item10", "item11", "item12",
    ]  # fmt: skip


def test_append_many_is_all_or_nothing(store):
    store.append(_event(0))
    with pytest.raises(TypeError, match="expected FeedbackEvent"):
        store.append_many([_event(1), {"user_id": "x"}])
    broken = _event(3)
    object.__setattr__(broken, "item_id", None)  # slips past validation: NOT NULL fails
    with pytest.raises(sqlite3.IntegrityError):
        store.append_many([_event(2), broken])
    assert [e.item_id for e in store.read()] == ["item0"]  # item2 was rolled back


def test_the_log_refuses_updates_and_deletes(store):
    store.append(_event(0))
    raw = sqlite3.connect(store.path)
    for sql in ("UPDATE feedback_events SET event = 'x'", "DELETE FROM feedback_events"):
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            raw.execute(sql)
    raw.close()
    assert [(e.item_id, e.event) for e in store.read()] == [("item0", "click")]


def test_concurrent_appends_from_threads_all_land_with_distinct_seqs(store):
    n_threads, per_thread = 4, 25
    seqs: list[int] = []
    seqs_lock = threading.Lock()
    start = threading.Barrier(n_threads)

    def worker(t: int) -> None:
        start.wait()
        mine = [store.append(_event(t * per_thread + i)) for i in range(per_thread)]
        with seqs_lock:
            seqs.extend(mine)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(n_threads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(seqs) == len(set(seqs)) == n_threads * per_thread
    assert store.count() == n_threads * per_thread
    assert sorted(e.item_id for e in store.read()) == sorted(
        f"item{i}" for i in range(n_threads * per_thread)
    )


def test_wal_mode_and_full_sync_are_on(store):
    raw = sqlite3.connect(store.path)
    assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"  # persistent, per file
    raw.close()
    assert store._db().execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


_WRITER = textwrap.dedent(
    """
    import sys
    from lmrec.serving.feedback import FeedbackEvent, FeedbackStore

    store = FeedbackStore(sys.argv[1])
    for i in range(100_000):
        seq = store.append(FeedbackEvent(f"user{i % 7}", f"item{i}", "click"))
        print(seq, flush=True)  # the acknowledgement: printed only once append returned
    """
)


@pytest.mark.slow
def test_acknowledged_events_survive_a_sigkill(tmp_path):
    db = tmp_path / "feedback.db"
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(db)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    acked = []
    try:
        for line in proc.stdout:
            acked.append(int(line))
            if len(acked) == 40:
                proc.send_signal(signal.SIGKILL)  # mid-way: it is appending in a tight loop
                break
        tail, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == -signal.SIGKILL, err
    acked += [int(line) for line in tail.splitlines()]
    assert len(acked) < 100_000  # really killed mid-way
    with FeedbackStore(db) as fresh:
        stored = set(fresh.to_frame()["seq"])
        assert set(acked) <= stored
        assert fresh.append(_event(0)) > max(stored)  # and the log is still writable


@pytest.mark.parametrize("name", ["user_id", "item_id", "event"])
def test_empty_required_fields_are_refused_by_name(name):
    fields = {"user_id": "u", "item_id": "i", "event": "click", name: " "}
    with pytest.raises(ValueError, match=f"{name} must not be empty"):
        FeedbackEvent(**fields)


@pytest.mark.parametrize("name", ["user_id", "item_id", "event", "request_id", "variant"])
def test_over_long_strings_are_refused(name):
    fields = {"user_id": "u", "item_id": "i", "event": "click", name: "x" * (MAX_LENGTH + 1)}
    with pytest.raises(ValueError, match=f"{name} is longer than {MAX_LENGTH}"):
        FeedbackEvent(**fields)
    FeedbackEvent(**{**fields, name: "x" * MAX_LENGTH})  # the limit itself is fine


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -1.0, "now", True])
def test_bad_timestamps_are_refused(bad):
    with pytest.raises(ValueError, match="timestamp"):
        FeedbackEvent("u", "i", "click", timestamp=bad)


def test_non_string_ids_are_refused():
    with pytest.raises(ValueError, match="item_id must be a string"):
        FeedbackEvent("u", 42, "click")  # type: ignore[arg-type]


def test_a_closed_store_says_so(tmp_path):
    store = FeedbackStore(tmp_path / "f.db")
    store.close()
    store.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        store.append(_event(0))


def test_an_empty_store_reads_as_empty(store):
    assert store.count() == 0 and store.read() == [] and store.append_many([]) == []
    frame = store.to_frame()
    assert frame.empty and frame["seq"].dtype == "int64" and "variant" in frame


# ------------------------------------------------------------ privacy, retries, failures
def test_user_ids_are_stored_pseudonymised_never_raw(tmp_path):
    path = tmp_path / "f.db"
    with FeedbackStore(path, salt="s3cret") as store:
        store.append(FeedbackEvent("alice@example.com", "item1", "click"))
        assert store.read()[0].user_id == pseudonymise_id("alice@example.com", "s3cret")
    raw = sqlite3.connect(path)
    assert raw.execute("SELECT user_id FROM feedback_events").fetchall() == [
        (pseudonymise_id("alice@example.com", "s3cret"),)
    ]
    raw.close()
    assert b"alice" not in path.read_bytes()


def test_a_retried_event_is_stored_once(store):
    event = FeedbackEvent("alice", "item1", "click", request_id="req-1")
    first = store.append(event)
    assert store.append(replace(event, timestamp=event.timestamp + 5)) == first  # a retry
    assert store.append_many([event, event]) == [first, first]
    other_event = store.append(replace(event, event="purchase"))
    no_request = [store.append(replace(event, request_id=None)) for _ in range(2)]
    assert len({first, other_event, *no_request}) == 4  # without a request_id: no key
    assert store.count() == 4


def _hold_write_lock(path) -> sqlite3.Connection:
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another writer (process or connection) holds the lock
    return other


def test_a_locked_log_fails_within_the_busy_timeout_with_nothing_written(tmp_path):
    with FeedbackStore(tmp_path / "f.db", busy_timeout_s=0.2) as store:
        other = _hold_write_lock(store.path)
        started = time.monotonic()
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            store.append_many([_event(0), _event(1)])
        assert time.monotonic() - started < 5
        other.execute("ROLLBACK")
        other.close()
        assert store.count() == 0
        assert store.append(_event(2)) >= 1  # usable again once the lock is gone


def test_a_full_disk_fails_with_nothing_written(store):
    store.append(_event(0))
    db = store._db()
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    db.execute(f"PRAGMA max_page_count = {pages}")  # SQLite's own "database or disk is full"
    with pytest.raises(sqlite3.OperationalError, match="full"):
        store.append_many([_event(i, request_id="x" * 500) for i in range(1, 200)])
    assert [e.item_id for e in store.read()] == ["item0"]
    db.execute(f"PRAGMA max_page_count = {pages * 1000}")
    assert store.append(_event(1)) >= 2


def test_a_version_0_log_is_migrated_once(tmp_path):
    path = tmp_path / "old.db"
    old = sqlite3.connect(path)
    old.executescript(SCHEMA)
    rows = [("alice", "i1", "click", 1.0, "r1"), ("alice", "i1", "click", 2.0, "r1"),
            ("bob", "i2", "click", 3.0, None)]  # fmt: skip
    old.executemany(
        "INSERT INTO feedback_events (user_id, item_id, event, timestamp, request_id) "
        "VALUES (?, ?, ?, ?, ?)",
        rows,
    )
    old.commit()
    old.close()
    for _ in range(2):  # the second opening leaves the migrated log as it is
        with FeedbackStore(path) as store:
            events = store.read()
    assert [(e.user_id, e.timestamp) for e in events] == [
        (pseudonymise_id("alice"), 1.0),
        (pseudonymise_id("bob"), 3.0),
    ]


def test_a_read_only_log_fails_with_nothing_written(store):
    store.append(_event(0))
    store._db().execute("PRAGMA query_only = ON")  # SQLite's own read-only database
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        store.append_many([_event(1), _event(2)])
    store._db().execute("PRAGMA query_only = OFF")
    assert [e.item_id for e in store.read()] == ["item0"]
