"""Run the suites through a Great Expectations checkpoint and collect readable failures."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import great_expectations as gx
from great_expectations.checkpoint import UpdateDataDocsAction
from great_expectations.data_context.types.base import (
    DataContextConfig,
    InMemoryStoreBackendDefaults,
    ProgressBarsConfig,
)

from lmrec.validation.suites import Table

DOCS_SITE = "lmrec"


@dataclass(frozen=True)
class Failure:
    """One failed expectation, in words a data owner can act on."""

    table: str
    source: str
    column: str | None
    check: str
    count: int | None
    total: int | None
    examples: list = field(default_factory=list)
    detail: str = ""

    def line(self) -> str:
        where = f"{self.source}" + (f", column '{self.column}'" if self.column else "")
        share = f": {self.count} of {self.total} rows" if self.count is not None else ""
        examples = f"; e.g. {self.examples}" if self.examples else ""
        detail = f" ({self.detail})" if self.detail else ""
        return f"{where}: {self.check}{share}{detail}{examples}"


@dataclass(frozen=True)
class Outcome:
    """What the checkpoint found: success, per-table expectation counts, failures."""

    success: bool
    evaluated: dict[str, int]
    failures: list[Failure]
    data_docs: Path | None


def _context(docs_dir: Path):
    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
        data_docs_sites={
            DOCS_SITE: {
                "class_name": "SiteBuilder",
                "store_backend": {
                    "class_name": "TupleFilesystemStoreBackend",
                    "base_directory": str(docs_dir.resolve()),
                },
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            }
        },
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False),
    )
    return gx.get_context(project_config=config, mode="ephemeral")


def _describe(result, table: Table, max_examples: int) -> Failure:
    cfg = result.expectation_config
    kwargs = cfg.kwargs
    res = result.result or {}
    column = kwargs.get("column") or (
        ", ".join(kwargs["column_list"]) if "column_list" in kwargs else None
    )
    count = res.get("unexpected_count")
    total = res.get("element_count")
    observed = res.get("observed_value")
    detail = ""
    if result.exception_info and result.exception_info.get("raised_exception"):
        detail = str(result.exception_info.get("exception_message", ""))[:200]
    elif observed is not None and count is None:
        detail = f"observed {observed}"
    if cfg.type == "expect_column_values_to_be_in_type_list":
        count, total = len(table.frame), len(table.frame)
    return Failure(
        table=table.name,
        source=table.source,
        column=column,
        check=cfg.description or describe_expectation(cfg.type, kwargs),
        count=count,
        total=total,
        examples=list(res.get("partial_unexpected_list") or [])[:max_examples],
        detail=detail,
    )


def describe_expectation(kind: str, kwargs: dict) -> str:
    """Plain-words description of an expectation (used in the failure report)."""
    lo, hi = kwargs.get("min_value"), kwargs.get("max_value")
    words = {
        "expect_table_row_count_to_be_between": "table has no rows",
        "expect_column_to_exist": "missing column",
        "expect_column_values_to_be_in_type_list": (
            f"wrong type, expected one of {kwargs.get('type_list')}"
        ),
        "expect_column_values_to_not_be_null": "null values",
        "expect_column_values_to_be_between": f"values outside [{lo}, {hi}]",
        "expect_compound_columns_to_be_unique": "duplicate rows (same user, item, time, event)",
        "expect_column_values_to_be_in_set": "ids not in the item catalog",
        "expect_column_values_to_be_unique": "duplicate ids",
        "expect_column_value_lengths_to_be_between": "empty text",
    }
    text = words.get(kind, kind.replace("_", " "))
    if kwargs.get("mostly") not in (None, 1, 1.0):
        text += f" (allowed for at most {1 - kwargs['mostly']:.0%} of rows)"
    return text


def run_checkpoint(tables: list[Table], docs_dir: Path | None, max_examples: int = 5) -> Outcome:
    """Validate every table through one GX checkpoint per table; build data docs."""
    logging.getLogger("great_expectations").setLevel(logging.ERROR)
    ctx = _context(docs_dir) if docs_dir is not None else gx.get_context(mode="ephemeral")
    source = ctx.data_sources.add_pandas("lmrec")
    failures: list[Failure] = []
    evaluated: dict[str, int] = {}
    for table in tables:
        batch = source.add_dataframe_asset(table.name).add_batch_definition_whole_dataframe("all")
        suite = ctx.suites.add(gx.ExpectationSuite(name=table.name))
        for exp in table.expectations:
            suite.add_expectation(exp)
        definition = ctx.validation_definitions.add(
            gx.ValidationDefinition(name=table.name, data=batch, suite=suite)
        )
        actions = [UpdateDataDocsAction(name="docs", site_names=[DOCS_SITE])] if docs_dir else []
        checkpoint = ctx.checkpoints.add(
            gx.Checkpoint(
                name=f"lmrec_{table.name}",
                validation_definitions=[definition],
                actions=actions,
                result_format={"result_format": "SUMMARY", "partial_unexpected_count": 20},
            )
        )
        result = checkpoint.run(batch_parameters={"dataframe": table.frame})
        for run in result.run_results.values():
            evaluated[table.name] = len(run.results)
            failures += [_describe(r, table, max_examples) for r in run.results if not r.success]
    docs = docs_dir / "index.html" if docs_dir is not None else None
    return Outcome(not failures, evaluated, failures, docs)
