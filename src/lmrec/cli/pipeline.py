"""The pipeline stages' commands: ``lmrec validate`` ... ``lmrec package``, and ``lmrec ingest``.

Each is one stage of ``dvc.yaml``, which passes every path on the command line: the path
options have no defaults here, so ``dvc.yaml`` is their one source
(``tests/unit/test_cli_paths.py``). ``lmrec ingest`` writes ``data/`` (``data.dvc``), the
pipeline's input, and keeps its default ``--out data``. Each runs holding the workspace's
pipeline lock (``stage_command``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lmrec.cli._app import (
    InteractionsOpt,
    ItemsOpt,
    ParamsOpt,
    SplitOpt,
    TrainDirOpt,
    _show,
    app,
    stage_command,
)
from lmrec.io import LmrecError


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
@stage_command
def ingest(
    source: Annotated[
        str | None,
        typer.Option(
            help="movielens-100k | csv | parquet | synthetic | feedback. "
            "Default: params ingest.source."
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
    from pydantic import ValidationError

    from lmrec.config import IngestParams, load_params
    from lmrec.stages import ingest as stage

    raw = load_params(params).ingest.model_dump()
    synth = {"n_users": n_users, "n_items": n_items, "n_interactions": n_interactions}
    raw["synthetic"].update({k: v for k, v in {**synth, "seed": seed}.items() if v is not None})
    raw["columns"].update(_column_pairs(map_ or []))
    raw["source"] = source or raw["source"]
    try:
        cfg = IngestParams.model_validate(raw)
    except ValidationError as err:  # the options merged into params' ingest block
        raise LmrecError(f"ingest options: {err}") from None
    summary = stage.run(cfg, stage.IngestInputs(interactions, items), out)
    if snapshot:
        stage.snapshot(out, push=push)
    _show(f"ingested {cfg.source} into {out}/", summary)


@app.command()
@stage_command
def validate(
    interactions: InteractionsOpt,
    items: ItemsOpt,
    out: Annotated[
        Path, typer.Option(help="report directory: summary.json, report.md, data_docs/.")
    ],
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Check both tables with the Great Expectations suite; fail with a readable report."""
    from lmrec.config import load_params
    from lmrec.stages import validate as stage

    summary = stage.run(load_params(params).validate, interactions, items, out)
    _show("validation passed", summary)


@app.command()
@stage_command
def preprocess(
    interactions: InteractionsOpt,
    items: ItemsOpt,
    out: Annotated[Path, typer.Option(help="split directory for downstream stages.")],
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Clean, k-core filter, hold out cold items, and split by time (leave-one-out)."""
    from lmrec.config import load_params
    from lmrec.stages import preprocess as stage

    summary = stage.run(load_params(params).preprocess, interactions, items, out)
    _show(f"split written to {out}/", summary)


@app.command()
@stage_command
def embed(
    split: Annotated[
        Path, typer.Option(help="split directory written by `lmrec preprocess` (items.parquet).")
    ],
    out: Annotated[
        Path, typer.Option(help="output directory: item_embeddings.safetensors + encoder.json.")
    ],
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Encode every item's text with the pretrained encoder named by params embed.encoder."""
    from lmrec.config import load_params
    from lmrec.stages import embed as stage

    summary = stage.run(load_params(params).embed, split, out)
    _show(f"item embeddings written to {out}/", summary)


@app.command()
@stage_command
def train(
    split: Annotated[Path, typer.Option(help="split directory written by `lmrec preprocess`.")],
    embeddings: Annotated[Path, typer.Option(help="embedding directory written by `lmrec embed`.")],
    out: Annotated[
        Path,
        typer.Option(help="output directory: model/, baselines/, metrics.json, history.csv."),
    ],
    checkpoints: Annotated[
        Path, typer.Option(help="per-epoch checkpoints (last/ and best/); kept for --resume.")
    ],
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

    summary = stage.run(
        load_params(params),
        split,
        embeddings,
        out,
        checkpoints,
        resume=resume,
        progress=progress,
    )
    if summary:
        _show(f"model written to {out}/model/", summary)


@app.command()
@stage_command
def evaluate(
    split: SplitOpt,
    embeddings: Annotated[
        Path, typer.Option(help="embedding directory (for intra-list diversity).")
    ],
    train_dir: TrainDirOpt,
    out: Annotated[
        Path,
        typer.Option(help="output: metrics.json, comparison.json, slices.csv, report.png..."),
    ],
    progress: Annotated[bool, typer.Option(help="show a progress bar over the models.")] = True,
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Evaluate the candidate, its seed replicas, the baselines and the current champion.

    The docs/design.md protocol (full ranking, leave-one-out) on params evaluate.stage, with the
    cold-item, short-history and long-tail slices and beyond-accuracy metrics; a PNG report;
    the metrics and report logged to the candidate's MLflow run.
    """
    from lmrec.config import load_params
    from lmrec.stages import evaluate as stage

    summary = stage.run(load_params(params), split, embeddings, train_dir, out, progress)
    _show(f"evaluation written to {out}/ (report: {out}/report.png)", summary)


@app.command()
@stage_command
def gate(
    evaluation: Annotated[Path, typer.Option(help="evaluate stage output (comparison.json).")],
    train_dir: TrainDirOpt,
    split: SplitOpt,
    embeddings: Annotated[
        Path, typer.Option(help="embedding directory (the serving bundle timed for latency).")
    ],
    out: Annotated[Path, typer.Option(help="output directory for gate.json.")],
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Check the candidate against value thresholds, the baselines, the champion and the
    latency budget (params gate; timed on the served path, params serve). Exit 0: passed;
    exit 4: refused (reasons printed and in gate.json); nothing is registered by this command.
    """
    from lmrec.config import load_params
    from lmrec.stages import gate as stage

    report = stage.run(load_params(params), evaluation, train_dir, split, embeddings, out)
    marks = {"pass": "PASS", "fail": "FAIL", "skip": "skip"}
    colors = {"pass": typer.colors.GREEN, "fail": typer.colors.RED, "skip": None}
    for check in report["checks"]:
        typer.secho(f"  {marks[check['status']]}  {check['reason']}", fg=colors[check["status"]])
    if report["passed"]:
        typer.secho(f"gate passed ({out}/gate.json)", bold=True, fg=typer.colors.GREEN)
        return
    typer.secho(f"gate refused the candidate ({out}/gate.json)", bold=True, fg=typer.colors.RED)
    raise typer.Exit(code=report["exit_code"])


@app.command()
@stage_command
def refit(
    interactions: InteractionsOpt,
    split: Annotated[
        Path, typer.Option(help="split directory of `lmrec preprocess` (the item index).")
    ],
    embeddings: Annotated[Path, typer.Option(help="embedding directory written by `lmrec embed`.")],
    train_dir: TrainDirOpt,
    gate_file: Annotated[
        Path, typer.Option("--gate", help="the gate's verdict on the candidate.", dir_okay=False)
    ],
    out: Annotated[
        Path, typer.Option(help="output directory: model/, data/, refit.json, run.json.")
    ],
    progress: Annotated[bool, typer.Option(help="show per-epoch progress bars.")] = True,
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Train the model that is served: the gated candidate's recipe (params train) on every
    event, validation, test and cold-holdout events included, for the epoch count early
    stopping chose for the candidate; log an MLflow run. Exit 4 when the gate refused the
    candidate.
    """
    from lmrec.config import load_params
    from lmrec.stages import refit as stage

    inputs = stage.RefitInputs(interactions, split, embeddings, train_dir, gate_file)
    summary = stage.run(load_params(params), inputs, out, progress=progress)
    _show(f"refit model written to {out}/model/", summary)


@app.command()
@stage_command
def register(
    gate_dir: Annotated[Path, typer.Option("--gate", help="gate stage output (gate.json).")],
    evaluation: Annotated[
        Path, typer.Option(help="evaluate stage output (comparison.json, for version tags).")
    ],
    train_dir: TrainDirOpt,
    refit_dir: Annotated[
        Path, typer.Option("--refit", help="refit stage output: model/, refit.json, run.json.")
    ],
    out: Annotated[Path, typer.Option(help="output directory for registration.json.")],
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Register the candidate the gate passed as an MLflow model version (alias challenger)
    whose model is its refit on all data, and, with params register.auto_promote, promote
    it to champion. Re-running for the same candidate and refit changes nothing. Exit 4
    when the gate refused it; exit 2 when the refit belongs to another candidate.
    """
    from lmrec.config import load_params
    from lmrec.stages import register as stage

    record = stage.run(load_params(params), gate_dir, evaluation, train_dir, refit_dir, out)
    _show(
        f"model {record['model_name']!r} version {record['version']}",
        {
            "new version": record["created"],
            "aliases": ", ".join(record["aliases"]) or "none",
            "champion": record["champion_version"],
            "promoted now": record["promoted"],
        },
    )


@app.command()
@stage_command
def package(
    split: Annotated[
        Path,
        typer.Option(
            help="the served model's training data: known users' histories and item "
            "popularity (the refit stage's data/, or a preprocess split)."
        ),
    ],
    embeddings: Annotated[
        Path, typer.Option(help="embedding directory (text vectors for similar items).")
    ],
    out: Annotated[
        Path, typer.Option(help="output: bundles/<alias>/, package.json, bentofile.yaml.")
    ],
    bentofile: Annotated[Path, typer.Option(help="the Bento build file.")],
    build: Annotated[bool, typer.Option(help="run `bentoml build` after importing.")] = True,
    lock: Annotated[
        Path | None,
        typer.Option(
            help="the lock file that pins the Bento's requirements. Default: "
            "requirements/lmrec.lock.txt beside the bentofile."
        ),
    ] = None,
    progress: Annotated[bool, typer.Option(help="show a progress bar over the steps.")] = True,
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Package the registry's champion (and challenger) for serving.

    Resolves the aliases to MLflow versions, builds a serving bundle for each (weights,
    config, id maps, catalog, user histories, item vectors), imports it into the BentoML
    model store (lmrec-champion / lmrec-challenger) and builds the Bento.
    """
    from lmrec.config import load_params
    from lmrec.stages import package as stage

    record = stage.run(
        load_params(params), split, embeddings, out, bentofile if build else None, lock, progress
    )
    _show(f"packaged ({out}/package.json)", stage.summary(record))
