"""File helpers shared by every stage: atomic writes and reads with readable errors.

A stage that fails must leave no half-written output behind, so every writer here goes
through a temporary sibling that is renamed into place only once it is complete.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


class LmrecError(Exception):
    """An error the user can act on; the CLI prints its message and exits non-zero."""

    exit_code = 1


class DataError(LmrecError):
    """Input data is missing, unreadable or breaks the data contract."""

    exit_code = 2


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary directory; swap it in for ``path`` only when the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            path.rename(old)
            tmp.rename(path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_json(path: str | Path, obj: object) -> None:
    """Write pretty, key-sorted JSON atomically (stable bytes for DVC hashing)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def json_safe(value: Any, digits: int = 6) -> Any:
    """Floats rounded to ``digits`` and NaN/inf as None, through dicts, lists and numpy
    scalars: stable, valid JSON for metrics files that DVC hashes."""
    if isinstance(value, dict):
        return {k: json_safe(v, digits) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v, digits) for v in value]
    if isinstance(value, float | np.floating):
        return round(float(value), digits) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def write_parquet(path: str | Path, df: pd.DataFrame) -> None:
    """Write a DataFrame to parquet atomically."""
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a CSV or parquet file, turning every failure into a ``DataError`` naming it."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: file is empty (0 bytes)")
    suffixes = "".join(path.suffixes).lower()
    try:
        if ".csv" in suffixes or ".tsv" in suffixes:
            sep = "\t" if ".tsv" in suffixes else ","
            return strings_as_object(pd.read_csv(path, sep=sep))
        return strings_as_object(pd.read_parquet(path))
    except pd.errors.EmptyDataError as err:
        raise DataError(f"{path}: file has no columns or rows ({err})") from err
    except Exception as err:  # pyarrow/pandas raise many types; all mean "unreadable"
        raise DataError(f"{path}: cannot be read as {suffixes or 'parquet'}: {err}") from err


def strings_as_object(df: pd.DataFrame) -> pd.DataFrame:
    """Turn pandas string columns into plain ``object`` ones (missing values as None).

    pandas 3 reads text as its ``str`` dtype; Great Expectations' type checks and
    pyarrow round trips both treat plain ``object`` columns consistently.
    """
    for col in df.columns:
        if pd.api.types.is_string_dtype(df[col]) and df[col].dtype != object:
            df[col] = df[col].astype(object).where(df[col].notna(), None)
    return df
