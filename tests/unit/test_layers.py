"""The layering rules of docs/architecture.md, checked on the source.

- Only ``lmrec.cli`` imports ``lmrec.stages``: serving, monitoring, models... never reach up
  into a stage, and a stage never imports another stage. What one stage hands the next goes
  through files whose names and formats ``lmrec.artifacts`` owns, at paths ``dvc.yaml``
  passes on the command line (DVC's example-get-started: stages never import each other).
- ``lmrec.artifacts`` and ``lmrec.exit_codes`` sit at the bottom: they import no stage,
  no serving and no model code at run time.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGE = SRC / "lmrec"
MODULES = sorted(p for p in PACKAGE.rglob("*.py") if "egg-info" not in str(p))


def _module(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, runtime_only: bool = False) -> set[str]:
    """Every ``lmrec`` module named by an import in ``path`` (function-level included)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    skipped: set[int] = set()
    if runtime_only:
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING":
                skipped |= {id(n) for child in node.body for n in ast.walk(child)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return {m for m in found if m == "lmrec" or m.startswith("lmrec.")}


def _stage_imports(path: Path) -> set[str]:
    return {m for m in _imports(path) if m == "lmrec.stages" or m.startswith("lmrec.stages.")}


def test_the_walk_sees_the_cli_import_the_stages():
    assert "lmrec.stages.evaluate" in _stage_imports(PACKAGE / "cli" / "pipeline.py")


@pytest.mark.parametrize("path", MODULES, ids=lambda p: _module(p))
def test_only_the_cli_imports_a_stage(path):
    module = _module(path)
    if module == "lmrec.cli" or module.startswith("lmrec.cli."):
        return
    found = _stage_imports(path)
    if module.startswith("lmrec.stages."):  # a stage may import its own package, no sibling
        found = {m for m in found if m != "lmrec.stages" and not m.startswith(f"{module}.")}
        found.discard(module)
    assert not found, (
        f"{path.relative_to(SRC)} imports {sorted(found)}: read files through lmrec.artifacts"
    )


@pytest.mark.parametrize("name", ["artifacts", "exit_codes", "io"])
def test_the_bottom_layer_imports_nothing_above_it(name):
    allowed = {"lmrec", "lmrec.io", "lmrec.io.DataError", "lmrec.exit_codes"}
    found = _imports(PACKAGE / f"{name}.py", runtime_only=True)
    above = {m for m in found if m.split(".")[0:2] != ["lmrec", "io"]} - allowed
    above = {m for m in above if not m.startswith(("lmrec.exit_codes", "lmrec.io"))}
    assert not above, f"src/lmrec/{name}.py imports {sorted(above)} at run time"
