"""Privacy on the real SQLite logs: the impression log, ``lmrec forget`` (a user's events
gone from both logs, from the file's bytes and from the next ingest, with an audit line that
never holds the raw id), and the retention limit."""

from __future__ import annotations

import json
import sqlite3

import pandas as pd
import pytest
from typer.testing import CliRunner

from lmrec.cli import app
from lmrec.data.contract import pseudonymise_id
from lmrec.data.feedback import forgotten_users
from lmrec.io import DataError
from lmrec.serving import erasure
from lmrec.serving.feedback import FeedbackEvent, FeedbackStore
from lmrec.serving.impressions import ImpressionLog
from lmrec.stages.ingest import drop_forgotten

NOW = 1_800_000_000.0
DAY = 86_400.0


def _impressions(db) -> list[tuple]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(
            "SELECT request_id, user_id, model_version, variant, item_id, position "
            "FROM impressions ORDER BY seq"
        ).fetchall()
    finally:
        conn.close()


@pytest.fixture()
def db(tmp_path):
    """A log with alice's and bob's feedback and impressions."""
    path = tmp_path / "feedback" / "feedback.db"
    with FeedbackStore(path) as store:
        store.append_many(
            [
                FeedbackEvent("alice@example.com", "i1", "click", NOW, request_id="req-a-1"),
                FeedbackEvent(
                    "alice@example.com", "i2", "click", NOW - 400 * DAY, request_id="req-a-2"
                ),
                FeedbackEvent("bob@example.com", "i1", "click", NOW, request_id="req-b-1"),
                FeedbackEvent("bob@example.com", "i3", "click", NOW - 400 * DAY),
            ]
        )
    log = ImpressionLog(path)
    log.log("req-a-1", "alice@example.com", "7", "champion", ["i1", "i4"])
    log.log("req-b-1", "bob@example.com", "8", "challenger", ["i1"])
    log.log("req-x", None, "7", "champion", ["i5"])
    assert log.flush()
    return path


def test_impressions_are_stored_per_item_with_pseudonymised_users(db):
    alice, bob = pseudonymise_id("alice@example.com"), pseudonymise_id("bob@example.com")
    assert _impressions(db) == [
        ("req-a-1", alice, "7", "champion", "i1", 0),
        ("req-a-1", alice, "7", "champion", "i4", 1),
        ("req-b-1", bob, "8", "challenger", "i1", 0),
        ("req-x", None, "7", "champion", "i5", 0),
    ]
    assert b"alice@example.com" not in db.read_bytes()


def test_forget_erases_a_user_everywhere_with_an_audit_line(db, tmp_path):
    audit = tmp_path / "audit.log"
    record = erasure.forget(db, "alice@example.com", audit)
    alice = pseudonymise_id("alice@example.com")
    assert record["deleted"] == {"feedback_events": 2, "impressions": 2}
    with FeedbackStore(db) as store:
        assert {e.user_id for e in store.read()} == {pseudonymise_id("bob@example.com")}
    assert {row[1] for row in _impressions(db)} == {pseudonymise_id("bob@example.com"), None}
    assert record["wal_checkpointed"]
    for path in db.parent.glob("feedback.db*"):  # zeroed pages, WAL checkpointed
        assert b"req-a" not in path.read_bytes(), path.name
    lines = audit.read_text().splitlines()
    assert len(lines) == 1 and "alice@example.com" not in lines[0]
    assert json.loads(lines[0])["user"] == alice and json.loads(lines[0])["action"] == "forget"
    # ...and the next snapshot, from any source, leaves the user out
    assert forgotten_users(db) == {alice}
    frame = pd.DataFrame(
        {"user_id": [alice, pseudonymise_id("bob@example.com")], "item_id": ["a", "b"]}
    )
    assert drop_forgotten(frame, db)["user_id"].tolist() == [pseudonymise_id("bob@example.com")]
    # the log is append-only again: its triggers are back
    conn = sqlite3.connect(db)
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("DELETE FROM impressions")
    conn.close()


def test_forget_matches_a_pseudonym_too_and_refuses_an_empty_id(db, tmp_path):
    record = erasure.forget(db, pseudonymise_id("bob@example.com"), tmp_path / "audit.log")
    assert record["deleted"] == {"feedback_events": 2, "impressions": 1}
    with pytest.raises(DataError, match="--user-id must not be empty"):
        erasure.forget(db, " ", tmp_path / "audit.log")
    with pytest.raises(DataError, match="no feedback log there"):
        erasure.forget(tmp_path / "nope.db", "bob@example.com", tmp_path / "audit.log")


def test_retention_erases_only_older_events_and_audits_when_it_does(db, tmp_path):
    audit = tmp_path / "audit.log"
    record = erasure.expire(db, 365.0, audit, now=NOW)
    assert record["deleted"] == {"feedback_events": 2, "impressions": 0}
    with FeedbackStore(db) as store:
        assert sorted(e.request_id or "" for e in store.read()) == ["req-a-1", "req-b-1"]
    assert json.loads(audit.read_text())["action"] == "expire"
    assert erasure.expire(db, 365.0, audit, now=NOW)["deleted"]["feedback_events"] == 0
    assert len(audit.read_text().splitlines()) == 1  # nothing erased: no line


def test_cli_forget_names_what_it_erased_and_needs_one_mode(db, tmp_path):
    runner = CliRunner()
    params = tmp_path / "params.yaml"
    params.write_text("serve:\n  feedback:\n    audit_log: null\n")
    done = runner.invoke(app, ["forget", "--user-id", "alice@example.com", "--feedback", str(db),
                               "--params", str(params)])  # fmt: skip
    assert done.exit_code == 0, done.output
    assert "feedback_events" in done.output and "alice@example.com" not in done.output
    assert (db.parent / "audit.log").is_file()  # audit_log null: beside the log
    both = runner.invoke(app, ["forget", "--feedback", str(db), "--params", str(params)])
    assert both.exit_code == 1 and "exactly one of --user-id ID and --expired" in both.output
