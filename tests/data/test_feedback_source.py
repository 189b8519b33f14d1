"""The ``feedback`` ingest source: the service's log → contract tables that validate."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from lmrec.cli.dvc_stages import stage_argv
from lmrec.config import FeedbackSourceParams, IngestParams
from lmrec.data import feedback
from lmrec.data.contract import INTERACTION_COLUMNS, ITEM_COLUMNS, items_frame, pseudonymise
from lmrec.io import DataError
from lmrec.serving.catalog_store import ItemStore, NewItem
from lmrec.serving.feedback import FeedbackEvent, FeedbackStore
from lmrec.stages import ingest

REPO = Path(__file__).resolve().parents[2]
T0 = 1_700_000_000


def _catalog(path: Path, n: int = 6) -> Path:
    items = items_frame(
        item_id=pd.Series([f"item{i}" for i in range(n)]),
        title=pd.Series([f"Title {i}" for i in range(n)]),
        text=pd.Series([f"About thing {i}." for i in range(n)]),
        categories=pd.Series(["a|b"] * n),
    )
    items.to_parquet(path, index=False)
    return path


def _events() -> list[FeedbackEvent]:
    """3 users x 4 clicks on known items, plus noise the source must drop."""
    known = [
        FeedbackEvent(f"user{u}", f"item{(u + k) % 6}", "click", T0 + 10 * u + k + 0.7)
        for u in range(3)
        for k in range(4)
    ]
    return [
        *known,
        FeedbackEvent("user0", "ghost1", "click", T0 + 100.0),  # not in the catalog
        FeedbackEvent("user1", "ghost2", "click", T0 + 101.0),  # not in the catalog
        FeedbackEvent("user2", "item0", "dismiss", T0 + 102.0),  # filtered event type
        FeedbackEvent("user0", "item0", "click", T0 + 0.9),  # same second as a click: repeat
    ]


@pytest.fixture()
def feedback_files(tmp_path) -> tuple[Path, Path]:
    db = tmp_path / "feedback" / "feedback.db"
    with FeedbackStore(db) as store:
        store.append_many(_events())
    return db, _catalog(tmp_path / "catalog.parquet")


def test_source_keeps_catalog_events_of_the_chosen_types(feedback_files, caplog):
    db, catalog = feedback_files
    cfg = FeedbackSourceParams(db=str(db), items=str(catalog), events=["click"])
    with caplog.at_level(logging.INFO, logger="lmrec.data.feedback"):
        interactions, items = feedback.load(cfg)
    assert tuple(interactions.columns) == INTERACTION_COLUMNS
    assert tuple(items.columns) == ITEM_COLUMNS
    pd.testing.assert_frame_equal(items, pd.read_parquet(catalog))
    assert len(interactions) == 12
    assert set(interactions["user_id"]) == set(pseudonymise(pd.Series(["user0", "user1", "user2"])))
    assert interactions["item_id"].isin(items["item_id"]).all()
    assert interactions["event"].unique().tolist() == ["click"]
    assert interactions["timestamp"].dtype == "int64"
    assert interactions["timestamp"].iloc[0] == T0  # floored to whole seconds
    assert interactions["value"].isna().all() and interactions["value"].dtype == "float64"
    assert "dropped 2 feedback event(s) for items not in" in caplog.text
    assert "'dropped_event_filter': 1" in caplog.text
    assert "'dropped_duplicate': 1" in caplog.text


def test_ids_are_hashed_once_and_a_version_0_log_of_raw_ids_still_reads(tmp_path):
    import sqlite3

    catalog = _catalog(tmp_path / "catalog.parquet")
    expected = set(pseudonymise(pd.Series(["user0"])))
    new, old = tmp_path / "new.db", tmp_path / "old.db"
    with FeedbackStore(new) as store:  # stores the pseudonym: ingest must not hash it again
        store.append(FeedbackEvent("user0", "item1", "click", T0))
    conn = sqlite3.connect(old)
    conn.executescript(feedback.SCHEMA)  # schema version 0: raw ids, as the store wrote them
    conn.execute(
        "INSERT INTO feedback_events (user_id, item_id, event, timestamp) VALUES (?, ?, ?, ?)",
        ("user0", "item1", "click", float(T0)),
    )
    conn.commit()
    conn.close()
    for db in (new, old):
        interactions, _ = feedback.load(FeedbackSourceParams(db=str(db), items=str(catalog)))
        assert set(interactions["user_id"]) == expected, db.name


def test_to_contract_counts_what_it_drops(feedback_files):
    db, catalog = feedback_files
    events, items = feedback.read_events(db), feedback.read_catalog(catalog)
    _, stats = feedback.to_contract(events, items, keep_events=None)
    assert (stats.events_read, stats.dropped_event_filter) == (16, 0)
    assert (stats.dropped_unknown_item, stats.dropped_duplicate, stats.kept) == (2, 1, 13)


def test_source_reads_the_log_while_the_service_holds_it_open(feedback_files):
    db, catalog = feedback_files
    with FeedbackStore(db) as live:
        live.append(FeedbackEvent("user9", "item1", "click", T0 + 500.0))
        interactions, _ = feedback.load(FeedbackSourceParams(db=str(db), items=str(catalog)))
    assert len(interactions) == 14


def test_missing_or_empty_inputs_are_named(tmp_path, feedback_files):
    db, catalog = feedback_files
    empty = tmp_path / "empty.db"
    empty.touch()
    no_events = tmp_path / "none.db"
    FeedbackStore(no_events).close()
    cases = {
        str(tmp_path / "nope.db"): "feedback database not found",
        str(empty): "feedback database is empty",
        str(no_events): "feedback log holds no events",
        str(catalog): "cannot be read as a feedback log",  # a parquet file is no SQLite db
    }
    for path, message in cases.items():
        with pytest.raises(DataError, match=message) as err:
            feedback.load(FeedbackSourceParams(db=path, items=str(catalog)))
        assert path in str(err.value)
    pd.DataFrame({"item_id": [], "title": []}).to_parquet(tmp_path / "no_items.parquet")
    for items, message in [("missing.parquet", "file not found"), ("no_items.parquet", "no rows")]:
        with pytest.raises(DataError, match=f"{items}.*{message}"):
            feedback.load(FeedbackSourceParams(db=str(db), items=str(tmp_path / items)))


def test_nothing_left_after_filtering_is_an_error(feedback_files):
    db, catalog = feedback_files
    cfg = FeedbackSourceParams(db=str(db), items=str(catalog), events=["purchase"])
    with pytest.raises(DataError, match="no feedback event left"):
        feedback.load(cfg)


def test_the_ingest_stage_dispatches_to_the_feedback_source(feedback_files, tmp_path):
    db, catalog = feedback_files
    cfg = IngestParams(source="feedback", feedback={"db": str(db), "items": str(catalog)})
    summary = ingest.run(cfg, ingest.IngestInputs(), tmp_path / "data")
    assert summary["source"] == "feedback" and summary["interactions"] == 13
    assert summary["users"] == 3 and summary["items"] == 6


def test_items_added_through_the_service_join_the_catalog(feedback_files, tmp_path):
    """POST /items stores items in the feedback database: ingest adds them to the catalog
    (an id the catalog has takes the posted fields), so events on them are kept."""
    db, catalog = feedback_files
    with ItemStore(db) as items, FeedbackStore(db) as log:
        items.append(NewItem("ghost1", "Ghost one", "Brand new.", "a"), T0 + 50.0, None, None)
        items.append(NewItem("item0", "Renamed 0", "New text.", "c"), T0 + 60.0, None, None)
        items.append(NewItem("ghost1", "Ghost one, v2", "Newer.", "a|d"), T0 + 70.0, None, None)
        log.append(FeedbackEvent("user2", "ghost1", "click", T0 + 103.0))
    cfg = FeedbackSourceParams(db=str(db), items=str(catalog), events=["click"])
    interactions, table = feedback.load(cfg)
    assert tuple(table.columns) == ITEM_COLUMNS
    assert table["item_id"].tolist() == [f"item{i}" for i in range(6)] + ["ghost1"]
    by_id = table.set_index("item_id")
    assert tuple(by_id.loc["ghost1"]) == ("Ghost one, v2", "Newer.", "a|d")
    assert tuple(by_id.loc["item0"]) == ("Renamed 0", "New text.", "c")
    assert tuple(by_id.loc["item1"]) == ("Title 1", "About thing 1.", "a|b")
    assert (interactions["item_id"] == "ghost1").sum() == 2  # ghost2 is still unknown
    summary = ingest.run(
        IngestParams(source="feedback", feedback=cfg.model_dump()),
        ingest.IngestInputs(),
        tmp_path / "data",
    )
    assert summary["items"] == 7
    assert "ghost1" in set(pd.read_parquet(tmp_path / "data" / "items.parquet")["item_id"])


def test_a_log_without_added_items_leaves_the_catalog_as_it_is(feedback_files):
    db, _ = feedback_files
    assert feedback.read_added_items(db).empty
    with ItemStore(db):
        pass  # the table now exists, empty
    assert feedback.read_added_items(db).empty


def test_empty_event_filter_is_refused():
    with pytest.raises(ValueError, match="at least 1 item"):
        FeedbackSourceParams(events=[])


@pytest.mark.slow
def test_cli_ingest_from_feedback_writes_data_that_validates(feedback_files, tmp_path):
    db, catalog = feedback_files
    tiny = yaml.safe_load((REPO / "profiles" / "tiny.yaml").read_text())
    params = {
        "ingest": {"source": "feedback", "feedback": {"db": str(db), "items": str(catalog)}},
        "validate": tiny["validate"],
    }
    params["ingest"]["feedback"]["events"] = ["click"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    lmrec = str(Path(sys.executable).parent / "lmrec")

    def run(command: str) -> subprocess.CompletedProcess:
        argv = [command, "--params", "params.yaml"]  # a stage: its paths as dvc.yaml gives them
        if command != "ingest":
            argv = stage_argv(command, *argv[1:], dvc_yaml=REPO / "dvc.yaml")[1:]
        cmd = [lmrec, *argv]
        return subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)

    done = run("ingest")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ingested feedback into data/" in done.stdout
    assert "dropped 2 feedback event(s)" in done.stderr  # warnings show without -v
    data = pd.read_parquet(tmp_path / "data" / "interactions.parquet")
    assert len(data) == 12 and np.isnan(data["value"]).all()
    checked = run("validate")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "validation passed" in checked.stdout
