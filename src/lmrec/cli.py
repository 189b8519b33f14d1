"""The ``lmrec`` command line: one subcommand per pipeline stage.

Every path is an option (``dvc.yaml`` passes them all), every tunable lives in
``params.yaml`` (``--params`` picks the file). Errors the user can fix are printed as one
readable message with a non-zero exit code:

    1  usage or configuration error
    2  unreadable input or contract violation (file, column named)
    3  data validation failed (report written)
    4  the promotion gate refused the candidate (gate.json written; nothing registered)
    5  `lmrec drift`: the recent feedback drifted past the monitor thresholds (drift.json)

Stage commands (``@stage_command``) run holding the workspace's pipeline lock
(``lmrec.locking``): one stage at a time per workspace, whoever starts it.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, ParamSpec

import typer

from lmrec.exit_codes import ExitCode
from lmrec.io import LmrecError

P = ParamSpec("P")

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


def stage_command(command: Callable[P, None]) -> Callable[P, None]:
    """A command that reads or writes the workspace's pipeline artefacts: it runs holding
    the pipeline lock (``lmrec.locking.pipeline_lock``), so no other stage runs meanwhile."""

    @functools.wraps(command)  # typer reads the options from the wrapped signature
    def locked(*args: P.args, **kwargs: P.kwargs) -> None:
        from lmrec.locking import pipeline_lock

        with contextlib.ExitStack() as held:
            try:
                held.enter_context(pipeline_lock())
            except LmrecError as err:
                raise _fail(err) from None
            command(*args, **kwargs)

    return locked


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
@stage_command
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
@stage_command
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
@stage_command
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
@stage_command
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


TrainDirOpt = Annotated[
    Path, typer.Option("--train", help="train stage output: model/, baselines/, run.json.")
]
SplitOpt = Annotated[Path, typer.Option(help="split directory written by `lmrec preprocess`.")]


@app.command()
@stage_command
def evaluate(
    split: SplitOpt = Path("artifacts/preprocess"),
    embeddings: Annotated[
        Path, typer.Option(help="embedding directory (for intra-list diversity).")
    ] = Path("artifacts/embed"),
    train_dir: TrainDirOpt = Path("artifacts/train"),
    out: Annotated[
        Path,
        typer.Option(help="output: metrics.json, comparison.json, slices.csv, report.png..."),
    ] = Path("artifacts/evaluate"),
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Evaluate the candidate, its seed replicas, the baselines and the current champion.

    The DESIGN.md protocol (full ranking, leave-one-out) on params evaluate.stage, with the
    cold-item, short-history and long-tail slices and beyond-accuracy metrics; a PNG report;
    the metrics and report logged to the candidate's MLflow run.
    """
    from lmrec.config import load_params
    from lmrec.stages import evaluate as stage

    try:
        summary = stage.run(load_params(params), split, embeddings, train_dir, out)
    except LmrecError as err:
        raise _fail(err) from None
    _show(f"evaluation written to {out}/ (report: {out}/report.png)", summary)


@app.command()
@stage_command
def gate(
    evaluation: Annotated[
        Path, typer.Option(help="evaluate stage output (comparison.json).")
    ] = Path("artifacts/evaluate"),
    train_dir: TrainDirOpt = Path("artifacts/train"),
    split: SplitOpt = Path("artifacts/preprocess"),
    embeddings: Annotated[
        Path, typer.Option(help="embedding directory (the serving bundle timed for latency).")
    ] = Path("artifacts/embed"),
    out: Annotated[Path, typer.Option(help="output directory for gate.json.")] = Path(
        "artifacts/gate"
    ),
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Check the candidate against value thresholds, the baselines, the champion and the
    latency budget (params gate; timed on the served path, params serve). Exit 0: passed;
    exit 4: refused (reasons printed and in gate.json); nothing is registered by this command.
    """
    from lmrec.config import load_params
    from lmrec.stages import gate as stage

    try:
        report = stage.run(load_params(params), evaluation, train_dir, split, embeddings, out)
    except LmrecError as err:
        raise _fail(err) from None
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
    interactions: InteractionsOpt = Path("data/interactions.parquet"),
    split: Annotated[
        Path, typer.Option(help="split directory of `lmrec preprocess` (the item index).")
    ] = Path("artifacts/preprocess"),
    embeddings: Annotated[
        Path, typer.Option(help="embedding directory written by `lmrec embed`.")
    ] = Path("artifacts/embed"),
    train_dir: TrainDirOpt = Path("artifacts/train"),
    gate_file: Annotated[
        Path, typer.Option("--gate", help="the gate's verdict on the candidate.", dir_okay=False)
    ] = Path("artifacts/gate/gate.json"),
    out: Annotated[
        Path, typer.Option(help="output directory: model/, data/, refit.json, run.json.")
    ] = Path("artifacts/refit"),
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

    try:
        inputs = stage.RefitInputs(interactions, split, embeddings, train_dir, gate_file)
        summary = stage.run(load_params(params), inputs, out, progress=progress)
    except LmrecError as err:
        raise _fail(err) from None
    _show(f"refit model written to {out}/model/", summary)


@app.command()
@stage_command
def register(
    gate_dir: Annotated[Path, typer.Option("--gate", help="gate stage output (gate.json).")] = Path(
        "artifacts/gate"
    ),
    evaluation: Annotated[
        Path, typer.Option(help="evaluate stage output (comparison.json, for version tags).")
    ] = Path("artifacts/evaluate"),
    train_dir: TrainDirOpt = Path("artifacts/train"),
    refit_dir: Annotated[
        Path, typer.Option("--refit", help="refit stage output: model/, refit.json, run.json.")
    ] = Path("artifacts/refit"),
    out: Annotated[Path, typer.Option(help="output directory for registration.json.")] = Path(
        "artifacts/register"
    ),
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Register the candidate the gate passed as an MLflow model version (alias challenger)
    whose model is its refit on all data, and, with params register.auto_promote, promote
    it to champion. Re-running for the same candidate and refit changes nothing. Exit 4
    when the gate refused it; exit 2 when the refit belongs to another candidate.
    """
    from lmrec.config import load_params
    from lmrec.stages import register as stage

    try:
        record = stage.run(load_params(params), gate_dir, evaluation, train_dir, refit_dir, out)
    except LmrecError as err:
        raise _fail(err) from None
    _show(
        f"model {record['model_name']!r} version {record['version']}",
        {
            "new version": record["created"],
            "aliases": ", ".join(record["aliases"]) or "none",
            "champion": record["champion_version"],
            "promoted now": record["promoted"],
        },
    )


def _registry(params: Path, create: bool = True):
    """The params' registry; with ``create=False`` None where a SQLite store does not exist
    yet (a read must not leave an empty one behind)."""
    from lmrec.config import load_params
    from lmrec.registry.store import Registry, store_exists
    from lmrec.train.tracking import tracking_uri

    cfg = load_params(params)
    uri = tracking_uri(cfg.train.mlflow.tracking_uri)
    if not create and not store_exists(uri):
        return None
    return Registry(uri, cfg.register.model_name)


@app.command()
def promote(
    version: Annotated[
        int | None, typer.Option(help="version to promote (default: the challenger).")
    ] = None,
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Make a registered version the champion (the one served). A no-op if it already is."""
    try:
        change = _registry(params).promote(version)
    except LmrecError as err:
        raise _fail(err) from None
    if change.changed:
        typer.echo(f"champion: version {change.before} -> version {change.after}")
    else:
        typer.echo(f"champion unchanged: version {change.after}")


@app.command()
def rollback(
    from_version: Annotated[
        int | None,
        typer.Option(
            help="roll back only if this version is still the champion (safe to retry: a "
            "second call with the same value changes nothing)."
        ),
    ] = None,
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Point the champion back at the version promoted before the current one.

    The rolled-back version is tagged lmrec.rolled_back and the pipeline does not promote
    it again on its own (`lmrec promote --version N` does).
    """
    try:
        change = _registry(params).rollback(from_version)
    except LmrecError as err:
        raise _fail(err) from None
    if change.changed:
        typer.echo(f"champion: version {change.before} -> version {change.after} (rolled back)")
    else:
        typer.echo(f"champion unchanged: version {change.after}")


@app.command()
def versions(params: ParamsOpt = Path("params.yaml")) -> None:
    """List the registered versions with their aliases and headline metrics."""
    try:
        registry = _registry(params)
        found = registry.versions()
    except LmrecError as err:
        raise _fail(err) from None
    if not found:
        typer.echo(f"model {registry.name!r} has no versions yet")
        return
    for v in found:
        ndcg = next((val for key, val in v.tags.items() if key.endswith("overall.ndcg_at_10")), "?")
        aliases = ",".join(v.aliases) or "-"
        rolled = "  (rolled back)" if "lmrec.rolled_back" in v.tags else ""
        typer.echo(f"  v{v.number:<4} {aliases:<20} ndcg@10 {ndcg}  run {v.run_id}{rolled}")


@app.command()
@stage_command
def package(
    split: Annotated[
        Path,
        typer.Option(
            help="the served model's training data: known users' histories and item "
            "popularity (the refit stage's data/, or a preprocess split)."
        ),
    ] = Path("artifacts/refit/data"),
    embeddings: Annotated[
        Path, typer.Option(help="embedding directory (text vectors for similar items).")
    ] = Path("artifacts/embed"),
    out: Annotated[
        Path, typer.Option(help="output: bundles/<alias>/, package.json, bentofile.yaml.")
    ] = Path("artifacts/package"),
    bentofile: Annotated[Path, typer.Option(help="the Bento build file.")] = Path("bentofile.yaml"),
    build: Annotated[bool, typer.Option(help="run `bentoml build` after importing.")] = True,
    lock: Annotated[
        Path | None,
        typer.Option(
            help="the lock file that pins the Bento's requirements. Default: "
            "requirements/lmrec.lock.txt beside the bentofile."
        ),
    ] = None,
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Package the registry's champion (and challenger) for serving.

    Resolves the aliases to MLflow versions, builds a serving bundle for each (weights,
    config, id maps, catalog, user histories, item vectors), imports it into the BentoML
    model store (lmrec-champion / lmrec-challenger) and builds the Bento.
    """
    from lmrec.config import load_params
    from lmrec.stages import package as stage

    try:
        record = stage.run(
            load_params(params), split, embeddings, out, bentofile if build else None, lock
        )
    except LmrecError as err:
        raise _fail(err) from None
    _show(f"packaged ({out}/package.json)", stage.summary(record))


@app.command()
def bundle(
    model: Annotated[Path, typer.Option(help="a saved lmrec model directory.")] = Path(
        "artifacts/train/model"
    ),
    split: SplitOpt = Path("artifacts/preprocess"),
    embeddings: Annotated[Path, typer.Option(help="embedding directory.")] = Path(
        "artifacts/embed"
    ),
    out: Annotated[Path, typer.Option(help="bundle directory to write.")] = Path(
        "artifacts/bundle"
    ),
    version: Annotated[str, typer.Option(help="version label the service reports.")] = "local",
) -> None:
    """Build a serving bundle straight from a model directory (no registry): for trying a
    model locally with `LMREC_BUNDLE=<out> lmrec serve`."""
    from lmrec.registry.store import model_digest
    from lmrec.serving.bundle import build_bundle

    try:
        meta = {"version": version, "alias": "local", "digest": model_digest(model)}
        info = build_bundle(model, split, embeddings, out, meta)
    except LmrecError as err:
        raise _fail(err) from None
    _show(f"bundle written to {out}/", {k: v for k, v in info.items() if k != "digest"})


@app.command()
def serve(
    port: Annotated[int, typer.Option(help="HTTP port.")] = 3000,
    host: Annotated[str, typer.Option(help="interface to bind.")] = "127.0.0.1",
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Serve the packaged champion (`bentoml serve lmrec.serving.service:LmrecService`).

    Environment: LMREC_BUNDLE (serve a bundle directory instead of the packaged model),
    LMREC_API_TOKEN (require a bearer token), LMREC_ADMIN_TOKEN (the one /admin/reload
    takes), LMREC_PRODUCTION=1 (refuse to start without both tokens and a secret
    LMREC_USER_ID_SALT), LMREC_FEEDBACK_DB (feedback store path).
    """
    import os
    import shutil

    bentoml_bin = shutil.which("bentoml") or str(Path(sys.executable).parent / "bentoml")
    if params.is_file():
        os.environ.setdefault("LMREC_PARAMS", str(params.resolve()))
    cmd = [bentoml_bin, "serve", "lmrec.serving.service:LmrecService"]
    os.execv(bentoml_bin, [*cmd, "--host", host, "--port", str(port)])


@app.command()
def forget(
    user_id: Annotated[
        str | None,
        typer.Option(help="the user's raw id, as the product service sends it (or its pseudonym)."),
    ] = None,
    expired: Annotated[
        bool, typer.Option(help="erase the events older than serve.feedback.retention_days.")
    ] = False,
    feedback: Annotated[
        Path | None,
        typer.Option(help="the feedback log. Default: $LMREC_FEEDBACK_DB, else serve.feedback_db."),
    ] = None,
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Erase a user's events (--user-id) or the expired ones (--expired) from the feedback
    and impression logs, with a line in the audit log (serve.feedback.audit_log; never the
    raw id). A forgotten user is also left out of every later `lmrec ingest` snapshot.
    The salt is $LMREC_USER_ID_SALT: the service's.
    """
    import os

    from lmrec.config import load_params
    from lmrec.serving import erasure

    try:
        if (user_id is None) == (not expired):
            raise LmrecError("give exactly one of --user-id ID and --expired")
        cfg = load_params(params).serve
        db = feedback or Path(os.environ.get("LMREC_FEEDBACK_DB") or cfg.feedback_db)
        audit = erasure.audit_path(db, cfg.feedback.audit_log)
        if user_id is not None:
            record = erasure.forget(db, user_id, audit)
        elif cfg.feedback.retention_days is None:
            raise LmrecError("serve.feedback.retention_days is null: nothing expires")
        else:
            record = erasure.expire(db, cfg.feedback.retention_days, audit)
    except LmrecError as err:
        raise _fail(err) from None
    _show(f"erased from {db} (audit: {audit})", record["deleted"])


@app.command()
@stage_command
def drift(
    split: SplitOpt = Path("artifacts/preprocess"),
    feedback: Annotated[
        Path | None,
        typer.Option(help="the service's feedback log. Default: params serve.feedback_db."),
    ] = None,
    score_model: Annotated[
        Path | None,
        typer.Option(
            help="model for score_shift (trained on the split). Default: params "
            "monitor.score_model: `champion` (the packaged champion, from the registry), a "
            "model directory, or null (no score_shift)."
        ),
    ] = None,
    out: Annotated[Path, typer.Option(help="output directory for drift.json.")] = Path(
        "artifacts/monitor"
    ),
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Compare the last monitor.window_days of feedback with the training split: unseen
    users and items, popularity shift, catalog churn, and score shift (how the model ranks
    the window's items vs the test items; params monitor), and the champion's age in the
    registry. Exit 0: no drift (or too few events to judge); exit 5: drift; exit 6: no drift
    but the champion is older than monitor.max_model_age_days (reasons printed and in
    drift.json).
    """
    import tempfile

    from lmrec.config import load_params
    from lmrec.stages import drift as stage
    from lmrec.train.tracking import tracking_uri

    try:
        cfg = load_params(params)
        db = feedback or Path(cfg.serve.feedback_db)
        monitor = cfg.monitor
        if score_model is not None:
            monitor = monitor.model_copy(update={"score_model": str(score_model)})
        champion = _champion_registered(params)
        with tempfile.TemporaryDirectory(prefix="lmrec-drift-") as tmp:
            served, label = None, ""
            if monitor.score_model == stage.CHAMPION_MODEL:
                uri = tracking_uri(cfg.train.mlflow.tracking_uri)
                served, label = stage.champion_model(
                    uri, cfg.register.model_name, Path("artifacts/package"), Path(tmp)
                )
            report = stage.run(
                monitor, split, db, out, champion=champion, champion_dir=served,
                champion_label=label,
            )  # fmt: skip
    except LmrecError as err:
        raise _fail(err) from None
    if report["metrics"]:
        metrics = {k: round(v, 4) for k, v in report["metrics"].items()}
        _show(f"drift check on {report['n_events']:,} events", metrics)
    for reason in [*report["reasons"], *report["notes"], report["model_age"]["reason"]]:
        typer.echo(f"  {reason}")
    if report["drifted"]:
        typer.secho(f"drift detected ({out}/drift.json)", bold=True, fg=typer.colors.RED)
    elif report["stale"]:
        typer.secho(f"stale champion ({out}/drift.json)", bold=True, fg=typer.colors.RED)
    else:
        typer.secho(f"no drift ({out}/drift.json)", bold=True, fg=typer.colors.GREEN)
    if report["exit_code"]:
        raise typer.Exit(code=report["exit_code"])


def _champion_registered(params: Path) -> tuple[int, float | None] | None:
    """(version, registration time) of the registry's champion, or None without one or
    when the registry cannot be read (said on stderr: the drift check still runs)."""
    from lmrec.registry.store import CHAMPION

    try:
        registry = _registry(params, create=False)
        champion = None if registry is None else registry.alias(CHAMPION)
    except LmrecError as err:
        typer.secho(f"champion age not judged: {err}", err=True, fg=typer.colors.YELLOW)
        return None
    return None if champion is None else (champion.number, champion.created_at)


@app.command("online-report")
@stage_command
def online_report(
    feedback: Annotated[
        Path | None,
        typer.Option(
            help="the service's log (impressions and feedback events, one SQLite file). "
            "Default: $LMREC_FEEDBACK_DB, else params serve.feedback_db."
        ),
    ] = None,
    out: Annotated[
        Path, typer.Option(help="output directory for online.json and online.png.")
    ] = Path("artifacts/monitor"),
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """CTR per model version and variant over the last monitor.online.window_days: the
    impression log joined to the feedback log by request_id and item (a click: any of
    monitor.online.positive_events), a Wilson interval per arm, a two-proportion z-test of
    the challenger against the champion (verdict better / worse / no difference at
    monitor.online.alpha) and each version's offline NDCG@10 from the MLflow registry.
    Exit 0 with the report written; 2 when the log is missing or unreadable; 7 (report
    written) when offline NDCG@10 ranks a version above another whose CTR is significantly
    higher (monitor.online.alarm_on_disagreement).
    """
    import os

    from lmrec import artifacts
    from lmrec.config import load_params
    from lmrec.stages import online as stage
    from lmrec.train.tracking import tracking_uri

    try:
        cfg = load_params(params)
        db = feedback or Path(os.environ.get("LMREC_FEEDBACK_DB") or cfg.serve.feedback_db)
        uri = tracking_uri(cfg.train.mlflow.tracking_uri)
        registry = stage.RegistrySource(uri, cfg.register.model_name, cfg.evaluate.stage)
        report = stage.run(cfg.monitor.online, db, out, registry)
    except LmrecError as err:
        raise _fail(err) from None
    for arm in report["arms"]:
        ndcg = arm["offline_ndcg@10"]
        shown = f"{arm['impressions']:,} impressions, {arm['clicks']:,} clicks"
        ctr = f"CTR {arm['ctr']:.4f} [{arm['ci_low']:.4f}, {arm['ci_high']:.4f}]"
        offline = "?" if ndcg is None else f"{ndcg:.4f}"
        typer.echo(f"  v{arm['model_version']} {arm['variant']}: {shown}, {ctr}, NDCG@10 {offline}")
    for note in report["notes"]:
        typer.echo(f"  {note}")
    test = report["test"]
    verdict = f"{test['verdict']}: {test['reason']}" if test["verdict"] else test["reason"]
    typer.secho(verdict, bold=True)  # a reason without a verdict says why it is not judged
    typer.echo(f"report: {out / artifacts.ONLINE_FILE}, {out / artifacts.ONLINE_PLOT}")
    for pair in report["agreement"]["disagreements"]:
        a, b = pair["better_offline"], pair["better_online"]
        (ndcg_a, ndcg_b), (ctr_a, ctr_b) = pair["offline_ndcg@10"], pair["ctr"]
        typer.secho(
            f"offline and online disagree: v{a} NDCG@10 {ndcg_a:.4f} > v{b} {ndcg_b:.4f}, "
            f"but CTR v{b} {ctr_b:.4f} > v{a} {ctr_a:.4f} (p = {pair['p_value']:.3g})",
            err=True,
            fg=typer.colors.RED,
        )
    if report["agreement"]["alarm"] and cfg.monitor.online.alarm_on_disagreement:
        raise typer.Exit(ExitCode.DISAGREEMENT)


if __name__ == "__main__":
    app()
