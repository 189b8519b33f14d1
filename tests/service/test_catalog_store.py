"""Posted items: what ``NewItem.parse`` accepts, and the durable ``ItemStore``."""

from __future__ import annotations

import re
import sqlite3
import subprocess
import sys

import numpy as np
import pytest

from lmrec.data.feedback import ITEMS_TABLE
from lmrec.serving.catalog_store import ItemStore, NewItem
from lmrec.serving.feedback import FeedbackEvent, FeedbackStore


@pytest.mark.parametrize(
    ("categories", "stored"),
    [
        ("a|b", "a|b"),
        (" a | b ||a", "a|b"),
        (["Action", " Drama ", "", "Action"], "Action|Drama"),
        ([], ""),
        (None, ""),
    ],
)
def test_categories_are_a_pipe_string_or_a_list(categories, stored):
    assert NewItem.parse("i", "T", "", categories).categories == stored


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"item_id": ""}, "item_id must not be empty"),
        ({"item_id": " x"}, "whitespace"),
        ({"item_id": "x" * 257}, "item_id is longer than 256"),
        ({"item_id": 7}, "item_id must be a string"),
        ({"title": "  "}, "title must not be empty"),
        ({"title": None}, "title must be a string"),
        ({"title": "t" * 1001}, "title is longer"),
        ({"text": "t" * 20_001}, "text is longer"),
        ({"text": ["x"]}, "text must be a string"),
        ({"categories": ["a|b"]}, "must not contain '|'"),
        ({"categories": [1]}, "categories[0] must be a string"),
        ({"categories": {"a": 1}}, "categories must be a string or a list"),
        ({"categories": "|".join(f"c{i}" for i in range(51))}, "at most 50 categories"),
        ({"categories": "c" * 101}, "longer than 100"),
    ],
)
def test_bad_items_are_refused_naming_the_field(fields, words):
    item = {"item_id": "i", "title": "T", "text": "", "categories": ""} | fields
    with pytest.raises(ValueError, match=re.escape(words)):
        NewItem.parse(**item)


def test_the_encoder_reads_the_text_assembled_as_at_preprocess():
    item = NewItem.parse("i", " Heat ", "A heist.", ["Action", "Crime"])
    assert item.title == "Heat"
    assert item.encoder_text == "Heat. A heist. Categories: Action, Crime."


def test_the_latest_post_wins_and_the_first_addition_time_stays(tmp_path):
    vector = np.arange(4, dtype=np.float32)
    with ItemStore(tmp_path / "db" / "items.db") as store:
        assert store.last_seq() == 0 and store.read() == []
        store.append(NewItem("a", "A1"), 100.0, "enc", vector)
        store.append(NewItem("b", "B"), 150.0, None, None)
        store.append(NewItem("a", "A2", "new text", "x"), 200.0, "enc", vector * 2)
        rows = store.read()
        assert [(r.item.item_id, r.item.title, r.added_at, r.seq) for r in rows] == [
            ("a", "A2", 100.0, 3),
            ("b", "B", 150.0, 2),
        ]
        np.testing.assert_array_equal(rows[0].embedding, vector * 2)
        assert rows[1].embedding is None and rows[1].encoder is None
        assert [r.item.item_id for r in store.read(since_seq=2)] == ["a"]
        assert store.last_seq() == 3
    with ItemStore(tmp_path / "db" / "items.db") as reopened:
        assert reopened.last_seq() == 3


def test_the_store_is_wal_full_sync_append_only_and_shares_the_feedback_file(tmp_path):
    db = tmp_path / "fb.db"
    with FeedbackStore(db) as feedback, ItemStore(db) as items:
        feedback.append(FeedbackEvent("u", "a", "click"))
        items.append(NewItem("a", "A"), 1.0, None, None)
        assert feedback.count() == 1 and items.last_seq() == 1
        conn = items._conn
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        for sql in (f"UPDATE {ITEMS_TABLE} SET title = 'x'", f"DELETE FROM {ITEMS_TABLE}"):
            with pytest.raises(sqlite3.IntegrityError, match="append-only"):
                conn.execute(sql)


def test_an_acknowledged_item_survives_a_sigkill(tmp_path):
    db = tmp_path / "items.db"
    script = (
        "import sys, os, signal\n"
        "from lmrec.serving.catalog_store import ItemStore, NewItem\n"
        "store = ItemStore(sys.argv[1])\n"
        "seq = store.append(NewItem('kept', 'Kept'), 1.0, None, None)\n"
        "print(seq, flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(db)], capture_output=True, text=True)
    assert done.returncode == -9 and done.stdout.strip() == "1", done.stderr
    with ItemStore(db) as store:
        assert [r.item.item_id for r in store.read()] == ["kept"]
