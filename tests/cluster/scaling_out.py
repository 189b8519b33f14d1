"""The README's scaling-out steps, as the cluster test runs them.

The fenced ``bash`` block of README.md's "Orchestration and scaling out" section is the one
source of the commands: tests/cluster/test_cluster.py runs them, exactly as written, in a
checkout, and tests/unit/test_scaling_out_readme.py checks (fast) that the block still has
the shape the cluster test relies on. Standard library only.
"""

from __future__ import annotations

import re
from pathlib import Path

SECTION = "## Orchestration and scaling out"
#: printed between two steps by ``script``: ``<MARK> <step index | end> <unix time>``
MARK = "@@lmrec-step"


def block(readme: Path) -> str:
    """The first fenced ``bash`` block of the section."""
    text = readme.read_text()
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    section = text[start : end if end != -1 else None]
    found = re.search(r"^```bash\n(.*?)^```$", section, re.M | re.S)
    if found is None:
        raise ValueError(f"{readme}: no ```bash block in {SECTION!r}")
    return found.group(1)


def steps(readme: Path) -> list[str]:
    """The block's commands, one per step: a line and its ``\\`` continuations, verbatim
    (trailing comments included); lines that are only a comment belong to no step."""
    found: list[str] = []
    continued = False
    for line in block(readme).splitlines():
        if continued:
            found[-1] += "\n" + line
        elif line.strip() and not line.lstrip().startswith("#"):
            found.append(line)
        continued = line.rstrip().endswith("\\")
    return found


def script(commands: list[str]) -> str:
    """A bash script running ``commands`` in order in one shell (so an ``eval`` of the
    cluster's environment holds for the later ones), stopping at the first failure, with a
    timestamped ``MARK`` line before each."""
    # each mark on a line of its own, also after an output without a final newline (curl)
    mark = "printf '\\n%s %s %s\\n' " + MARK + ' {} "$(date +%s.%N)"'
    lines = ["set -eo pipefail"]
    for index, command in enumerate(commands):
        lines += [mark.format(index), command]
    lines.append(mark.format("end"))
    return "\n".join(lines) + "\n"


def outputs(log: str) -> tuple[dict[int, str], dict[int, float]]:
    """Each step's output (blank lines dropped) and seconds, from the output of ``script``."""
    texts: dict[int, str] = {}
    seconds: dict[int, float] = {}
    current, since = None, 0.0
    for line in log.splitlines():
        if line.startswith(MARK + " "):
            _, index, stamp = line.split()
            if current is not None:
                seconds[current] = float(stamp) - since
            current = None if index == "end" else int(index)
            since = float(stamp)
            if current is not None:
                texts[current] = ""
        elif current is not None and line.strip():
            texts[current] += line + "\n"
    return texts, seconds
