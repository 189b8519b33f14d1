"""Package stage: the registry's champion (and challenger) -> BentoML models -> a Bento.

1. Resolve the aliases to concrete MLflow versions and download their served models (the
   refit on all data; ``Registry.download(..., served=True)``).
2. Build a serving bundle for each (``lmrec.serving.bundle``) under ``out_dir/bundles/``,
   with the known users' histories and the item popularity of ``split_dir``: in the
   pipeline the refit stage's ``data/``, every event the refit learned from (each user's
   whole history, validation, test and cold-holdout events included).
3. Import each bundle into the BentoML model store as ``lmrec-champion`` /
   ``lmrec-challenger`` with version ``v<N>-<digest8>`` (the served model's digest) and
   labels (alias, version, digest, candidate_digest);
   the imported model becomes ``:latest``, which is what the service loads. A stale
   ``lmrec-challenger`` is removed when there is no challenger any more.
4. ``bentoml build`` a Bento from ``bentofile.yaml`` with those exact model versions, the
   requirements the serving code imports pinned by the lock file (``requirements.txt``)
   and the ``serve`` params block (``lmrec.serving.bento``): it runs in a fresh
   environment made from its own ``env/python/requirements.txt``, from any directory.

Idempotent: a bundle already imported as the newest model of its name is not imported
again. Writes ``out_dir/package.json`` (versions, BentoML tags, Bento tag), and for the
build ``out_dir/bentofile.yaml`` and ``out_dir/bento-src/`` (its context, with the
``requirements.txt``).
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from pathlib import Path
from typing import Any

import yaml
from tqdm.auto import tqdm

from lmrec.artifacts import PACKAGE_FILE
from lmrec.config import Params, ServeParams
from lmrec.io import LmrecError, write_json
from lmrec.registry.store import CHALLENGER, CHAMPION, Registry
from lmrec.requirements import LOCK_FILE, SERVING, pinned, read_lock
from lmrec.serving.bento import SERVE_PARAMS_FILE, write_serve_params
from lmrec.serving.bundle import build_bundle
from lmrec.train.tracking import tracking_uri

BENTO_MODELS = {CHAMPION: "lmrec-champion", CHALLENGER: "lmrec-challenger"}


def _store_models(name: str) -> list[Any]:
    import bentoml

    return sorted(
        (m for m in bentoml.models.list() if m.tag.name == name),
        key=lambda m: m.info.creation_time,
    )


def import_bundle(bundle_dir: Path, name: str, labels: dict[str, str]) -> str:
    """Copy a bundle into the BentoML model store as the newest ``name``; return its tag."""
    import bentoml

    version = f"v{labels['version']}-{labels['digest'][:8]}"
    existing = _store_models(name)
    if existing and existing[-1].tag.version == version:
        return str(existing[-1].tag)
    for model in existing:  # an older import of the same version: re-import it as newest
        if model.tag.version == version:
            bentoml.models.delete(model.tag)
    with bentoml.models.create(f"{name}:{version}", labels=labels, metadata=labels) as model:
        shutil.copytree(bundle_dir, model.path, dirs_exist_ok=True)
    return f"{name}:{version}"


def remove_models(name: str) -> int:
    import bentoml

    models = _store_models(name)
    for model in models:
        bentoml.models.delete(model.tag)
    return len(models)


def serving_requirements(lock: Path) -> list[str]:
    """The Bento's requirements: every distribution the serving code imports
    (``lmrec.requirements.SERVING``) at the version ``lock`` pins."""
    return pinned(SERVING, read_lock(lock), str(lock))


def build_context(package_src: Path, ctx: Path, serve: ServeParams) -> Path:
    """The Bento's build context: a copy of the lmrec package carrying ``serve``."""
    if ctx.exists():
        shutil.rmtree(ctx)
    ignore = shutil.ignore_patterns("__pycache__", SERVE_PARAMS_FILE)
    shutil.copytree(package_src, ctx / "lmrec", ignore=ignore)
    write_serve_params(serve, ctx / "lmrec")
    return ctx


def build_bento(
    bentofile: Path,
    model_tags: list[str],
    out_dir: Path,
    version: str,
    serve: ServeParams,
    requirements: list[str],
) -> str:
    """``bentoml build`` with the repo's bentofile plus the exact model tags, the pinned
    requirements and the serve params; the package's source is ``src/lmrec`` beside the
    bentofile. By hand: ``bentoml build -f out_dir/bentofile.yaml out_dir/bento-src``."""
    import bentoml

    config = yaml.safe_load(bentofile.read_text())
    python = dict(config.get("python") or {})
    if {"packages", "requirements_txt"} & python.keys():
        raise LmrecError(
            f"{bentofile}: python.packages / python.requirements_txt are written by lmrec "
            "package (lmrec.requirements.SERVING pinned by the lock file); remove them"
        )
    ctx = build_context(bentofile.parent / "src" / "lmrec", out_dir / "bento-src", serve)
    # BentoML takes the file relative to the build context only.
    (ctx / "requirements.txt").write_text("\n".join(["# lmrec package", *requirements, ""]))
    config["python"] = {**python, "requirements_txt": "requirements.txt"}
    config["models"] = model_tags
    resolved = out_dir / "bentofile.yaml"
    resolved.write_text(yaml.safe_dump(config, sort_keys=False))
    # The same champion packaged again: rebuild its Bento (the code may have changed).
    with contextlib.suppress(bentoml.exceptions.NotFound):
        bentoml.bentos.delete(f"{config.get('name', 'lmrec')}:{version}")
    bento = bentoml.bentos.build_bentofile(
        str(resolved.resolve()), build_ctx=str(ctx.resolve()), version=version
    )
    return str(bento.tag)


def run(
    params: Params,
    split_dir: Path,
    embed_dir: Path,
    out_dir: Path,
    bentofile: Path | None = Path("bentofile.yaml"),
    lock: Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Package the champion (and challenger); build the Bento unless ``bentofile`` is None.

    Args:
        params: every params block (``register``, ``train.mlflow``).
        split_dir: the served models' training data (split layout): histories, popularity.
        embed_dir: the item text embeddings.
        out_dir: ``bundles/``, ``package.json`` and the resolved ``bentofile.yaml``.
        bentofile: the Bento build file, or None to import the bundles only.
        lock: the lock file that pins the Bento's requirements (default:
            ``requirements/lmrec.lock.txt`` beside the bentofile, as ``src/`` is).
        progress: a bar over the steps (each alias's bundle, the Bento build) on stderr.
    """
    requirements = []
    if bentofile is not None:
        requirements = serving_requirements(lock or bentofile.parent / LOCK_FILE)
    registry = Registry(tracking_uri(params.train.mlflow.tracking_uri), params.register.model_name)
    record: dict[str, Any] = {"model_name": registry.name, "models": {}}
    tags = []
    bar = tqdm(total=3 if bentofile else 2, desc="package", unit="step", disable=not progress)
    for alias in (CHAMPION, CHALLENGER):
        bar.set_postfix_str(f"{alias} bundle")
        version = registry.alias(alias)
        if version is None:
            if alias == CHAMPION:
                raise LmrecError(
                    f"model {registry.name!r} has no champion in {registry.uri}: run the "
                    "pipeline through register (`dvc repro`) or `lmrec promote` first"
                )
            removed = remove_models(BENTO_MODELS[alias])
            record["models"][alias] = {"version": None, "stale_removed": removed}
            bar.update()
            continue
        labels = {
            "alias": alias,
            "version": str(version.number),
            "digest": version.served_digest or "unknown",
            "candidate_digest": version.digest or "unknown",
            "model_name": registry.name,
            "mlflow_run_id": str(version.run_id),
        }
        bundle_dir = out_dir / "bundles" / alias
        with tempfile.TemporaryDirectory(prefix="lmrec-package-") as tmp:
            model_dir = registry.download(version.number, tmp, served=True)
            info = build_bundle(model_dir, split_dir, embed_dir, bundle_dir, labels)
        tag = import_bundle(bundle_dir, BENTO_MODELS[alias], labels)
        tags.append(tag)
        record["models"][alias] = {**info, "version": version.number, "bentoml_model": tag}
        bar.update()
    if bentofile is not None:
        bar.set_postfix_str("bentoml build")
        champion = record["models"][CHAMPION]
        bento_version = tags[0].split(":")[1]
        record["bento"] = build_bento(
            bentofile, tags, out_dir, bento_version, params.serve, requirements
        )
        record["bento_version_of"] = f"champion v{champion['version']}"
        bar.update()
    bar.close()
    write_json(out_dir / PACKAGE_FILE, record)
    return record


def summary(record: dict[str, Any]) -> dict[str, str]:
    out = {}
    for alias, info in record["models"].items():
        found = info.get("version")
        out[alias] = f"version {found} -> {info['bentoml_model']}" if found else "none"
    if "bento" in record:
        out["bento"] = record["bento"]
    return out
