"""The expectation suites for the contract tables, built from the ``validate`` params.

Four tables are checked: ``interactions``, ``items``, ``user_history`` (events per user,
derived from interactions, for the minimum-history rule) and ``item_references`` (the
interactions' item ids missing from the catalog). Every check runs on the full tables, each
in one linear pass: no sample is needed. Column expectations are added only for columns
that exist with a usable type: a missing or mistyped column is reported once, by the schema
expectations, instead of as a cascade of errors.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import pandas as pd
from great_expectations import expectations as gxe
from great_expectations.expectations.expectation import Expectation

from lmrec.config import ValidateParams

INTERACTION_TYPES = {
    "user_id": ["str", "object", "string", "StringDtype"],
    "item_id": ["str", "object", "string", "StringDtype"],
    "timestamp": ["int64", "int32", "Int64", "Int32"],
    "event": ["str", "object", "string", "StringDtype"],
    "value": ["float64", "float32", "int64", "int32", "Float64"],
}
ITEM_TYPES = {
    "item_id": ["str", "object", "string", "StringDtype"],
    "title": ["str", "object", "string", "StringDtype"],
    "text": ["str", "object", "string", "StringDtype"],
    "categories": ["str", "object", "string", "StringDtype"],
}
REQUIRED_INTERACTIONS = ("user_id", "item_id", "timestamp", "event")
REQUIRED_ITEMS = ("item_id", "title")


@dataclass(frozen=True)
class Table:
    """One table to validate: its name, where it came from, the frame and its suite."""

    name: str
    source: str
    frame: pd.DataFrame
    expectations: list[Expectation]


def _type_ok(df: pd.DataFrame, column: str, allowed: list[str]) -> bool:
    return column in df.columns and str(df[column].dtype) in allowed


def _schema(df: pd.DataFrame, types: dict[str, list[str]], required: tuple[str, ...]) -> list:
    exps: list[Expectation] = [gxe.ExpectTableRowCountToBeBetween(min_value=1)]
    exps += [gxe.ExpectColumnToExist(column=c) for c in required]
    exps += [
        gxe.ExpectColumnValuesToBeInTypeList(column=c, type_list=t)
        for c, t in types.items()
        if c in df.columns
    ]
    return exps


def interaction_expectations(df: pd.DataFrame, cfg: ValidateParams, now: int) -> list[Expectation]:
    """Schema, ids, timestamp range, value range, duplicates (the catalog references are
    checked on their own derived table, ``item_references``)."""
    exps = _schema(df, INTERACTION_TYPES, REQUIRED_INTERACTIONS)
    exps += [gxe.ExpectColumnValuesToNotBeNull(column=c) for c in REQUIRED_INTERACTIONS if c in df]
    if _type_ok(df, "timestamp", INTERACTION_TYPES["timestamp"]):
        exps.append(
            gxe.ExpectColumnValuesToBeBetween(
                column="timestamp", min_value=cfg.min_timestamp, max_value=now + cfg.max_future_s
            )
        )
    if _type_ok(df, "value", INTERACTION_TYPES["value"]) and (
        cfg.value_min is not None or cfg.value_max is not None
    ):
        exps.append(
            gxe.ExpectColumnValuesToBeBetween(
                column="value", min_value=cfg.value_min, max_value=cfg.value_max
            )
        )
    key = [c for c in ("user_id", "item_id", "timestamp", "event") if c in df]
    if len(key) == 4:
        exps.append(gxe.ExpectCompoundColumnsToBeUnique(column_list=key))
    return exps


#: What the ``item_references`` table's one expectation means, in the failure report.
NOT_IN_CATALOG = "ids not in the item catalog"


def item_references(interactions: pd.DataFrame, catalog_ids: pd.Series) -> pd.DataFrame:
    """Referential integrity as a derived table: per interaction, its ``item_id`` where the
    catalog lacks it, else null (so GX reports the bad rows' count and the unknown ids).

    A ``value_set`` of every catalog id inside the expectation would be copied through
    GX's configuration objects thousands of times (and rendered into the data docs): at
    20k items that alone took most of a 1M-row validation. The membership test here is one
    hashed pass over the column.
    """
    ids = interactions["item_id"]
    return pd.DataFrame({"item_id": ids.where(~ids.isin(catalog_ids))})


def item_expectations(df: pd.DataFrame, cfg: ValidateParams) -> list[Expectation]:
    """Schema, unique non-null ids, item text present.

    Titles are checked twice: not null, then not empty. GX leaves null values out of a
    length check, so a column of null titles alone would pass it.
    """
    exps = _schema(df, ITEM_TYPES, REQUIRED_ITEMS)
    if "item_id" in df:
        exps += [
            gxe.ExpectColumnValuesToNotBeNull(column="item_id"),
            gxe.ExpectColumnValuesToBeUnique(column="item_id"),
        ]
    if "title" in df:
        allowed = 1 - cfg.min_text_share
        what = f"no title (allowed for at most {allowed:.0%} of rows)" if allowed else "no title"
        exps.append(
            gxe.ExpectColumnValuesToNotBeNull(
                column="title", mostly=cfg.min_text_share, description=what
            )
        )
    if _type_ok(df, "title", ITEM_TYPES["title"]):
        exps.append(
            gxe.ExpectColumnValueLengthsToBeBetween(
                column="title", min_value=1, mostly=cfg.min_text_share
            )
        )
    return exps


def user_history(interactions: pd.DataFrame) -> pd.DataFrame:
    """Events per user: the derived table the minimum-history rule is checked on."""
    if "user_id" not in interactions:
        return pd.DataFrame({"user_id": pd.Series([], dtype=object), "n_events": []})
    counts = interactions.groupby("user_id", dropna=True).size()
    return pd.DataFrame({"user_id": counts.index.astype(object), "n_events": counts.to_numpy()})


def build_tables(
    interactions: pd.DataFrame,
    items: pd.DataFrame,
    cfg: ValidateParams,
    sources: tuple[str, str],
    now: int | None = None,
) -> list[Table]:
    """All tables with their expectations, ready for the checkpoint."""
    now = int(time.time()) if now is None else now
    history = user_history(interactions)
    tables = [
        Table("interactions", sources[0], interactions,
              interaction_expectations(interactions, cfg, now)),
        Table("items", sources[1], items, item_expectations(items, cfg)),
        Table("user_history", f"{sources[0]} (events per user)", history, [
            gxe.ExpectColumnValuesToBeBetween(
                column="n_events", min_value=cfg.min_history, mostly=cfg.min_history_share
            )
        ]),
    ]  # fmt: skip
    catalog = items["item_id"].dropna() if _type_ok(items, "item_id", ITEM_TYPES["item_id"]) else []
    if _type_ok(interactions, "item_id", INTERACTION_TYPES["item_id"]) and len(catalog):
        references = item_references(interactions, catalog)
        check = gxe.ExpectColumnValuesToBeNull(column="item_id", description=NOT_IN_CATALOG)
        tables.append(Table("item_references", sources[0], references, [check]))
    return tables
