"""The operations commands: the registry (``promote``, ``rollback``, ``versions``), serving
(``bundle``, ``serve``), privacy (``forget``) and monitoring (``drift``, ``online-report``).

Not DVC stages: their paths default to the workspace layout ``dvc.yaml`` writes.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from lmrec.cli._app import ParamsOpt, SplitOpt, _show, app, stage_command
from lmrec.exit_codes import ExitCode
from lmrec.io import LmrecError


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


def _show_change(change, how: str = "") -> None:
    """One line saying where the champion alias points now (``AliasChange``)."""
    if change.changed:
        typer.echo(f"champion: version {change.before} -> version {change.after}{how}")
    else:
        typer.echo(f"champion unchanged: version {change.after}")


@app.command()
def promote(
    version: Annotated[
        int | None, typer.Option(help="version to promote (default: the challenger).")
    ] = None,
    params: ParamsOpt = Path("params.yaml"),
) -> None:
    """Make a registered version the champion (the one served). A no-op if it already is."""
    _show_change(_registry(params).promote(version))


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
    _show_change(_registry(params).rollback(from_version), " (rolled back)")


@app.command()
def versions(params: ParamsOpt = Path("params.yaml")) -> None:
    """List the registered versions with their aliases and headline metrics."""
    registry = _registry(params)
    found = registry.versions()
    if not found:
        typer.echo(f"model {registry.name!r} has no versions yet")
        return
    for v in found:
        ndcg = v.metric("overall.ndcg@10")
        ndcg = "?" if ndcg is None else ndcg
        aliases = ",".join(v.aliases) or "-"
        rolled = "  (rolled back)" if "lmrec.rolled_back" in v.tags else ""
        typer.echo(f"  v{v.number:<4} {aliases:<20} ndcg@10 {ndcg}  run {v.run_id}{rolled}")


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

    meta = {"version": version, "alias": "local", "digest": model_digest(model)}
    info = build_bundle(model, split, embeddings, out, meta)
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

    cfg = load_params(params)
    db = feedback or Path(os.environ.get("LMREC_FEEDBACK_DB") or cfg.serve.feedback_db)
    uri = tracking_uri(cfg.train.mlflow.tracking_uri)
    registry = stage.RegistrySource(uri, cfg.register.model_name, cfg.evaluate.stage)
    report = stage.run(cfg.monitor.online, db, out, registry)
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
