"""The evaluate stage's DVC plot data: ``slices.csv`` and ``popularity_curve.csv``.

DVC gives every revision its own colour (that is how ``dvc plots diff`` tells them apart),
so a model can only be a series of its own through the file's columns, never through a
``model`` value in a long table: there, DVC drew every model of a revision as one series.
Both files are therefore wide, and ``dvc.yaml``'s top-level ``plots:`` names their columns:

- ``slices.csv``: one row per model (its comparison key: ``candidate``, ``champion``,
  ``baseline:<name>``, and its label), one column per slice named ``<slice> <metric>``
  (``overall ndcg@10``, ``new_items hr@10``, ``cold_items recall@10``, ...). DVC's bar
  template takes one value column, so ``dvc.yaml`` draws one chart per slice, a bar per
  model: the models present are the rows, whatever the baselines and the champion are.
- ``popularity_curve.csv``: one row per item-popularity bin (1 = the most popular items),
  the share of top-k slots per model, and ``catalog`` (the training interactions' share).
  ``dvc.yaml`` lists the columns as the plot's ``y``: one line per model. ``champion`` is
  always a column, ``nan`` before the first registration, so that list holds on a first
  run too; a column it names that a file lacks is an error in ``dvc plots show``.

A missing or non-finite value is written ``nan``, which Vega-Lite leaves out of a chart;
an empty cell would be drawn as 0.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lmrec.io import atomic_path

#: The metric slices.csv holds per slice (default ``ndcg@10``): new items have few hits over
#: the full catalog, the cold slice ranks cold items only.
SLICE_METRIC = {"new_items": "hr@10", "cold_items": "recall@10"}
DEFAULT_SLICE_METRIC = "ndcg@10"
#: The first columns of popularity_curve.csv after ``bin``, present whichever models ran.
CURVE_COLUMNS = ("catalog", "candidate", "champion")


def slice_column(slice_name: str) -> str:
    """The slices.csv column of a slice: ``"<slice> <metric>"``."""
    return f"{slice_name} {SLICE_METRIC.get(slice_name, DEFAULT_SLICE_METRIC)}"


def write_slices_csv(path: Path, comparison: Mapping[str, Any]) -> None:
    """Write one row per model of ``comparison`` and one column per slice (the overall
    results first), each holding the slice's metric (``SLICE_METRIC``)."""
    columns = ["model", "label"]
    rows = []
    for key, model in comparison["models"].items():
        row: dict[str, Any] = {"model": key, "label": model.get("label", key)}
        for name, values in {"overall": model["overall"], **model["slices"]}.items():
            column = slice_column(name)
            row[column] = _number(values.get(SLICE_METRIC.get(name, DEFAULT_SLICE_METRIC)))
            if column not in columns:
                columns.append(column)
        rows.append(row)
    _write_csv(path, rows, columns)


def write_curve_csv(path: Path, comparison: Mapping[str, Any]) -> None:
    """Write one row per popularity bin: ``bin`` (from 1), then the share of each model's
    top-k slots in it, after ``CURVE_COLUMNS`` (``nan`` for a model that did not run)."""
    curves: dict[str, Sequence[Any] | None] = {
        "catalog": comparison.get("catalog_popularity_curve")
    }
    curves |= {key: model.get("popularity_curve") for key, model in comparison["models"].items()}
    columns = list(dict.fromkeys([*CURVE_COLUMNS, *curves]))
    n_bins = max((len(curve) for curve in curves.values() if curve is not None), default=0)
    rows = [
        {"bin": i + 1, **{key: _at(curves.get(key), i) for key in columns}} for i in range(n_bins)
    ]
    _write_csv(path, rows, ["bin", *columns])


def _at(curve: Sequence[Any] | None, i: int) -> float:
    return _number(curve[i]) if curve is not None and i < len(curve) else math.nan


def _number(value: Any) -> float:
    """``value`` as a float; ``nan`` for None, a non-number or a non-finite one."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return math.nan
    return float(value) if math.isfinite(value) else math.nan


def _write_csv(path: Path, rows: list[dict[str, Any]], columns: list[str]) -> None:
    with atomic_path(path) as tmp, tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, restval=math.nan)
        writer.writeheader()
        writer.writerows(rows)
