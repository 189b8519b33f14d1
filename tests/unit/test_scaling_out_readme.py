"""README.md's scaling-out block keeps the shape the cluster test runs it by.

tests/cluster/test_cluster.py runs the block's commands as written (tests/cluster/
scaling_out.py); this fast check fails when an edit of the README would break that run
(or make it skip a step) before the slow test gets to it.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location(
    "scaling_out", REPO / "tests" / "cluster" / "scaling_out.py"
)
scaling_out = importlib.util.module_from_spec(spec)
spec.loader.exec_module(scaling_out)


@pytest.fixture(scope="module")
def commands() -> list[str]:
    return [c.split("  #")[0].strip() for c in scaling_out.steps(REPO / "README.md")]


def test_the_block_starts_the_cluster_runs_serves_and_stops_it(commands):
    assert commands[0] == "make cluster-up"
    assert commands[-1] == "make cluster-down"  # the test's teardown: it must come last
    order = [
        next(i for i, c in enumerate(commands) if needle in c)
        for needle in ("cluster.py env", "airflow_api.py trigger lmrec_retrain", "cluster-serve")
    ]
    assert order == sorted(order)
    trigger = commands[order[1]]
    assert "--wait" in trigger and '"workdirs": "per-task"' in trigger
    request = next(c for c in commands[order[2] :] if "/recommend" in c)
    assert request.startswith('curl -s -X POST "$LMREC_SERVE_URL/recommend"')


def test_every_make_target_of_the_block_exists(commands):
    targets = set(re.findall(r"^([a-z][a-z-]*):", (REPO / "Makefile").read_text(), re.M))
    used = {c.split()[1] for c in commands if c.startswith("make ")}
    assert used and used <= targets, used - targets


def test_every_step_is_valid_bash():
    for command in scaling_out.steps(REPO / "README.md"):
        done = subprocess.run(["bash", "-n", "-c", command], capture_output=True, text=True)
        assert done.returncode == 0, (command, done.stderr)


def test_the_script_marks_each_step_and_times_it():
    log = scaling_out.script(["echo one", "echo two \\\n  three", "printf '{}'"])
    done = subprocess.run(["bash", "-c", log], capture_output=True, text=True, check=True)
    texts, seconds = scaling_out.outputs(done.stdout)
    assert texts == {0: "one\n", 1: "two three\n", 2: "{}\n"}  # no final newline: still split
    assert set(seconds) == {0, 1, 2} and all(s >= 0 for s in seconds.values())
