"""The Bento and the MLflow pyfunc declare every distribution their code imports.

Two walks per artefact, from its entry module (``lmrec.serving.service``,
``lmrec.train.pyfunc_model``):

- static: every ``import`` in every lmrec module reachable from the entry, function-level
  (lazy) imports included; each third-party one must be declared directly
  (``lmrec.requirements.SERVING`` / ``PYFUNC``), and each declared one imported (or a
  documented ``RUNTIME_ONLY`` dependency);
- dynamic: a fresh interpreter imports those modules; every third-party top-level module
  that appears in ``sys.modules`` must come from a distribution that the declared ones
  pull in (their dependency closure in this environment).
"""

from __future__ import annotations

import ast
import functools
import importlib.metadata as md
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

from lmrec.config import ServeParams
from lmrec.io import LmrecError
from lmrec.requirements import (
    PYFUNC,
    RUNTIME_ONLY,
    SERVING,
    canonical,
    pinned,
    read_lock,
)
from lmrec.serving.bento import carried_serve_params, write_serve_params

REPO = Path(__file__).resolve().parents[2]
SRC = REPO / "src"
LOCK = REPO / "requirements" / "lmrec.lock.txt"
ARTEFACTS = {
    "bento": ("lmrec.serving.service", SERVING),
    "pyfunc": ("lmrec.train.pyfunc_model", PYFUNC),
}


def _source(module: str) -> Path | None:
    path = SRC.joinpath(*module.split("."))
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    return path.with_suffix(".py") if path.with_suffix(".py").is_file() else None


def _imports(path: Path, module: str) -> set[str]:
    """Every module name ``path`` imports, anywhere in it (``from a import b``: a and a.b)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, *([node.module] if node.module else [])])
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def static_walk(entry: str) -> tuple[set[str], dict[str, set[str]]]:
    """(lmrec modules reachable from ``entry``, third-party top-level name -> importers)."""
    seen: set[str] = set()
    third: dict[str, set[str]] = {}
    todo = [entry]
    while todo:
        module = todo.pop()
        path = _source(module)
        if module in seen or path is None:
            continue
        seen.add(module)
        parts = module.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # parent packages run too
        for name in _imports(path, module):
            top = name.split(".")[0]
            if top == "lmrec":
                todo.append(name)
            elif top != "__future__" and top not in sys.stdlib_module_names:
                third.setdefault(top, set()).add(module)
    return seen, third


#: imported by a dependency only when installed (``try: import``): top-level name -> by whom
OPTIONAL_IMPORTS = {
    "pydot": "torch.fx.passes.graph_drawer",
    "charset_normalizer": "numpy.f2py.crackfortran",
    "pynvml": "torch.cuda",
    "python_multipart": "starlette.formparsers (via mlflow's fastapi)",
    "orjson": "fastapi.responses (via mlflow)",
}


@functools.cache
def _packages_distributions() -> dict[str, list[str]]:
    return md.packages_distributions()


def distributions(top: str) -> list[str]:
    return [canonical(d) for d in _packages_distributions().get(top, [])]


def closure(names: set[str]) -> set[str]:
    """``names`` and everything they require here, transitively (markers and extras
    evaluated for this interpreter)."""
    seen: set[tuple[str, frozenset[str]]] = set()
    todo = [(canonical(n), frozenset()) for n in names]
    while todo:
        name, extras = todo.pop()
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        try:
            requires = md.distribution(name).requires or []
        except md.PackageNotFoundError:
            continue  # an optional dependency this environment does not have
        for line in requires:
            req = Requirement(line)
            envs = [{"extra": e} for e in extras] or [{"extra": ""}]
            if req.marker is None or any(req.marker.evaluate(env) for env in envs):
                todo.append((canonical(req.name), frozenset(req.extras)))
    return {name for name, _ in seen}


def undeclared_direct(entry: str, declared: tuple[str, ...]) -> dict[str, list[str]]:
    """Distributions lmrec's code imports but ``declared`` lacks -> the importing modules."""
    wanted = {canonical(n) for n in declared}
    _, third = static_walk(entry)
    missing = {}
    for top, importers in third.items():
        dists = distributions(top)
        assert dists, f"{top} (imported by {sorted(importers)}) is not installed here"
        if not wanted & set(dists):
            missing[dists[0]] = sorted(importers)
    return missing


def loaded_modules(modules: set[str]) -> set[str]:
    """Top-level names in ``sys.modules`` once a fresh interpreter imported ``modules``,
    minus those of a bare interpreter (site hooks)."""
    code = (
        "import importlib, json, sys\n"
        "for m in json.loads(sys.argv[1]): importlib.import_module(m)\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    )

    def run(names: list[str]) -> set[str]:
        done = subprocess.run(
            [sys.executable, "-c", code, json.dumps(names)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return set(json.loads(done.stdout.splitlines()[-1]))

    return run(sorted(modules)) - run([])


@pytest.mark.parametrize("artefact", sorted(ARTEFACTS))
def test_every_direct_import_is_declared_and_every_declared_one_used(artefact):
    entry, declared = ARTEFACTS[artefact]
    assert undeclared_direct(entry, declared) == {}
    _, third = static_walk(entry)
    imported = {d for top in third for d in distributions(top)}
    unused = {canonical(n) for n in declared} - imported - set(RUNTIME_ONLY)
    assert unused == set(), f"declared for the {artefact} but imported by none of its code"


def test_the_check_finds_a_missing_distribution():
    without_scipy = tuple(n for n in SERVING if n != "scipy")
    missing = undeclared_direct("lmrec.serving.service", without_scipy)
    assert set(missing) == {"scipy"}
    assert "lmrec.models.itemknn" in missing["scipy"]


@pytest.mark.slow
@pytest.mark.parametrize("artefact", sorted(ARTEFACTS))
def test_every_loaded_module_comes_with_the_declared_distributions(artefact):
    entry, declared = ARTEFACTS[artefact]
    lmrec_modules, _ = static_walk(entry)
    provided = closure(set(declared))
    orphans = {}
    for top in loaded_modules(lmrec_modules) - {"lmrec", *OPTIONAL_IMPORTS}:
        dists = distributions(top)
        if dists and not provided & set(dists):
            orphans[top] = dists
    assert orphans == {}, f"loaded by the {artefact}, installed by none of its requirements"


def test_the_lock_pins_every_declared_distribution():
    versions = read_lock(LOCK)
    for names in (SERVING, PYFUNC):
        lines = pinned(names, versions, str(LOCK))
        assert len(lines) == len(names) and all("==" in line for line in lines)
    assert f"torch=={versions['torch']}" == "torch==2.13.0"


def test_bad_locks_are_clear_errors(tmp_path):
    with pytest.raises(LmrecError, match="not found"):
        read_lock(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(LmrecError, match="no `name==version` lines"):
        read_lock(tmp_path / "empty.txt")
    with pytest.raises(LmrecError, match="pins no version of scipy"):
        pinned(["numpy", "scipy"], {"numpy": "2.0"}, "a.txt")
    assert read_lock(LOCK)["pyyaml"]  # PyYAML==..., compared by canonical name


def test_the_bentofile_leaves_the_requirements_to_lmrec_package():
    config = yaml.safe_load((REPO / "bentofile.yaml").read_text())
    assert not {"packages", "requirements_txt"} & set(config["python"])
    assert "lmrec/serving/serve_params.json" in config["include"]


def test_a_bentofile_that_lists_packages_is_refused(tmp_path):
    from lmrec.stages.package import build_bento

    bad = tmp_path / "bentofile.yaml"
    bad.write_text(yaml.safe_dump({"service": "x:Y", "python": {"packages": ["numpy"]}}))
    with pytest.raises(LmrecError, match="written by lmrec package"):
        build_bento(bad, [], tmp_path, "v1", ServeParams(), ["numpy==2.0"])


def test_serve_params_round_trip_through_the_bento_file(tmp_path):
    serve = ServeParams(max_k=7, challenger_share=0.25)
    path = write_serve_params(serve, tmp_path / "lmrec")
    assert path == tmp_path / "lmrec" / "serving" / "serve_params.json"
    assert carried_serve_params(path) == serve
    assert carried_serve_params(tmp_path / "none.json") is None
    path.write_text(json.dumps({"max_k": 7, "typo": 1}))
    with pytest.raises(LmrecError, match="not the serve params"):
        carried_serve_params(path)
