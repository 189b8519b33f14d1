"""Register stage: a candidate the gate passed, and its refit, become an MLflow model version.

The version's model is the refit the refit stage logged (``<refit>/run.json``'s model URI,
in the refit's MLflow run): what package serves. Its tags are those of the evaluated
candidate: the git commit, the ``data.dvc`` hash, the params hash, the candidate's model
digest (``lmrec.model_digest``), its train run (``mlflow_run_id``) and logged model
(``lmrec.candidate_model_uri``) and its test metrics; plus the refit's digest and run. It
gets the alias ``challenger``; with ``register.auto_promote`` (the default) it is then
promoted to ``champion``.

Refused, with nothing registered: a refused candidate (exit 4), a stale ``gate.json``, and
a refit that does not belong to the gated candidate (``refit.json`` names another
candidate, or the refit model is not the one it records: exit 2).

Idempotent: a candidate and refit already registered (same digests) reuse their version,
and a version that is already the champion keeps its aliases untouched (no flapping).
Writes ``registration.json`` (version, aliases, what changed).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmrec.artifacts import (
    GATE_FILE,
    MODEL_DIR,
    REFIT_FILE,
    REGISTRATION_FILE,
    RUN_FILE,
    Comparison,
    read_comparison,
    read_json,
)
from lmrec.config import Params
from lmrec.io import DataError, LmrecError, write_json
from lmrec.registry.gate import GateRefused, require_pass
from lmrec.registry.store import (
    CANDIDATE_MODEL_TAG,
    CHAMPION,
    DIGEST_TAG,
    REFIT_DIGEST_TAG,
    ROLLED_BACK_TAG,
    Registry,
    metric_tag,
    model_digest,
)
from lmrec.train.tracking import data_version, flatten, git_commit, tracking_uri

# GateRefused is raised here through require_pass; callers catch it from this module too.
__all__ = [
    "GateRefused",
    "Refit",
    "checked_refit",
    "params_hash",
    "run",
    "version_tags",
]


def params_hash(params: Params) -> str:
    """sha256 of the typed params (every block, defaults filled in), key-sorted."""
    blob = json.dumps(params.model_dump(mode="json", by_alias=True), sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


@dataclass(frozen=True)
class Refit:
    """The refit stage's model, checked against the gated candidate."""

    digest: str  #: ``model_digest`` of ``<refit>/model``
    model_uri: str  #: the refit model as logged to MLflow
    run_id: str | None  #: the refit's MLflow run


def checked_refit(refit_dir: Path, candidate_digest: str, candidate_dir: Path) -> Refit:
    """The refit outputs, provided they belong to the gated candidate.

    Raises:
        DataError: ``refit.json`` names another candidate, the refit model or its run facts
            are not the ones it records, or a file is missing.
        LmrecError: no MLflow model was logged for the refit.
    """
    record_file, model_dir = refit_dir / REFIT_FILE, refit_dir / MODEL_DIR
    record = read_json(record_file, "run the refit stage (`lmrec refit`) first")
    refit_of = str(record.get("candidate_digest"))
    if refit_of != candidate_digest:
        raise DataError(
            f"{record_file}: refit of candidate {refit_of[:12]}, not of the gated candidate "
            f"{candidate_digest[:12]} ({candidate_dir}); re-run `lmrec refit`"
        )
    digest = model_digest(model_dir)
    facts = read_json(refit_dir / RUN_FILE, "re-run the refit stage")
    for source, recorded in ((record_file, record), (refit_dir / RUN_FILE, facts)):
        if recorded.get("model_digest") != digest:
            raise DataError(f"{source}: records another model than {model_dir}; re-run refit")
    if not facts.get("mlflow_model_uri"):
        raise LmrecError(
            f"{refit_dir / RUN_FILE}: no MLflow model was logged "
            "(train.mlflow.log_model is false); nothing to register"
        )
    return Refit(digest, facts["mlflow_model_uri"], facts.get("mlflow_run_id"))


def version_tags(
    params: Params, digest: str, run: dict[str, Any], comparison: Comparison, refit: Refit
) -> dict[str, str]:
    """Tags of a new version: the evaluated candidate's provenance and headline metrics,
    and the refit it serves."""
    cand, stage = comparison.candidate, comparison.stage
    metrics = flatten({"overall": cand.overall, "slices": cand.slices})
    tags = {
        DIGEST_TAG: digest,
        REFIT_DIGEST_TAG: refit.digest,
        "git_commit": str(run.get("git_commit") or git_commit()),
        "data_dvc_md5": str(run.get("data_dvc_md5") or data_version()),
        "params_sha256": params_hash(params),
        "mlflow_run_id": str(run.get("mlflow_run_id")),
        "refit_run_id": str(refit.run_id),
    }
    if run.get("mlflow_model_uri"):
        tags[CANDIDATE_MODEL_TAG] = str(run["mlflow_model_uri"])
    tags.update({metric_tag(stage, k): str(v) for k, v in metrics.items() if v is not None})
    return tags


def run(
    params: Params, gate_dir: Path, eval_dir: Path, train_dir: Path, refit_dir: Path, out_dir: Path
) -> dict:
    """Register (and, with auto_promote, promote) the passed candidate's refit; return what
    happened.

    Raises:
        GateRefused: ``gate.json`` says the candidate was refused (exit code 4).
        DataError: gate.json is stale (another model), the refit belongs to another
            candidate, or an input is missing.
    """
    gate_file, model_dir = gate_dir / GATE_FILE, train_dir / MODEL_DIR
    digest = model_digest(model_dir)
    require_pass(read_json(gate_file, "run the gate stage first"), digest, gate_file, model_dir)
    refit = checked_refit(refit_dir, digest, model_dir)
    run_info = read_json(train_dir / RUN_FILE, "re-run the train stage")
    comparison = read_comparison(eval_dir)
    registry = Registry(tracking_uri(params.train.mlflow.tracking_uri), params.register.model_name)
    before = [v.number for v in registry.versions()]
    tags = version_tags(params, digest, run_info, comparison, refit)
    version = registry.register(refit.model_uri, refit.run_id, tags)
    created = version.number not in before
    challenger_set = registry.set_challenger(version.number)
    promotion = None
    # A version rolled back by hand is not re-promoted by the next pipeline run.
    rolled_back = ROLLED_BACK_TAG in version.tags
    if params.register.auto_promote and not rolled_back:
        promotion = registry.promote(version.number)
    final = registry.version(version.number)
    champion = registry.alias(CHAMPION)
    record = {
        "model_name": registry.name,
        "version": final.number,
        "created": created,
        "aliases": list(final.aliases),
        "champion_version": champion.number if champion else None,
        "challenger_set": challenger_set,
        "promoted": bool(promotion and promotion.changed),
        "previous_champion": promotion.before if promotion else None,
        "model_digest": digest,
        "refit_digest": refit.digest,
        "rolled_back_earlier": rolled_back,
    }
    write_json(out_dir / REGISTRATION_FILE, record)
    return record
