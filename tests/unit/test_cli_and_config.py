"""The command line explains itself, and params are typed and strict."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from lmrec.cli import app
from lmrec.config import load_params
from lmrec.io import LmrecError

REPO = Path(__file__).resolve().parents[2]
COMMANDS = ["ingest", "validate", "preprocess", "embed"]


def test_top_level_help_lists_every_stage():
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    for name in COMMANDS:
        assert name in result.output


@pytest.mark.parametrize("name", COMMANDS)
def test_every_option_has_help_text(name):
    command = typer.main.get_command(app).commands[name]
    assert command.help and len(command.help) > 20
    for param in command.params:
        assert getattr(param, "help", None), f"lmrec {name} {param.opts}: no help text"
    result = CliRunner().invoke(app, [name, "--help"])
    assert result.exit_code == 0
    for param in command.params:
        assert param.opts[0] in result.output


@pytest.mark.parametrize("path", ["params.yaml", "profiles/tiny.yaml"])
def test_committed_params_files_load(path):
    params = load_params(REPO / path)
    assert params.preprocess.min_user_interactions >= 1


def test_unknown_key_is_rejected_with_its_path(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("preprocess:\n  tiebreak_sed: 1\n")
    with pytest.raises(LmrecError, match=r"preprocess\.tiebreak_sed: Extra inputs"):
        load_params(bad)


def test_bad_value_is_rejected(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("validate:\n  value_min: 5.0\n  value_max: 1.0\n")
    with pytest.raises(LmrecError, match="value_min must be <= value_max"):
        load_params(bad)


def test_missing_params_file_is_a_clear_cli_error(tmp_path):
    args = ["--interactions", "i.parquet", "--items", "t.parquet", "--out", str(tmp_path)]
    result = CliRunner().invoke(app, ["preprocess", "--params", str(tmp_path / "nope.yaml"), *args])
    assert result.exit_code == 1
    assert "nope.yaml: params file not found" in result.output
