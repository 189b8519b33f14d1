"""Register stage: a candidate the gate passed becomes an MLflow model version.

The version is created from the model the train stage logged (``run.json``'s model URI) and
tagged with the git commit, the ``data.dvc`` hash, the params hash, the model digest and the
candidate's evaluation metrics. It gets the alias ``challenger``; with
``register.auto_promote`` (the default) it is then promoted to ``champion``.

Idempotent: a candidate already registered (same model digest) reuses its version, and a
version that is already the champion keeps its aliases untouched (no flapping). Writes
``registration.json`` (version, aliases, what changed).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from lmrec.config import Params
from lmrec.io import DataError, LmrecError, write_json
from lmrec.registry.gate import REFUSED_EXIT_CODE
from lmrec.registry.store import (
    CHAMPION,
    DIGEST_TAG,
    ROLLED_BACK_TAG,
    Registry,
    model_digest,
)
from lmrec.stages.evaluate import COMPARISON_FILE
from lmrec.stages.gate import GATE_FILE
from lmrec.stages.train import RUN_FILE
from lmrec.train.tracking import data_version, flatten, git_commit, tracking_uri

REGISTRATION_FILE = "registration.json"


class GateRefused(LmrecError):
    """The gate refused the candidate; nothing is registered."""

    exit_code = REFUSED_EXIT_CODE


def params_hash(params: Params) -> str:
    """sha256 of the typed params (every block, defaults filled in), key-sorted."""
    blob = json.dumps(params.model_dump(mode="json", by_alias=True), sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _read(path: Path, hint: str) -> dict[str, Any]:
    if not path.is_file():
        raise DataError(f"{path}: not found; {hint}")
    return json.loads(path.read_text())


def version_tags(
    params: Params, digest: str, run: dict[str, Any], comparison: dict[str, Any]
) -> dict[str, str]:
    """Tags of a new version: provenance plus the candidate's headline metrics."""
    cand = comparison["models"]["candidate"]
    stage = comparison["stage"]
    metrics = flatten({"overall": cand["overall"], "slices": cand["slices"]})
    tags = {
        DIGEST_TAG: digest,
        "git_commit": str(run.get("git_commit") or git_commit()),
        "data_dvc_md5": str(run.get("data_dvc_md5") or data_version()),
        "params_sha256": params_hash(params),
        "mlflow_run_id": str(run.get("mlflow_run_id")),
    }
    tags.update(
        {
            f"metric.{stage}.{k}".replace("@", "_at_"): str(v)
            for k, v in metrics.items()
            if v is not None
        }
    )
    return tags


def run(params: Params, gate_dir: Path, eval_dir: Path, train_dir: Path, out_dir: Path) -> dict:
    """Register (and, with auto_promote, promote) the passed candidate; return what happened.

    Raises:
        GateRefused: ``gate.json`` says the candidate was refused (exit code 4).
        DataError: gate.json is stale (another model) or an input is missing.
    """
    verdict = _read(gate_dir / GATE_FILE, "run the gate stage first")
    model_dir = train_dir / "model"
    digest = model_digest(model_dir)
    if verdict.get("candidate_digest") != digest:
        raise DataError(f"{gate_dir / GATE_FILE}: judged another model than {model_dir}")
    if not verdict["passed"]:
        failed = [c["reason"] for c in verdict["checks"] if c["status"] == "fail"]
        raise GateRefused("the gate refused this candidate:\n  " + "\n  ".join(failed))
    run_info = _read(train_dir / RUN_FILE, "re-run the train stage")
    model_uri = run_info.get("mlflow_model_uri")
    if not model_uri:
        raise LmrecError(
            f"{train_dir / RUN_FILE}: no MLflow model was logged "
            "(train.mlflow.log_model is false); nothing to register"
        )
    comparison = _read(eval_dir / COMPARISON_FILE, "run the evaluate stage first")
    registry = Registry(tracking_uri(params.train.mlflow.tracking_uri), params.register.model_name)
    before = [v.number for v in registry.versions()]
    version = registry.register(
        model_uri, run_info.get("mlflow_run_id"), version_tags(params, digest, run_info, comparison)
    )
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
        "rolled_back_earlier": rolled_back,
    }
    write_json(out_dir / REGISTRATION_FILE, record)
    return record
