"""A ``dvc.yaml`` stage's command line, for running one stage by hand with other paths.

``dvc.yaml`` is the one source of the stages' paths (their CLI options have no defaults);
``stage_argv("refit", "--out", "refit-b")`` is the refit stage's command as ``dvc repro``
runs it, with ``--out`` replaced: what tests and benchmarks run instead of restating paths.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import yaml

from lmrec.io import LmrecError


def _options(tokens: list[str]) -> dict[str, list[str]]:
    """``--flag value`` pairs and bare flags, keyed by the flag without ``--`` / ``--no-``."""
    found: dict[str, list[str]] = {}
    i = 0
    while i < len(tokens):
        flag = tokens[i]
        if not flag.startswith("--"):
            raise LmrecError(f"expected an option, got {flag!r} in {shlex.join(tokens)!r}")
        key = flag[2:].removeprefix("no-").split("=")[0]
        if "=" not in flag and i + 1 < len(tokens) and not tokens[i + 1].startswith("--"):
            found[key] = [flag, tokens[i + 1]]
            i += 2
        else:
            found[key] = [flag]
            i += 1
    return found


def stage_names(dvc_yaml: Path | str = "dvc.yaml") -> list[str]:
    """The stages ``dvc_yaml`` declares, in its order."""
    return list(yaml.safe_load(Path(dvc_yaml).read_text()).get("stages", {}))


def stage_argv(stage: str, *overrides: str, dvc_yaml: Path | str = "dvc.yaml") -> list[str]:
    """``["lmrec", stage, ...]`` as ``dvc_yaml`` runs the stage, ``overrides`` (options, each
    with its value) replacing the stage's own or added to them.

    Raises:
        LmrecError: ``dvc_yaml`` has no such stage, or its command is not ``lmrec <stage>``.
    """
    stages = yaml.safe_load(Path(dvc_yaml).read_text()).get("stages", {})
    if stage not in stages:
        raise LmrecError(f"{dvc_yaml}: no stage {stage!r} (stages: {', '.join(stages)})")
    argv = shlex.split(stages[stage]["cmd"])
    if argv[:2] != ["lmrec", stage]:
        raise LmrecError(f"{dvc_yaml}: stage {stage!r} runs {argv[:2]}, not lmrec {stage}")
    merged = {**_options(argv[2:]), **_options(list(overrides))}
    return ["lmrec", stage, *(token for option in merged.values() for token in option)]
