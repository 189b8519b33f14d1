"""A benchmark's own copy of the repository: every file git tracks or would track (not
``data/`` or ``artifacts/``), so the stages run exactly as ``dvc repro`` runs them here
without touching this checkout. Standard library only."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import IO

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def copy_repository(workspace: Path) -> None:
    """Copy the working tree's tracked and untracked-but-not-ignored files into ``workspace``."""
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for name in files:
        if (REPO / name).is_file() and not name.startswith(("data/", "artifacts/")):
            target = workspace / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, target)


def start_service(workspace: Path, env: dict[str, str], port: int, log: IO) -> subprocess.Popen:
    """``lmrec serve`` on ``port`` in ``workspace``, in its own session (stop it with
    ``os.killpg(proc.pid, SIGTERM)``), its output to ``log``."""
    return subprocess.Popen(
        [str(BIN / "lmrec"), "serve", "--port", str(port)],
        cwd=workspace,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
