"""The MLflow model registry as lmrec uses it: versions, aliases, promotion and rollback.

One registered model (``register.model_name``, default ``lmrec``) holds every model that
passed the gate. Aliases, not the deprecated stages, say what is what:

- ``champion``: the version served. ``promote`` moves it; ``rollback`` moves it back.
- ``challenger``: a registered version waiting for promotion (A/B tests serve it beside the
  champion); promotion removes the alias from the version it promotes.

A version is one gated recipe with two models (docs/design.md: the gate judges a candidate
trained on the split; what is served is the same recipe refit on everything):

- the **served** model: the version's own MLflow model (its source), the refit on all data;
  ``download(..., served=True)``, ``models:/lmrec@champion``, and what package bundles;
- the **evaluated** model: the held-out candidate the gate judged, whose test metrics the
  version's tags carry (tag ``lmrec.candidate_model_uri``, the train run's logged model);
  ``download(...)``, what the evaluate stage compares the next candidate with. A refit has
  trained on the test events, so only the candidate gives an honest comparison.

Versions registered before the refit existed have one model, which is both.

Every version carries the tag ``lmrec.model_digest`` (sha256 of the evaluated candidate's
model directory) and, when refit, ``lmrec.refit_digest`` (of the served model), so
registering the same candidate and refit twice finds the existing version instead of
adding one.
The registered model's tag ``lmrec.champion_history`` lists the versions promoted so far
(JSON, oldest first); ``rollback`` pops the current champion from it and points the alias
at the version before.

MLflow has no compare-and-swap, and promote/rollback read the alias and the history, then
write both: two of them at once could leave the alias on one version and the history
ending on another. So every write (``register``, ``set_challenger``, ``promote``,
``rollback``) holds a file lock (``lmrec.locking``) for the store: ``$LMREC_REGISTRY_LOCK``
when set, else beside a SQLite database (``mlflow.db.lock``: every writer of that file
shares its filesystem) or inside a file store; for a tracking server, under
``~/.cache/lmrec/locks``, which serialises the writers of one machine only; writers on
several machines need ``$LMREC_REGISTRY_LOCK`` on a volume they share.

Length: one class, ``Registry``, owns every read and write of the MLflow registry (versions,
aliases, tags, locks); splitting it would spread the registry's invariants over files.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import yaml

from lmrec.io import LmrecError
from lmrec.locking import file_lock
from lmrec.train.tracking import bound_http_retries

CHAMPION = "champion"
CHALLENGER = "challenger"
DIGEST_TAG = "lmrec.model_digest"
REFIT_DIGEST_TAG = "lmrec.refit_digest"
CANDIDATE_MODEL_TAG = "lmrec.candidate_model_uri"
HISTORY_TAG = "lmrec.champion_history"
ROLLED_BACK_TAG = "lmrec.rolled_back"
#: the prefix of the evaluated candidate's metric tags: metric.<stage>.<name>, "@" -> "_at_"
METRIC_TAG_PREFIX = "metric."


def metric_tag(stage: str, name: str) -> str:
    """The tag of a version's evaluated metric ``name`` ("overall.ndcg@10") on ``stage``."""
    return f"{METRIC_TAG_PREFIX}{stage}.{name}".replace("@", "_at_")


#: Environment variable: the registry's lock file (default: ``registry_lock_path``).
LOCK_ENV = "LMREC_REGISTRY_LOCK"
#: Seconds a registry write waits for another one (each takes well under a second).
LOCK_TIMEOUT_S = 120.0


class RegistryError(LmrecError):
    """The registry cannot do what was asked (no such version, nothing to roll back to)."""


def model_digest(model_dir: str | Path) -> str:
    """sha256 over the relative paths and bytes of every file in a saved model directory."""
    root = Path(model_dir)
    if not root.is_dir():
        raise LmrecError(f"{root}: not a saved model directory")
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def registry_lock_path(uri: str) -> Path:
    """The lock file serialising writes to the registry at ``uri`` (module docstring)."""
    if os.environ.get(LOCK_ENV):
        return Path(os.environ[LOCK_ENV])
    if uri.startswith("sqlite:///"):
        return Path(uri.removeprefix("sqlite:///") + ".lock")
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        return Path(parsed.path or uri) / ".lmrec-registry.lock"
    key = hashlib.sha256(uri.encode()).hexdigest()[:16]
    return Path.home() / ".cache" / "lmrec" / "locks" / f"registry-{key}.lock"


def store_exists(uri: str) -> bool:
    """False for a SQLite store whose file does not exist (opening it would create an empty
    one); True for any other URI (a server is asked when it is read)."""
    parsed = urlparse(uri)  # sqlite:///relative.db, sqlite:////absolute.db
    return parsed.scheme != "sqlite" or Path(parsed.path[1:]).is_file()


@dataclass(frozen=True)
class Version:
    """One registered model version, as much of it as lmrec needs."""

    number: int
    run_id: str | None
    source: str
    tags: dict[str, str]
    aliases: tuple[str, ...]
    created_at: float | None = None  # unix seconds the version was registered

    @property
    def digest(self) -> str | None:
        """The evaluated candidate's model digest (the version's identity)."""
        return self.tags.get(DIGEST_TAG)

    def metric(self, name: str, stage: str | None = None) -> float | None:
        """The evaluated candidate's metric ``name`` ("overall.ndcg@10") on ``stage``; with no
        stage, on the one it was evaluated on. None when the version has no such tag."""
        if stage is not None:
            value = self.tags.get(metric_tag(stage, name))
        else:
            suffix = metric_tag("", name).removeprefix(METRIC_TAG_PREFIX)  # ".overall.ndcg_at_10"
            tags = self.tags.items()
            value = next(
                (v for k, v in tags if k.startswith(METRIC_TAG_PREFIX) and k.endswith(suffix)), None
            )
        return None if value is None else float(value)

    @property
    def served_digest(self) -> str | None:
        """The served model's digest: the refit's, or the candidate's when not refit."""
        return self.tags.get(REFIT_DIGEST_TAG) or self.digest


@dataclass(frozen=True)
class AliasChange:
    """What ``promote``/``rollback`` did: the champion before and after, and whether it moved."""

    before: int | None
    after: int | None

    @property
    def changed(self) -> bool:
        return self.before != self.after


class Registry:
    """The registered model ``name`` in the MLflow registry at ``uri``."""

    def __init__(self, uri: str, name: str) -> None:
        import mlflow
        from mlflow import MlflowClient

        logging.getLogger("alembic").setLevel(logging.WARNING)
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        bound_http_retries()  # a server that is down fails in seconds, not minutes
        self._mlflow = mlflow
        self.uri, self.name = uri, name
        try:
            self.client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        except Exception as err:  # MLflow raises many types for a bad store
            raise LmrecError(f"MLflow registry at {uri!r}: {err}") from err

    # ---------------------------------------------------------------- reading
    def _model(self) -> Any | None:
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_registered_model(self.name)
        except MlflowException as err:
            if err.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise LmrecError(f"MLflow registry at {self.uri!r}: {err}") from err

    def versions(self) -> list[Version]:
        """Every version, oldest first (none when the model is not registered yet)."""
        model = self._model()
        if model is None:
            return []
        aliases: dict[int, list[str]] = {}
        for alias, number in (model.aliases or {}).items():
            aliases.setdefault(int(number), []).append(alias)
        found = self.client.search_model_versions(f"name = '{self.name}'")
        return sorted(
            (
                Version(
                    number=int(v.version),
                    run_id=v.run_id,
                    source=v.source,
                    tags=dict(v.tags or {}),
                    aliases=tuple(sorted(aliases.get(int(v.version), []))),
                    created_at=v.creation_timestamp / 1000 if v.creation_timestamp else None,
                )
                for v in found
            ),
            key=lambda v: v.number,
        )

    def version(self, number: int) -> Version:
        for v in self.versions():
            if v.number == number:
                return v
        known = ", ".join(str(v.number) for v in self.versions()) or "none"
        raise RegistryError(f"model {self.name!r} has no version {number} (versions: {known})")

    def alias(self, alias: str) -> Version | None:
        """The version holding ``alias``, or None."""
        for v in self.versions():
            if alias in v.aliases:
                return v
        return None

    def find_digest(self, digest: str, refit_digest: str | None = None) -> Version | None:
        """The newest version of the candidate with this digest (and, when given, of this
        refit of it), or None."""
        matches = [
            v
            for v in self.versions()
            if v.digest == digest
            and (refit_digest is None or v.tags.get(REFIT_DIGEST_TAG) == refit_digest)
        ]
        return matches[-1] if matches else None

    def history(self) -> list[int]:
        """Versions promoted to champion, oldest first (rolled-back ones removed)."""
        model = self._model()
        raw = (model.tags or {}).get(HISTORY_TAG, "[]") if model is not None else "[]"
        return [int(v) for v in json.loads(raw)]

    # ---------------------------------------------------------------- writing
    def _locked(self) -> contextlib.AbstractContextManager[None]:
        what = f"the MLflow registry at {self.uri!r}"
        return file_lock(registry_lock_path(self.uri), LOCK_TIMEOUT_S, what)

    def register(self, model_uri: str, run_id: str | None, tags: dict[str, str]) -> Version:
        """A version for ``model_uri``, reusing the one with the same digest tags if any."""
        with self._locked():
            return self._register(model_uri, run_id, tags)

    def _register(self, model_uri: str, run_id: str | None, tags: dict[str, str]) -> Version:
        digest = tags.get(DIGEST_TAG)
        existing = self.find_digest(digest, tags.get(REFIT_DIGEST_TAG)) if digest else None
        if existing is not None:
            return existing
        if self._model() is None:
            self.client.create_registered_model(
                self.name, description="lmrec models that passed the promotion gate"
            )
        model_id = model_uri.removeprefix("models:/") if model_uri.startswith("models:/") else None
        try:
            created = self.client.create_model_version(
                self.name, source=model_uri, run_id=run_id, tags=tags, model_id=model_id
            )
        except Exception as err:  # MLflow raises many types for a bad store or source
            raise RegistryError(f"model {self.name!r}: cannot register {model_uri}: {err}") from err
        return self.version(int(created.version))

    def set_challenger(self, number: int) -> bool:
        """Point ``challenger`` at a version (not at the champion); True if it moved."""
        with self._locked():
            return self._set_challenger(number)

    def _set_challenger(self, number: int) -> bool:
        target = self.version(number)
        if CHAMPION in target.aliases or CHALLENGER in target.aliases:
            return False
        self.client.set_registered_model_alias(self.name, CHALLENGER, str(number))
        return True

    def promote(self, number: int | None = None) -> AliasChange:
        """Make a version (default: the challenger) the champion. A no-op when it already is.

        Raises:
            RegistryError: no version given and no challenger, or no such version.
        """
        with self._locked():
            return self._promote(number)

    def _promote(self, number: int | None) -> AliasChange:
        current = self.alias(CHAMPION)
        before = current.number if current else None
        if number is None:
            challenger = self.alias(CHALLENGER)
            if challenger is None:
                if current is not None:
                    return AliasChange(before, before)  # nothing waiting: already promoted
                raise RegistryError(f"model {self.name!r} has no challenger to promote")
            number = challenger.number
        target = self.version(number)
        if before == number:
            return AliasChange(before, before)
        history = [v for v in self.history() if v != number] + [number]
        self.client.set_registered_model_tag(self.name, HISTORY_TAG, json.dumps(history))
        if ROLLED_BACK_TAG in target.tags:
            self.client.delete_model_version_tag(self.name, str(number), ROLLED_BACK_TAG)
        self.client.set_registered_model_alias(self.name, CHAMPION, str(number))
        if CHALLENGER in target.aliases:
            self.client.delete_registered_model_alias(self.name, CHALLENGER)
        return AliasChange(before, number)

    def rollback(self, from_version: int | None = None) -> AliasChange:
        """Point ``champion`` back at the version promoted before the current one.

        Args:
            from_version: roll back only if this version is still the champion; when it no
                longer is, nothing happens (so a retried rollback does not step back twice).

        Raises:
            RegistryError: there is no champion, or no earlier champion to go back to.
        """
        with self._locked():
            return self._rollback(from_version)

    def _rollback(self, from_version: int | None) -> AliasChange:
        current = self.alias(CHAMPION)
        if current is None:
            raise RegistryError(f"model {self.name!r} has no champion to roll back")
        if from_version is not None and current.number != from_version:
            return AliasChange(current.number, current.number)
        history = [v for v in self.history() if v != current.number]
        if not history:
            raise RegistryError(
                f"model {self.name!r}: version {current.number} is the only champion so far; "
                "there is nothing to roll back to"
            )
        previous = history[-1]
        self.client.set_model_version_tag(self.name, str(current.number), ROLLED_BACK_TAG, "true")
        self.client.set_registered_model_tag(self.name, HISTORY_TAG, json.dumps(history))
        self.client.set_registered_model_alias(self.name, CHAMPION, str(previous))
        return AliasChange(current.number, previous)

    # -------------------------------------------------------------- artifacts
    def download(self, number: int, dst: str | Path, *, served: bool = False) -> Path:
        """Download one of a version's models into ``dst``; return its lmrec model directory.

        Args:
            number: the version.
            dst: a directory to download into.
            served: the served (refit) model instead of the evaluated candidate. The
                default is the model the version's metrics describe, the one to compare
                on a split; ``served=True`` is the one to serve.
        """
        version = self.version(number)
        uri = f"models:/{self.name}/{version.number}"
        if not served:
            uri = version.tags.get(CANDIDATE_MODEL_TAG) or uri
        dst = Path(dst)
        dst.mkdir(parents=True, exist_ok=True)
        try:
            with _tracking_uri(self._mlflow, self.uri):
                local = self._mlflow.artifacts.download_artifacts(
                    artifact_uri=uri, dst_path=str(dst)
                )
        except Exception as err:  # MLflow raises many types for missing artifacts
            raise RegistryError(
                f"model {self.name!r} version {number}: cannot download its artifacts: {err}"
            ) from err
        return lmrec_model_dir(Path(local))


@contextlib.contextmanager
def _tracking_uri(mlflow: Any, uri: str) -> Iterator[None]:
    """Point MLflow's process-wide URIs at ``uri`` for a block, then restore them.

    ``mlflow.set_tracking_uri`` also writes ``MLFLOW_TRACKING_URI`` into the environment,
    which every later subprocess would inherit; a registry lookup must not leave that behind.
    """
    saved_env = os.environ.get("MLFLOW_TRACKING_URI")
    saved = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(saved[0])
        mlflow.set_registry_uri(saved[1])
        if saved_env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = saved_env


def lmrec_model_dir(mlflow_model: Path) -> Path:
    """The lmrec model directory inside a downloaded MLflow pyfunc model."""
    mlmodel = mlflow_model / "MLmodel"
    try:
        flavors = yaml.safe_load(mlmodel.read_text())["flavors"]
        relative = flavors["python_function"]["artifacts"]["model"]["path"]
    except (OSError, yaml.YAMLError, KeyError, TypeError) as err:
        raise RegistryError(f"{mlmodel}: not an lmrec pyfunc model ({err})") from err
    model_dir = mlflow_model / relative
    if not (model_dir / "config.json").is_file():
        raise RegistryError(f"{model_dir}: the registered model has no config.json")
    return model_dir
