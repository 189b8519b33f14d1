"""``dvc.yaml`` is the one source of the stages' paths.

Every path option of every stage command is given by the stage's ``cmd`` in ``dvc.yaml``,
and none has a default of its own in the CLI (``--params`` excepted: DVC's own default
params file, ``params.yaml``), so no path is spelled in two places.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import typer
import yaml

from lmrec.cli import app

REPO = Path(__file__).resolve().parents[2]
STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
COMMANDS = typer.main.get_command(app).commands


def _path_options(command) -> list:
    """The command's options typed ``Path`` (typer's descriptor of each option's type)."""
    return [p for p in command.params if p.type_descriptor.annotation is Path]


def _given(cmd: str) -> set[str]:
    return {arg.split("=")[0] for arg in shlex.split(cmd) if arg.startswith("--")}


def test_every_stage_is_an_lmrec_command():
    for name, stage in STAGES.items():
        argv = shlex.split(stage["cmd"])
        assert argv[:2] == ["lmrec", name], (name, stage["cmd"])
        assert name in COMMANDS


@pytest.mark.parametrize("name", sorted(STAGES))
def test_dvc_yaml_gives_every_path_option_and_the_cli_defaults_none(name):
    command, given = COMMANDS[name], _given(STAGES[name]["cmd"])
    options = _path_options(command)
    assert options, f"lmrec {name} has no path options"
    for option in options:
        flag = max(option.opts, key=len)
        assert flag in given, f"dvc.yaml stage {name!r} does not pass {flag}"
        if flag == "--params":
            assert option.default == Path("params.yaml")
            continue
        assert option.default is None, f"lmrec {name} {flag} has a default: {option.default}"


def test_a_stage_without_its_paths_says_which_option_is_missing():
    from typer.testing import CliRunner

    result = CliRunner().invoke(app, ["embed", "--out", "x"])
    assert result.exit_code == 2
    assert "--split" in result.output
