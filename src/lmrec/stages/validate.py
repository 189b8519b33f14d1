"""Validate stage: the contract tables through a Great Expectations checkpoint.

On success writes ``summary.json`` (a DVC metrics file) and the GX data docs. On failure
writes the readable report (``report.md``) and the data docs, prints the failures, and
exits non-zero without ``summary.json``, so no downstream stage runs.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from lmrec.config import ValidateParams
from lmrec.exit_codes import ExitCode
from lmrec.io import LmrecError, atomic_path, read_table, write_json
from lmrec.validation.checkpoint import Outcome, run_checkpoint
from lmrec.validation.suites import build_tables

log = logging.getLogger(__name__)


class ValidationFailed(LmrecError):
    """The data broke at least one expectation (exit code 3)."""

    exit_code = ExitCode.VALIDATION_FAILED


def report_markdown(outcome: Outcome) -> str:
    """The failure list as Markdown: one bullet per failed expectation."""
    head = "# Data validation: " + ("passed" if outcome.success else "FAILED")
    checked = ", ".join(f"{t}: {n} expectations" for t, n in outcome.evaluated.items())
    lines = [head, "", f"Checked {checked}.", ""]
    lines += [f"- {f.line()}" for f in outcome.failures]
    if outcome.data_docs:
        lines += ["", f"Great Expectations data docs: {outcome.data_docs}"]
    return "\n".join(lines) + "\n"


def run(cfg: ValidateParams, interactions: Path, items: Path, out_dir: Path) -> dict:
    """Validate both tables; write the report and data docs under ``out_dir``.

    Raises:
        DataError: a file is missing, empty or unreadable.
        ValidationFailed: any expectation failed (the message lists them all).
    """
    summary_path = out_dir / "summary.json"
    summary_path.unlink(missing_ok=True)  # never leave a stale "passed" behind
    shutil.rmtree(out_dir / "data_docs", ignore_errors=True)  # docs show this run only
    frames = read_table(interactions), read_table(items)
    tables = build_tables(*frames, cfg, sources=(str(interactions), str(items)))
    outcome = run_checkpoint(tables, out_dir / "data_docs", cfg.max_examples)
    report = report_markdown(outcome)
    with atomic_path(out_dir / "report.md") as tmp:
        tmp.write_text(report)
    if not outcome.success:
        raise ValidationFailed(
            f"{len(outcome.failures)} data check(s) failed:\n"
            + "\n".join(f"  - {f.line()}" for f in outcome.failures)
            + f"\nReport: {out_dir / 'report.md'}; data docs: {outcome.data_docs}"
        )
    summary = {
        "interactions": len(frames[0]),
        "users": int(frames[0]["user_id"].nunique()),
        "items": len(frames[1]),
        "expectations": sum(outcome.evaluated.values()),
        "failed": 0,
    }
    write_json(summary_path, summary)
    return summary
