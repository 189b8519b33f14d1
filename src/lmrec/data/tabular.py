"""CSV / parquet files in any column naming, mapped onto the data contract."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from lmrec.config import ColumnMap
from lmrec.data.contract import interactions_frame, items_frame
from lmrec.io import DataError, read_table


def _column(df: pd.DataFrame, name: str | None, path: Path, role: str) -> pd.Series | None:
    """The source column playing ``role``; None when optional and unmapped/absent."""
    if name is None:
        return None
    if name not in df.columns:
        raise DataError(
            f"{path}: missing column '{name}' (mapped to contract column '{role}'); "
            f"found columns: {', '.join(map(str, df.columns)) or 'none'}. "
            f"Map it with --map {role}=<source column>."
        )
    return df[name]


def load(
    interactions_path: Path, items_path: Path, columns: ColumnMap, default_event: str
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read both tables and rename their columns to the contract.

    Required columns must exist (a clear error names the file and column); optional
    ones (event, value, text, categories) are filled when the source lacks them.
    Values are not judged here: validation does that, with counts and examples.
    """
    raw = read_table(interactions_path)
    cat = read_table(items_path)

    def optional(df: pd.DataFrame, name: str | None) -> str | None:
        return name if name is not None and name in df.columns else None

    event = _column(raw, optional(raw, columns.event), interactions_path, "event")
    interactions = interactions_frame(
        user_id=_column(raw, columns.user_id, interactions_path, "user_id"),
        item_id=_column(raw, columns.item_id, interactions_path, "item_id"),
        timestamp=_column(raw, columns.timestamp, interactions_path, "timestamp"),
        event=event if event is not None else default_event,
        value=_column(raw, optional(raw, columns.value), interactions_path, "value"),
    )
    items = items_frame(
        item_id=_column(
            cat,
            columns.item_id if columns.item_id in cat.columns else "item_id",
            items_path,
            "item_id",
        ),
        title=_column(cat, columns.title, items_path, "title"),
        text=_column(cat, optional(cat, columns.text), items_path, "text"),
        categories=_column(cat, optional(cat, columns.categories), items_path, "categories"),
    )
    return interactions, items
