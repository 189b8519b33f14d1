"""A benchmark's own copy of the repository: every file git tracks or would track (not
``data/`` or ``artifacts/``), so the stages run exactly as ``dvc repro`` runs them here
without touching this checkout. Standard library only."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


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
