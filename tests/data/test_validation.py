"""Corrupted inputs are stopped at the door: each fails validation with a clear message.

Every case runs the real ``lmrec validate`` command (Great Expectations checkpoint
included) and checks: non-zero exit, the file and column named, a count, and no
``summary.json`` (the marker downstream stages depend on).
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from lmrec.cli import app

REPO = Path(__file__).resolve().parents[2]
COUNT = re.compile(r"\b\d+ of \d+ rows\b")


def _validate(interactions: Path, items: Path, out: Path):
    args = ["validate", "--params", str(REPO / "profiles" / "tiny.yaml")]
    args += ["--interactions", str(interactions), "--items", str(items), "--out", str(out)]
    return CliRunner().invoke(app, args)


def _corrupt(frame: pd.DataFrame, how: str) -> pd.DataFrame:
    df = frame.copy()
    if how == "missing_column":
        return df.drop(columns=["timestamp"])
    if how == "wrong_dtype":
        return df.assign(timestamp=df["timestamp"].astype(str))
    if how == "null_ids":
        df.loc[df.index[:4], "user_id"] = None
        return df
    if how == "duplicate_rows":
        return pd.concat([df, df.iloc[:3]], ignore_index=True)
    if how == "unknown_items":
        df.loc[df.index[:5], "item_id"] = "no-such-item"
        return df
    if how == "negative_timestamps":
        df.loc[df.index[:2], "timestamp"] = -1
        return df
    if how == "future_timestamps":
        df.loc[df.index[:3], "timestamp"] = int(time.time()) + 30 * 86_400
        return df
    if how == "out_of_range_values":
        df.loc[df.index[:6], "value"] = 11.0
        return df
    raise AssertionError(how)


# (corruption, column the message must name)
CASES = [
    ("missing_column", "timestamp"),
    ("wrong_dtype", "timestamp"),
    ("null_ids", "user_id"),
    ("duplicate_rows", "user_id, item_id, timestamp, event"),
    ("unknown_items", "item_id"),
    ("negative_timestamps", "timestamp"),
    ("future_timestamps", "timestamp"),
    ("out_of_range_values", "value"),
]


def test_clean_data_passes(contract_files, tmp_path):
    result = _validate(*contract_files, tmp_path / "report")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "report" / "summary.json").exists()
    assert (tmp_path / "report" / "data_docs" / "index.html").exists()


@pytest.mark.parametrize(("how", "column"), CASES)
def test_corrupted_interactions_fail_with_file_column_and_count(
    how, column, contract_files, tmp_path
):
    interactions, items = contract_files
    bad = tmp_path / f"{how}.parquet"
    _corrupt(pd.read_parquet(interactions), how).to_parquet(bad, index=False)
    out = tmp_path / "report"
    result = _validate(bad, items, out)
    assert result.exit_code == 3, result.output
    assert str(bad) in result.output
    assert f"'{column}'" in result.output
    if how != "missing_column":
        assert COUNT.search(result.output), result.output
    assert not (out / "summary.json").exists()
    assert (out / "report.md").read_text().count("- ") >= 1
    assert (out / "data_docs" / "index.html").exists()


def test_count_is_the_number_of_bad_rows(contract_files, tmp_path):
    interactions, items = contract_files
    bad = tmp_path / "bad.parquet"
    _corrupt(pd.read_parquet(interactions), "unknown_items").to_parquet(bad, index=False)
    result = _validate(bad, items, tmp_path / "report")
    n = len(pd.read_parquet(bad))
    assert f"5 of {n} rows" in result.output
    assert "no-such-item" in result.output  # examples are shown


@pytest.mark.parametrize("kind", ["zero_bytes", "zero_rows", "not_parquet"])
def test_empty_or_unreadable_file_fails(kind, contract_files, tmp_path):
    interactions, items = contract_files
    bad = tmp_path / "interactions.parquet"
    if kind == "zero_bytes":
        bad.write_bytes(b"")
    elif kind == "zero_rows":
        pd.read_parquet(interactions).iloc[:0].to_parquet(bad, index=False)
    else:
        bad.write_text("user_id,item_id\nthis is not parquet\n")
    out = tmp_path / "report"
    result = _validate(bad, items, out)
    assert result.exit_code in (2, 3), result.output
    assert str(bad) in result.output
    assert any(word in result.output for word in ("empty", "no rows", "cannot be read"))
    assert not (out / "summary.json").exists()


def test_items_without_title_and_duplicate_ids_fail(contract_files, tmp_path):
    interactions, items = contract_files
    catalog = pd.read_parquet(items)
    catalog.loc[catalog.index[:2], "title"] = ""
    catalog = pd.concat([catalog, catalog.iloc[:1]], ignore_index=True)
    bad = tmp_path / "items.parquet"
    catalog.to_parquet(bad, index=False)
    result = _validate(interactions, bad, tmp_path / "report")
    assert result.exit_code == 3
    assert f"{bad}, column 'title': empty text" in result.output
    assert f"{bad}, column 'item_id': duplicate ids" in result.output


def test_short_histories_fail_the_minimum_history_rule(contract_files, tmp_path):
    interactions, items = contract_files
    log = pd.read_parquet(interactions)
    first = log.groupby("user_id").head(1)  # every user keeps one event only
    bad = tmp_path / "short.parquet"
    first.to_parquet(bad, index=False)
    result = _validate(bad, items, tmp_path / "report")
    assert result.exit_code == 3
    assert "'n_events'" in result.output and "events per user" in result.output
    assert COUNT.search(result.output)


def test_stale_summary_is_removed_on_failure(contract_files, tmp_path):
    interactions, items = contract_files
    out = tmp_path / "report"
    assert _validate(interactions, items, out).exit_code == 0
    bad = tmp_path / "bad.parquet"
    df = pd.read_parquet(interactions)
    df.loc[df.index[:1], "value"] = np.inf
    df.to_parquet(bad, index=False)
    assert _validate(bad, items, out).exit_code == 3
    assert not (out / "summary.json").exists()


def test_items_whose_every_title_is_null_fail(contract_files, tmp_path):
    interactions, items = contract_files
    catalog = pd.read_parquet(items)
    bad = tmp_path / "items.parquet"
    catalog.assign(title=pd.Series([None] * len(catalog), dtype=object)).to_parquet(bad)
    result = _validate(interactions, bad, tmp_path / "report")
    assert result.exit_code == 3, result.output
    n = len(catalog)
    assert f"{bad}, column 'title': no title" in result.output
    assert f"{n} of {n} rows" in result.output
    assert not (tmp_path / "report" / "summary.json").exists()
