"""dvc.yaml declares the code each stage runs: its import closure inside ``lmrec``.

A stage's command is ``lmrec <name> ...``; ``src/lmrec/cli/`` dispatches it to the command
function ``<name>`` (``cli/pipeline.py``), which imports ``lmrec.stages.<name>`` (and
``lmrec.config``). From those roots every ``import lmrec.x`` / ``from lmrec.x import y`` is
followed statically (``ast``, function-level imports included, ``if TYPE_CHECKING:`` blocks
left out), with the ``__init__.py`` of every package on the way (importing ``lmrec.a.b`` runs
them).
A stage's ``deps`` must cover every file found (a folder dep covers what lies below it):
otherwise a change to that code would not rerun the stage. ``lmrec.cli`` itself is the
dispatcher every stage shares (option parsing, error display) and is not required.
"""

from __future__ import annotations

import ast
import shlex
from functools import cache
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
SRC = REPO / "src"
CLI = SRC / "lmrec" / "cli" / "pipeline.py"  # the stage commands
STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def module_file(module: str) -> Path | None:
    """``lmrec.a.b`` -> ``src/lmrec/a/b.py`` or ``src/lmrec/a/b/__init__.py`` (None: no such)."""
    base = SRC.joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(node: ast.AST):
    """Every Import/ImportFrom under ``node`` that runs at run time."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.Import | ast.ImportFrom):
            yield child
        elif isinstance(child, ast.If) and _is_type_checking(child):
            for other in child.orelse:
                yield from _import_nodes(ast.Module(body=[other], type_ignores=[]))
        else:
            yield from _import_nodes(child)


def imported_modules(node: ast.AST) -> set[str]:
    """The ``lmrec`` modules the imports under ``node`` load, parents included."""
    found: set[str] = set()
    for imp in _import_nodes(node):
        if isinstance(imp, ast.Import):
            names = [alias.name for alias in imp.names]
        else:
            assert imp.level == 0, "lmrec uses absolute imports only"
            base = imp.module or ""
            # `from lmrec.a import b`: b is a submodule or a name defined in lmrec.a
            names = [base] + [f"{base}.{alias.name}" for alias in imp.names]
        for name in names:
            if name != "lmrec" and not name.startswith("lmrec."):
                continue
            parts = name.split(".")
            for i in range(1, len(parts) + 1):  # importing a.b.c runs a and a.b first
                if module_file(".".join(parts[:i])) is not None:
                    found.add(".".join(parts[:i]))
    return found


@cache
def _parsed(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def closure(roots: set[str]) -> set[Path]:
    """The files of ``roots`` and of every lmrec module they import, transitively."""
    seen: set[str] = set()
    # importing lmrec.a.b runs lmrec/__init__.py and lmrec/a/__init__.py first
    todo = [".".join(r.split(".")[:i]) for r in roots for i in range(1, r.count(".") + 2)]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        if not _is_cli(module):
            todo.extend(imported_modules(_parsed(module_file(module))) - seen)
    return {module_file(m) for m in seen if not _is_cli(m)}


def _is_cli(module: str) -> bool:
    """The dispatcher every stage shares (see the module docstring): not followed."""
    return module == "lmrec.cli" or module.startswith("lmrec.cli.")


def entry_roots(cmd: str) -> set[str]:
    """The modules a stage command starts from: what the CLI command function imports,
    plus the CLI's own module-level lmrec imports (``python -m lmrec.x`` starts at lmrec.x)."""
    argv = shlex.split(cmd)
    if argv[:2] == ["python", "-m"]:
        return {argv[2]}
    assert argv[0] == "lmrec", f"unexpected stage command {cmd!r}"
    tree = _parsed(CLI)
    functions = {
        n.name: n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == argv[1]
    }
    assert argv[1] in functions, f"src/lmrec/cli/pipeline.py has no command function {argv[1]!r}"
    module_level = ast.Module(
        body=[n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)], type_ignores=[]
    )
    return imported_modules(functions[argv[1]]) | imported_modules(module_level)


def covered(path: Path, deps: list[str]) -> bool:
    rel = path.relative_to(REPO)
    return any(rel == Path(dep) or Path(dep) in rel.parents for dep in deps)


def test_the_walk_follows_imports_transitively_with_package_inits():
    files = {p.relative_to(SRC).as_posix() for p in closure({"lmrec.stages.gate"})}
    assert "lmrec/__init__.py" in files and "lmrec/stages/__init__.py" in files
    assert "lmrec/registry/gate.py" in files  # `from lmrec.registry import gate`
    assert "lmrec/config.py" in files and "lmrec/io.py" in files


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_deps_cover_the_code_it_imports(name):
    stage = STAGES[name]
    deps = [str(d) for d in stage.get("deps", [])]
    needed = closure(entry_roots(stage["cmd"]))
    missing = sorted(p.relative_to(REPO).as_posix() for p in needed if not covered(p, deps))
    assert not missing, (
        f"dvc.yaml stage {name!r} imports code its deps do not list: {', '.join(missing)}"
    )


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_code_deps_exist(name):
    deps = [str(d) for d in STAGES[name].get("deps", [])]
    stale = [d for d in deps if d.startswith("src/") and not (REPO / d).exists()]
    assert not stale, f"dvc.yaml stage {name!r} lists deps that do not exist: {stale}"


@pytest.mark.parametrize("params_file", ["params.yaml", "profiles/tiny.yaml"])
def test_stage_params_name_keys_that_exist(params_file):
    params = yaml.safe_load((REPO / params_file).read_text())
    unknown = []
    for name, stage in STAGES.items():
        for key in stage.get("params", []):
            node = params
            for part in str(key).split("."):
                if not isinstance(node, dict) or part not in node:
                    unknown.append(f"{name}: {key}")
                    break
                node = node[part]
    assert not unknown, f"dvc.yaml params not in {params_file}: {unknown}"


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_deps_list_no_code_the_stage_does_not_import(name):
    """An extra code dep reruns the stage for nothing when that code changes."""
    stage = STAGES[name]
    needed = closure(entry_roots(stage["cmd"]))
    code = [str(d) for d in stage.get("deps", []) if str(d).startswith("src/")]
    unused = [dep for dep in code if not any(covered(path, [dep]) for path in needed)]
    assert not unused, f"dvc.yaml stage {name!r} lists code it never imports: {unused}"
