"""The lmrec_retrain gate task's verdict (dags/gate.sh), run as the task runs it.

The script runs under the DAG's own prologue (``_lmrec_common.PROLOGUE``: strict mode,
the venv's bin first on PATH, the workspace) with the real ``dvc repro`` on a workspace
whose ``gate`` stage stands in for ``lmrec gate`` with the same contract: it writes
``gate.json`` on a pass (exit 0) and on a refusal (exit 4), and nothing on a crash. One
case puts a ``dvc`` in front that words its failure report differently (a DVC release
may), with the same exit status and files: the verdict must not change.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DVC = Path(sys.executable).parent / "dvc"
sys.path.insert(0, str(REPO / "dags"))
from _lmrec_common import PROLOGUE  # noqa: E402  (standard library only)

GATE_SH = (REPO / "dags" / "gate.sh").read_text()

STAND_IN = """import json, os, sys
mode = os.environ["GATE_MODE"]
if mode == "crash":
    sys.exit("error: comparison.json: not found")
passed = mode == "pass"
report = {"passed": passed, "exit_code": 0 if passed else 4, "checks": []}
os.makedirs("artifacts/gate", exist_ok=True)
json.dump(report, open("artifacts/gate/gate.json", "w"))
sys.exit(0 if passed else 4)
"""
DVC_YAML = """stages:
  gate:
    cmd: python gate_stand_in.py
    deps: [gate_stand_in.py]
    outs:
      - artifacts/gate/gate.json:
          cache: false
"""
REWORDED_DVC = f"""#!/bin/bash
# the real dvc and its exit status, its messages reworded ("exited with N" -> "returned status N")
set -o pipefail
{DVC} "$@" 2>&1 | sed 's/exited with/returned status/'
"""


@pytest.fixture()
def workspace(tmp_path) -> Path:
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "gate_stand_in.py").write_text(STAND_IN)
    (ws / "dvc.yaml").write_text(DVC_YAML)
    for cmd in (["git", "init", "-q"], [str(DVC), "init", "-q"]):
        subprocess.run(cmd, cwd=ws, check=True, capture_output=True)
    return ws


def run_gate_task(ws: Path, mode: str, reworded: bool = False) -> subprocess.CompletedProcess:
    """The gate task's script in ``ws``, with a venv whose bin holds python and dvc."""
    venv_bin = ws.parent / "venv" / "bin"
    venv_bin.mkdir(parents=True, exist_ok=True)
    for name in ("python", "dvc"):
        (venv_bin / name).unlink(missing_ok=True)
    (venv_bin / "python").symlink_to(sys.executable)
    if reworded:
        (venv_bin / "dvc").write_text(REWORDED_DVC)
        (venv_bin / "dvc").chmod(0o755)
    else:
        (venv_bin / "dvc").symlink_to(DVC)
    env = {
        **os.environ,
        "LMREC_VENV": str(venv_bin.parent),
        "LMREC_WORKSPACE": str(ws),
        "LMREC_WORKDIRS": "shared",
        "LMREC_FORCE": "--force",
        "GATE_MODE": mode,
    }
    return subprocess.run(
        ["bash", "-c", PROLOGUE + GATE_SH], cwd=ws, env=env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip


def last_line(done: subprocess.CompletedProcess) -> str:
    lines = done.stdout.strip().splitlines()
    return lines[-1] if lines else ""


@pytest.mark.parametrize(("mode", "verdict"), [("pass", "passed"), ("refuse", "refused")])
def test_pass_and_refusal_are_verdicts(workspace, mode, verdict):
    done = run_gate_task(workspace, mode)
    assert done.returncode == 0, done.stdout + done.stderr
    assert last_line(done) == verdict


def test_refusal_is_read_from_gate_json_not_from_dvc_wording(workspace):
    done = run_gate_task(workspace, "refuse", reworded=True)
    assert "returned status 4" in done.stdout  # the reworded report reached the task
    assert done.returncode == 0, done.stdout + done.stderr
    assert last_line(done) == "refused"


def test_a_crash_fails_the_task(workspace):
    done = run_gate_task(workspace, "crash")
    assert done.returncode != 0
    assert last_line(done) not in ("passed", "refused")


def test_a_stale_refusal_does_not_stand_for_a_failed_run(workspace):
    """A refusal left from an earlier run, then a run where DVC fails before the stage
    runs (dvc.yaml does not parse): the task fails; the old gate.json is no verdict."""
    assert last_line(run_gate_task(workspace, "refuse")) == "refused"
    assert json.loads((workspace / "artifacts/gate/gate.json").read_text())["passed"] is False
    (workspace / "dvc.yaml").write_text(DVC_YAML.replace("cmd:", "command:"))
    done = run_gate_task(workspace, "refuse")
    assert done.returncode != 0, done.stdout + done.stderr
    assert last_line(done) not in ("passed", "refused")
