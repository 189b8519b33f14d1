"""What killed atomic writers leave beside an output is swept by the next writer."""

from __future__ import annotations

import os
import subprocess
import sys

from lmrec.io import atomic_dir


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_dead_writers_temporaries_and_their_nested_swaps_are_swept(tmp_path):
    """A kill inside ``model.save(tmp)`` (an ``atomic_dir`` onto the directory an outer
    ``atomic_dir`` yielded) leaves ``..model.<pid>.<random>.tmp.old`` beside the outer
    temporary; both go when the dead pid's next writer runs. A live pid's are kept."""
    dead, alive = _dead_pid(), os.getpid()
    left = [f".model.{dead}.abc123.tmp", f"..model.{dead}.abc123.tmp.old"]
    for name in left:
        (tmp_path / name).mkdir()
        (tmp_path / name / "weights.safetensors").write_bytes(b"partial")
    (tmp_path / f".model.{dead}.def456.tmp").write_bytes(b"partial file")
    kept = tmp_path / f".other.{alive}.ghi789.tmp"
    kept.mkdir()
    with atomic_dir(tmp_path / "model") as out:
        (out / "config.json").write_text("{}")
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted(["model", kept.name]), names
    assert (tmp_path / "model" / "config.json").read_text() == "{}"
