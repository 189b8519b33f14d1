"""Does a refactor change what the pipeline computes? The tiny pipeline at two revisions.

For each revision: a fresh workspace with that revision's ``src/``, ``dvc.yaml``,
``bentofile.yaml``, ``requirements/`` and ``profiles/tiny.yaml`` as ``params.yaml``; ``lmrec
ingest --snapshot`` and ``dvc repro`` through ``register`` (the package stage needs a
BentoML store and proves nothing about numbers), each with its own MLflow SQLite store, the
revision's code first on ``PYTHONPATH``. Then every output file's SHA-256 is compared, and
the table says which are identical, which differ and which exist in one revision only.
Files that record wall times or run ids (``run.json``, ``history.csv``'s seconds, the
gate's latency) are expected to differ and are listed as such.

    python benchmarks/same_outputs.py --before 0d85286 --after HEAD \
        --out benchmarks/results/same_outputs.md
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
#: outputs that hold wall times, run ids or commit hashes: they differ between any two runs
VOLATILE = ("run.json", "history.csv", "gate/gate.json", "registration.json")
OUTPUTS = ("data", "artifacts/validation", "artifacts/preprocess", "artifacts/embed",
           "artifacts/train", "artifacts/evaluate", "artifacts/gate", "artifacts/refit",
           "artifacts/register")  # fmt: skip
SKIP_PARTS = ("data_docs", "checkpoints", "__pycache__")


def _checkout(revision: str, into: Path) -> None:
    """The revision's tracked files needed to run the pipeline, into ``into``."""
    into.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "archive", revision, "src", "dvc.yaml", "bentofile.yaml", "requirements",
         "profiles/tiny.yaml"],
        cwd=REPO, capture_output=True, check=True,
    ).stdout  # fmt: skip
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    shutil.move(into / "profiles" / "tiny.yaml", into / "params.yaml")


def _run(cmd: list[str], ws: Path, env: dict[str, str]) -> None:
    done = subprocess.run(cmd, cwd=ws, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(
            f"{' '.join(cmd)} failed in {ws}:\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
        )


def pipeline(revision: str, root: Path) -> tuple[Path, float]:
    """Run the tiny pipeline of ``revision`` in ``root/ws``; its workspace and seconds."""
    ws = root / "ws"
    _checkout(revision, ws)
    env = {
        **os.environ,
        "PYTHONPATH": str(ws / "src"),  # this revision's code before the editable install's
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "MLFLOW_TRACKING_URI": f"sqlite:///{ws}/mlflow.db",
        "BENTOML_HOME": str(root / "bentoml"),
    }
    env.pop("MLFLOW_REGISTRY_URI", None)
    started = time.monotonic()
    _run(["git", "init", "-q"], ws, env)
    _run([str(BIN / "dvc"), "init", "-q"], ws, env)
    _run(["lmrec", "ingest", "--snapshot"], ws, env)
    _run([str(BIN / "dvc"), "repro", "register"], ws, env)
    return ws, time.monotonic() - started


def digests(ws: Path) -> dict[str, str]:
    out = {}
    for top in OUTPUTS:
        for path in sorted((ws / top).rglob("*")):
            rel = path.relative_to(ws).as_posix()
            if path.is_file() and not any(part in rel for part in SKIP_PARTS):
                out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", required=True, help="git revision before the change")
    parser.add_argument("--after", default="HEAD", help="git revision after the change")
    parser.add_argument("--out", type=Path, help="write the Markdown table here too")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="lmrec-same-") as tmp:
        runs = {}
        for label, rev in (("before", args.before), ("after", args.after)):
            sha = subprocess.run(
                ["git", "rev-parse", "--short", rev], cwd=REPO, capture_output=True, text=True,
                check=True,
            ).stdout.strip()  # fmt: skip
            ws, seconds = pipeline(rev, Path(tmp) / label)
            runs[label] = (sha, digests(ws), seconds)
            print(f"{label} ({sha}): pipeline in {seconds:.0f} s", file=sys.stderr)
    (b_sha, before, b_s), (a_sha, after, a_s) = runs["before"], runs["after"]
    rows, counts = [], {"identical": 0, "differs": 0, "volatile": 0, "one side": 0}
    for rel in sorted(set(before) | set(after)):
        if rel not in before or rel not in after:
            verdict = f"only {'after' if rel in after else 'before'}"
            counts["one side"] += 1
        elif before[rel] == after[rel]:
            verdict = "identical"
            counts["identical"] += 1
        elif rel.endswith(VOLATILE):
            verdict = "differs (times / run ids: expected)"
            counts["volatile"] += 1
        else:
            verdict = "**differs**"
            counts["differs"] += 1
        rows.append(f"| `{rel}` | {verdict} |")
    lines = [
        f"# Tiny pipeline outputs: {b_sha} vs {a_sha}",
        "",
        f"`python benchmarks/same_outputs.py --before {args.before} --after {args.after}`: "
        f"ingest + `dvc repro register` on profiles/tiny.yaml, each revision's own code "
        f"({b_s:.0f} s and {a_s:.0f} s). " + ", ".join(f"{n} {k}" for k, n in counts.items()) + ".",
        "",
        "| file | before vs after |",
        "|---|---|",
        *rows,
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
