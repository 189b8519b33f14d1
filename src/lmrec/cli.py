"""The ``lmrec`` command line: one subcommand per pipeline stage.

Every path is an option (``dvc.yaml`` passes them all), every tunable lives in
``params.yaml`` (``--params`` picks the file). Errors the user can fix are printed as one
readable message with a non-zero exit code:

    1  usage or configuration error
    2  unreadable input or contract violation (file, column named)
    3  data validation failed (report written)
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

from lmrec.io import LmrecError

app = typer.Typer(
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


def _fail(err: LmrecError) -> typer.Exit:
    typer.secho(f"error: {err}", fg=typer.colors.RED, err=True)
    return typer.Exit(code=err.exit_code)


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


def _column_pairs(pairs: list[str]) -> dict[str, str | None]:
    from lmrec.config import ColumnMap

    roles = list(ColumnMap.model_fields)
    updates: dict[str, str | None] = {}
    for pair in pairs:
        role, sep, column = pair.partition("=")
        if not sep or role not in roles:
            raise LmrecError(f"--map {pair!r}: expected ROLE=COLUMN with ROLE one of {roles}")
        updates[role] = column or None
    return updates


@app.command()
def ingest(
    source: Annotated[
        str | None,
        typer.Option(
            help="movielens-100k | csv | parquet | synthetic. Default: params ingest.source."
        ),
    ] = None,
    interactions: Annotated[
        Path | None, typer.Option(help="csv/parquet source: the interactions file.")
    ] = None,
    items: Annotated[Path | None, typer.Option(help="csv/parquet source: the items file.")] = None,
    map_: Annotated[
        list[str] | None,
        typer.Option(
            "--map",
            help="csv/parquet source: contract column = source column, e.g. "
            "--map user_id=uid --map timestamp=ts. Repeatable.",
        ),
    ] = None,
    n_users: Annotated[int | None, typer.Option(help="synthetic: number of users.")] = None,
    n_items: Annotated[int | None, typer.Option(help="synthetic: number of items.")] = None,
    n_interactions: Annotated[
        int | None, typer.Option(help="synthetic: approximate number of interactions.")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="synthetic: random seed.")] = None,
    out: Annotated[Path, typer.Option(help="output directory (versioned by data.dvc).")] = Path(
        "data"
    ),
    snapshot: Annotated[
        bool, typer.Option(help="run `dvc add` on the output so data.dvc records its hash.")
    ] = False,
    push: Annotated[bool, typer.Option(help="with --snapshot: `dvc push` to the remote.")] = False,
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Bring a source into the data contract: OUT/interactions.parquet + OUT/items.parquet.

    User ids are pseudonymised with HMAC-SHA256 salted by $LMREC_USER_ID_SALT (a public
    default is used when unset: set a secret in production).
    """
    from lmrec.config import IngestParams, load_params
    from lmrec.stages import ingest as stage

    try:
        raw = load_params(params).ingest.model_dump()
        synth = {"n_users": n_users, "n_items": n_items, "n_interactions": n_interactions}
        raw["synthetic"].update({k: v for k, v in {**synth, "seed": seed}.items() if v is not None})
        raw["columns"].update(_column_pairs(map_ or []))
        raw["source"] = source or raw["source"]
        cfg = IngestParams.model_validate(raw)
        summary = stage.run(cfg, stage.IngestInputs(interactions, items), out)
        if snapshot:
            stage.snapshot(out, push=push)
    except LmrecError as err:
        raise _fail(err) from None
    except ValueError as err:
        raise _fail(LmrecError(str(err))) from None
    _show(f"ingested {cfg.source} into {out}/", summary)


@app.command()
def validate(
    interactions: InteractionsOpt = Path("data/interactions.parquet"),
    items: ItemsOpt = Path("data/items.parquet"),
    out: Annotated[
        Path, typer.Option(help="report directory: summary.json, report.md, data_docs/.")
    ] = Path("artifacts/validation"),
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Check both tables with the Great Expectations suite; fail with a readable report."""
    from lmrec.config import load_params
    from lmrec.stages import validate as stage

    try:
        summary = stage.run(load_params(params).validate, interactions, items, out)
    except LmrecError as err:
        raise _fail(err) from None
    _show("validation passed", summary)


@app.command()
def preprocess(
    interactions: InteractionsOpt = Path("data/interactions.parquet"),
    items: ItemsOpt = Path("data/items.parquet"),
    out: Annotated[Path, typer.Option(help="split directory for downstream stages.")] = Path(
        "artifacts/preprocess"
    ),
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Clean, k-core filter, hold out cold items, and split by time (leave-one-out)."""
    from lmrec.config import load_params
    from lmrec.stages import preprocess as stage

    try:
        summary = stage.run(load_params(params).preprocess, interactions, items, out)
    except LmrecError as err:
        raise _fail(err) from None
    _show(f"split written to {out}/", summary)


@app.command()
def embed(
    split: Annotated[
        Path, typer.Option(help="split directory written by `lmrec preprocess` (items.parquet).")
    ] = Path("artifacts/preprocess"),
    out: Annotated[
        Path, typer.Option(help="output directory: item_embeddings.safetensors + encoder.json.")
    ] = Path("artifacts/embed"),
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Encode every item's text with the pretrained encoder named by params embed.encoder."""
    from lmrec.config import load_params
    from lmrec.stages import embed as stage

    try:
        summary = stage.run(load_params(params).embed, split, out)
    except LmrecError as err:
        raise _fail(err) from None
    _show(f"item embeddings written to {out}/", summary)


@app.command()
def train(
    split: Annotated[
        Path, typer.Option(help="split directory written by `lmrec preprocess`.")
    ] = Path("artifacts/preprocess"),
    embeddings: Annotated[
        Path, typer.Option(help="embedding directory written by `lmrec embed`.")
    ] = Path("artifacts/embed"),
    out: Annotated[
        Path,
        typer.Option(help="output directory: model/, baselines/, metrics.json, history.csv."),
    ] = Path("artifacts/train"),
    checkpoints: Annotated[
        Path, typer.Option(help="per-epoch checkpoints (last/ and best/); kept for --resume.")
    ] = Path("artifacts/checkpoints/train"),
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="continue from the last checkpoint (same params and data) instead of "
            "starting over; the MLflow run is continued too.",
        ),
    ] = False,
    progress: Annotated[bool, typer.Option(help="show per-epoch progress bars.")] = True,
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Train the LM-powered sequential model and the baselines; log an MLflow run.

    Early stopping on validation (params train.early_stopping), a checkpoint every epoch,
    CUDA/bf16/DDP when present. Multi-process: `torchrun --nproc_per_node N -m lmrec.cli
    train ...` (gloo on CPU, NCCL on GPUs).
    """
    from lmrec.config import load_params
    from lmrec.stages import train as stage

    try:
        summary = stage.run(
            load_params(params),
            split,
            embeddings,
            out,
            checkpoints,
            resume=resume,
            progress=progress,
        )
    except LmrecError as err:
        raise _fail(err) from None
    if summary:
        _show(f"model written to {out}/model/", summary)


if __name__ == "__main__":
    app()
