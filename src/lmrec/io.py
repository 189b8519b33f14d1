"""File helpers shared by every stage: atomic writes and reads with readable errors.

A stage that fails must leave no half-written output behind, so every writer here goes
through a temporary sibling that is renamed into place only once it is complete. The
temporary's name carries the writer's pid (``.<name>.<pid>.<random>.tmp``): a writer that
is killed (SIGKILL, OOM, power) leaves it behind, and the next writer of the same path
removes the temporaries of processes that no longer exist (``_sweep``).
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lmrec.exit_codes import ExitCode


class LmrecError(Exception):
    """An error the user can act on; the CLI prints its message and exits non-zero."""

    exit_code = ExitCode.ERROR


class DataError(LmrecError):
    """Input data is missing, unreadable or breaks the data contract."""

    exit_code = ExitCode.DATA


#: errors of the storage an output is written to (full, over quota, too large, read-only)
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS})


@contextlib.contextmanager
def _storage_errors(path: Path) -> Iterator[None]:
    """Turn a full or read-only disk under ``path`` into an ``LmrecError`` naming it."""
    try:
        yield
    except OSError as err:
        if err.errno not in STORAGE_ERRNOS:
            raise
        raise LmrecError(
            f"{path}: cannot write: {os.strerror(err.errno)} ({err}); "
            "the previous output, if any, is unchanged"
        ) from err


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


#: A writer's temporary (``_temp_prefix``): ``.<name>.<pid>.<random>.tmp``, or what a swap
#: onto such a temporary set aside (``..<name>.<pid>.<random>.tmp.old``: a model saved
#: atomically into the directory an outer ``atomic_dir`` yielded, killed between the swap's
#: renames).
_TEMP_NAME = re.compile(r"\..*\.(\d+)\.[^.]+\.tmp(\.old)?")


def _sweep(path: Path) -> None:
    """Remove what killed writers left next to ``path``: the temporaries of processes that
    are gone (of any target: a model saved inside a temporary directory leaves a nested
    one), and the previous output a swap (``atomic_dir``) set aside, which is put back when
    the kill fell between its two renames. Writers of one workspace are serialised (the
    pipeline lock), and a live writer's temporaries carry a live pid: they are kept."""
    for sibling in path.parent.iterdir():
        found = _TEMP_NAME.fullmatch(sibling.name)
        if found is None or _alive(int(found.group(1))):
            continue
        if sibling.is_dir() and not sibling.is_symlink():
            shutil.rmtree(sibling, ignore_errors=True)
        else:
            sibling.unlink(missing_ok=True)
    old = path.with_name(f".{path.name}.old")
    if old.is_dir() and not path.exists():
        old.rename(path)
    elif old.exists():
        shutil.rmtree(old, ignore_errors=True)


def _temp_prefix(path: Path) -> str:
    return f".{path.name}.{os.getpid()}."


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success.

    Raises:
        LmrecError: the disk is full or read-only (``path`` is left as it was).
    """
    path = Path(path)
    with _storage_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        _sweep(path)
        fd, tmp_name = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            yield tmp
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary directory; swap it in for ``path`` only when the block succeeds.

    Raises:
        LmrecError: the disk is full or read-only (``path`` is left as it was).
    """
    path = Path(path)
    with _storage_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        _sweep(path)
        tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent))
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
