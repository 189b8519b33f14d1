"""One stage command at a time per workspace: the pipeline lock (``lmrec.locking``).

A process holding the workspace's lock stands in for a running retrain stage (every
``lmrec <stage>`` takes it, under ``dvc repro`` or an Airflow task alike). A stage command
started meanwhile, a manual one or the monitor DAG's ``lmrec drift``, waits for it, and past
``$LMREC_PIPELINE_LOCK_WAIT_S`` fails with a message naming the holder, before it reads or
writes anything. Real processes, the real CLI.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from lmrec.cli.dvc_stages import stage_argv

LMREC = str(Path(sys.executable).parent / "lmrec")
TINY = str(Path(__file__).resolve().parents[2] / "profiles" / "tiny.yaml")
DVC_YAML = Path(__file__).resolve().parents[2] / "dvc.yaml"
#: the validate stage as dvc.yaml runs it (relative paths: the test's workspace)
VALIDATE = stage_argv("validate", dvc_yaml=DVC_YAML)[1:]
HOLD = """import sys, time
from lmrec.locking import pipeline_lock
with pipeline_lock():
    print("held", flush=True)
    time.sleep(float(sys.argv[1]))
"""


def hold(ws: Path, seconds: float) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(seconds)], cwd=ws, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def lmrec(ws: Path, *args: str, wait_s: float) -> subprocess.CompletedProcess:
    env = {**os.environ, "LMREC_PIPELINE_LOCK_WAIT_S": str(wait_s)}
    return subprocess.run(
        [LMREC, *args], cwd=ws, env=env, capture_output=True, text=True, timeout=120
    )


def test_stage_commands_refuse_to_run_under_another(tmp_path):
    holder = hold(tmp_path, 60)
    try:
        manual = lmrec(tmp_path, *VALIDATE, wait_s=0.5)
        monitor = lmrec(tmp_path, "drift", "--feedback", "feedback.db", wait_s=0.5)
        usage = lmrec(tmp_path, "validate", "--help", wait_s=0.5)  # reads nothing: no lock
    finally:
        holder.kill()
        holder.wait()
    for done in (manual, monitor):
        assert done.returncode == 1, done.stdout + done.stderr
        assert "the pipeline workspace" in done.stderr
        assert f"held by pid {holder.pid}" in done.stderr
    assert usage.returncode == 0 and "--interactions" in usage.stdout
    assert not (tmp_path / "artifacts" / "validation").exists()  # nothing was written
    assert not (tmp_path / "artifacts" / "monitor").exists()


def test_a_stage_command_waits_for_the_holder_to_finish(tmp_path):
    holder = hold(tmp_path, 1.5)
    started = time.monotonic()
    preprocess = stage_argv("preprocess", "--params", str(TINY), dvc_yaml=DVC_YAML)[1:]
    done = lmrec(tmp_path, *preprocess, wait_s=60)
    holder.wait()
    assert time.monotonic() - started >= 1.0  # it waited for the lock...
    assert done.returncode == 2, done.stdout + done.stderr  # ...then ran: no input data here
    assert "data/interactions.parquet" in done.stderr


def test_an_unwritable_lock_file_is_a_clear_error(tmp_path):
    (tmp_path / "artifacts").write_text("a file where the folder should be")
    done = lmrec(tmp_path, *VALIDATE, wait_s=0)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "cannot open the lock file of the pipeline workspace" in done.stderr
