"""The ``lmrec`` application object, the options its commands share, and its error handling.

Every ``LmrecError`` a command raises is caught once, here (``_Commands.invoke``): its
message goes to stderr and its ``exit_code`` (``lmrec.exit_codes.ExitCode``) is the exit
status, so the commands themselves never catch it.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, ParamSpec

import click
import typer
from typer.core import TyperGroup

from lmrec.io import LmrecError

P = ParamSpec("P")


class _Commands(TyperGroup):
    """The command group: an ``LmrecError`` from any command becomes one red line on stderr
    and the error's exit code (CliRunner and the console script alike)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except LmrecError as err:
            typer.secho(f"error: {err}", fg=typer.colors.RED, err=True)
            raise typer.Exit(code=int(err.exit_code)) from None


app = typer.Typer(
    cls=_Commands,
    help="lmrec: recommendation powered by pretrained language models, "
    "from raw interaction logs to a served endpoint.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ParamsOpt = Annotated[
    Path, typer.Option("--params", help="params file with one block per stage.", dir_okay=False)
]
InteractionsOpt = Annotated[
    Path, typer.Option(help="interactions table in the data contract (parquet).")
]
ItemsOpt = Annotated[Path, typer.Option(help="item catalog in the data contract (parquet).")]


def _show(title: str, summary: dict) -> None:
    typer.secho(title, bold=True)
    width = max(len(k) for k in summary)
    for key, value in summary.items():
        shown = f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else value
        typer.echo(f"  {key:<{width}}  {shown}")


@app.callback()
def main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="log progress details.")] = False,
) -> None:
    """Run one pipeline stage. `dvc repro` runs them all in order; see README.md."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def stage_command(command: Callable[P, None]) -> Callable[P, None]:
    """A command that reads or writes the workspace's pipeline artefacts: it runs holding
    the pipeline lock (``lmrec.locking.pipeline_lock``), so no other stage runs meanwhile."""

    @functools.wraps(command)  # typer reads the options from the wrapped signature
    def locked(*args: P.args, **kwargs: P.kwargs) -> None:
        from lmrec.locking import pipeline_lock

        with pipeline_lock():
            command(*args, **kwargs)

    return locked


TrainDirOpt = Annotated[
    Path, typer.Option("--train", help="train stage output: model/, baselines/, run.json.")
]
SplitOpt = Annotated[Path, typer.Option(help="split directory written by `lmrec preprocess`.")]
