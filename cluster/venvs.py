"""Virtualenvs made from a requirements file alone: the environment a Bento declares.

The cluster serves the champion's Bento from one (``cluster.py serve``) and the fresh-env
tests (tests/service/test_fresh_envs.py) load the Bento and the MLflow pyfunc in one, so a
run of both builds each environment once. They are cached under ``$LMREC_TEST_VENVS``
(default ``~/.cache/lmrec-test-venvs``) by a hash of the requirements and the Python
version: the first use installs them (minutes), later ones reuse them. Every requirement
must be pinned and torch must be 2.13.0 (the CPU wheel this machine has) before pip runs.
Standard library only.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

VENV_CACHE = Path(os.environ.get("LMREC_TEST_VENVS", Path.home() / ".cache/lmrec-test-venvs"))
#: the interpreter the calling virtualenv was made from (python3.11), for the fresh ones
BASE_PYTHON = (
    Path(sys.base_prefix) / "bin" / f"python{sys.version_info.major}.{sys.version_info.minor}"
)
PIN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(\[[^\]]*\])?==[^\s;]+$")
TORCH = "torch==2.13.0"
PIP_TIMEOUT_S = 1800


class VenvError(RuntimeError):
    """A requirements file that cannot make a fresh environment, or a failed install."""


def requirement_lines(path: Path) -> list[str]:
    """The requirements of ``path``, comments and blank lines dropped."""
    lines = [ln.split("#")[0].strip() for ln in path.read_text().splitlines()]
    return [ln for ln in lines if ln]


def check_pinned(path: Path) -> list[str]:
    """Every requirement of ``path`` is ``name==version`` and torch is 2.13.0: pip must
    never resolve an unpinned (CUDA, GBs) torch. Returns the requirements."""
    lines = requirement_lines(path)
    loose = [ln for ln in lines if not PIN.match(ln)]
    if loose:
        raise VenvError(f"{path}: not pinned: {loose}")
    torch = [ln for ln in lines if ln.split("==")[0].lower() == "torch"]
    if torch != [TORCH]:
        raise VenvError(f"{path}: torch must be pinned to {TORCH.split('==')[1]}, got {torch}")
    return lines


def clean_env() -> dict[str, str]:
    """The caller's environment without what would leak its own virtualenv into another."""
    drop = {"PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME"}
    return {k: v for k, v in os.environ.items() if k not in drop}


def fresh_venv(requirements: Path) -> Path:
    """A virtualenv with exactly ``requirements`` installed, cached by their hash (built
    under a lock: another process may be building the same one)."""
    lines = check_pinned(requirements)
    key = hashlib.sha256("\n".join([sys.version, *lines]).encode()).hexdigest()[:16]
    venv = VENV_CACHE / key
    VENV_CACHE.mkdir(parents=True, exist_ok=True)
    with (VENV_CACHE / f"{key}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (venv / ".complete").is_file():
            return venv
        shutil.rmtree(venv, ignore_errors=True)
        started = time.monotonic()
        subprocess.run([str(BASE_PYTHON), "-m", "venv", str(venv)], check=True, env=clean_env())
        pip = [str(venv / "bin/python"), "-m", "pip", "install", "--no-input", "-r"]
        done = subprocess.run(
            [*pip, str(requirements)],
            capture_output=True,
            text=True,
            timeout=PIP_TIMEOUT_S,
            env=clean_env(),
        )
        if done.returncode != 0:
            raise VenvError(f"pip install failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
        (venv / "requirements.txt").write_text("\n".join(lines) + "\n")
        (venv / ".complete").write_text(f"{time.monotonic() - started:.0f} s\n")
        print(f"[fresh-env] built {venv} in {time.monotonic() - started:.0f} s", file=sys.stderr)
    return venv
