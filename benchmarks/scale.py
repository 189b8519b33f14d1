"""Scale on one machine: the whole pipeline on synthetic logs of 1M, 3M and 10M interactions.

For each size (users and items grow with it: 20 interactions a user, 50 a item; 10M has
500k users and 200k items) a copy of the repository's files gets a synthetic log whose item
texts have a realistic length (title + ~50 words), then every stage runs as its own process, as
``dvc repro`` runs it (the commands of ``dvc.yaml``), with ``profiles/large.yaml`` (or
``--profile``) as params.yaml: generate (the synthetic source, written as parquet), ingest
(``lmrec ingest --source parquet``), validate, preprocess, embed, train, evaluate, gate,
refit, register, package, then ``lmrec serve`` answers one ``/recommend`` for a known user
and one for a posted history. Each stage's wall time and peak RSS (summed over its process
tree, sampled every 0.5 s with psutil) are recorded, with the training epoch time; the
growth exponent per stage is the least-squares slope of log(seconds) on log(interactions)
over the sizes from 1M up that finished it (the range the target is set on; the 100k and 300k
rows are end-to-end checks, their seconds mostly fixed costs).

A stage that runs past ``--stage-budget`` seconds or ``--memory-gb`` of RSS is stopped and
the size is reported as not finished, naming the stage and the reason: a size never
silently shrinks. The gate's quality thresholds are relaxed (every check ``min`` 0, latency
budget 10 s): this measures time and memory, not quality (benchmarks/quality.py does).

    nice -n 10 python benchmarks/scale.py --sizes 1M 3M --workspace /tmp/lmrec-scale

Writes (merging sizes already there) ``benchmarks/results/scale.{json,md}``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.workspace import copy_repository, start_service  # noqa: E402

BIN = Path(sys.executable).parent
SIZES = {"100k": 100_000, "300k": 300_000, "1M": 1_000_000, "3M": 3_000_000, "10M": 10_000_000}
PIPELINE = ("validate", "preprocess", "embed", "train", "evaluate", "gate", "refit")
PIPELINE += ("register", "package")
TEXT_WORDS = 40  # item description words: a short product blurb or synopsis (~60 tokens)
_FILLER = [
    "the",
    "a",
    "of",
    "and",
    "with",
    "for",
    "from",
    "into",
    "over",
    "after",
    "before",
    "under",
    "story",
    "world",
    "life",
    "people",
    "city",
    "night",
    "day",
    "family",
    "love",
    "war",
    "time",
    "young",
    "old",
    "new",
    "final",
    "secret",
    "dark",
    "light",
    "journey",
    "home",
    "road",
    "quest",
    "friend",
    "enemy",
    "power",
    "truth",
    "dream",
    "memory",
    "music",
    "game",
    "team",
    "school",
    "house",
    "river",
    "sea",
]


def shape(interactions: int) -> dict[str, int]:
    """Users and items for a log size: 20 interactions per user, 50 per item."""
    return {
        "n_interactions": interactions,
        "n_users": interactions // 20,
        "n_items": interactions // 50,
    }


def generate(args: argparse.Namespace) -> int:
    """The ``generate`` stage (run in its own process): synthetic tables as parquet."""
    sys.path.insert(0, str(REPO / "src"))
    from lmrec.config import SyntheticParams
    from lmrec.data import synthetic

    sizes = shape(args.interactions)
    params = SyntheticParams(n_topics=20, seed=7, **sizes)
    interactions, items, world = synthetic.generate(params)
    rng = np.random.default_rng(11)
    vocab = np.array(_FILLER)
    texts = []
    for text, topic in zip(items["text"], world.item_topic, strict=True):
        words = np.concatenate([world.topic_words[topic], vocab])
        texts.append(f"{text} " + " ".join(rng.choice(words, size=TEXT_WORDS)) + ".")
    items = items.assign(text=texts)
    args.out.mkdir(parents=True, exist_ok=True)
    interactions.to_parquet(args.out / "interactions.parquet", index=False)
    items.to_parquet(args.out / "items.parquet", index=False)
    return 0


def _params(workspace: Path, profile: Path, epochs: int | None) -> dict[str, Any]:
    """The profile as the workspace's params.yaml, the gate relaxed; returns what changed."""
    params = yaml.safe_load(profile.read_text())
    for check in params["gate"]["checks"]:
        for key in ("min", "min_ratio", "min_delta", "max", "max_ratio", "max_delta"):
            check.pop(key, None)
        check.update({"against": "value", "min": 0.0})
        check.pop("baselines", None)
    params["gate"]["latency"]["p95_ms"] = 10_000.0
    params["gate"]["max_nonfinite_share"] = 1.0
    if epochs is not None:
        params["train"]["sequential"]["epochs"] = epochs
    (workspace / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return {"profile": str(profile.relative_to(REPO)), "epochs": epochs, "gate": "relaxed"}


class Stage:
    """One stage as a process group: wall time, peak RSS of its tree, budgets enforced."""

    def __init__(self, name: str, cmd: str, workspace: Path, env: dict[str, str]) -> None:
        self.name, self.cmd, self.workspace, self.env = name, cmd, workspace, env

    def run(self, budget_s: float, memory_gb: float) -> dict[str, Any]:
        import psutil

        log_path = self.workspace / "logs" / f"{self.name}.log"
        log_path.parent.mkdir(exist_ok=True)
        with log_path.open("w") as log:
            start = time.perf_counter()
            proc = subprocess.Popen(
                self.cmd,
                shell=True,
                cwd=self.workspace,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            peak, reason = 0, None
            while proc.poll() is None:
                peak = max(peak, _tree_rss(psutil, proc.pid))
                elapsed = time.perf_counter() - start
                if elapsed > budget_s:
                    reason = f"ran past its time budget of {budget_s:.0f} s"
                elif peak > memory_gb * 2**30:
                    reason = f"peak RSS {peak / 2**30:.1f} GB passed the {memory_gb} GB budget"
                if reason:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                    break
                time.sleep(0.5)
            seconds = time.perf_counter() - start
        out = {"seconds": round(seconds, 1), "peak_rss_gb": round(peak / 2**30, 2)}
        if reason is None and proc.returncode != 0:
            tail = log_path.read_text()[-600:].strip().splitlines()[-3:]
            reason = f"exit code {proc.returncode}: " + " | ".join(tail)
        out["status"] = "ok" if reason is None else "not finished"
        if reason:
            out["reason"] = reason
        return out


def _tree_rss(psutil: Any, pid: int) -> int:
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += p.memory_info().rss
    return total


def _post(port: int, body: dict[str, Any]) -> tuple[dict[str, Any], float]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/recommend",
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json"},
    )
    start = time.perf_counter()
    with urllib.request.urlopen(request, timeout=120) as answer:
        payload = json.loads(answer.read())
    return payload, round((time.perf_counter() - start) * 1000, 1)


def serve_smoke(workspace: Path, env: dict[str, str], port: int, budget_s: float) -> dict:
    """``lmrec serve``; one /recommend for a known user and one for a posted history."""
    import pandas as pd

    raw = pd.read_parquet(workspace / "raw/interactions.parquet", columns=["user_id", "item_id"])
    user = str(raw["user_id"].iloc[0])
    history = raw.loc[raw["user_id"] == user, "item_id"].astype(str).tolist()[-10:]
    log = (workspace / "logs/serve.log").open("w")
    start = time.perf_counter()
    server = start_service(workspace, env, port, log)
    out: dict[str, Any] = {}
    try:
        while time.perf_counter() - start < budget_s:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(1)
        else:
            return {"status": "not finished", "reason": f"not ready within {budget_s:.0f} s"}
        out["ready_seconds"] = round(time.perf_counter() - start, 1)
        known, out["known_user_ms"] = _post(port, {"user_id": user, "k": 10})
        posted, out["history_ms"] = _post(port, {"history": history, "k": 10})
        out["known_user_items"] = len(known["items"])
        out["history_items"] = len(posted["items"])
        out["status"] = "ok" if known["items"] and posted["items"] else "not finished"
        if out["status"] != "ok":
            out["reason"] = "an answer had no items"
    except OSError as err:
        out.update(status="not finished", reason=f"request failed: {err}")
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
        log.close()
    return out


def run_size(label: str, args: argparse.Namespace, save: Any) -> dict[str, Any]:
    """Every stage of one size in a fresh workspace; stops at the first unfinished stage.
    ``save(result)`` is called after each stage, so a run stopped from outside keeps what
    it measured (marked as running)."""
    from lmrec.train.tracking import git_commit

    workspace = (args.workspace / label).resolve()
    shutil.rmtree(workspace, ignore_errors=True)
    workspace.mkdir(parents=True)
    copy_repository(workspace)
    result: dict[str, Any] = {**shape(SIZES[label]), "stages": {}, "running": True}
    result["code"] = git_commit(REPO)  # commit, +dirty for a changed tree
    result["date"] = time.strftime("%Y-%m-%d")
    result["params"] = _params(workspace, args.profile.resolve(), args.epochs)
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        # the workspace's copy of the package, not the editable install's live tree
        "PYTHONPATH": str(workspace / "src"),
        "BENTOML_HOME": str(workspace / "bentoml"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{workspace / 'mlflow.db'}",
        "LMREC_FEEDBACK_DB": str(workspace / "feedback.db"),
    }
    dvc_stages = yaml.safe_load((workspace / "dvc.yaml").read_text())["stages"]
    commands = {
        "generate": f"{sys.executable} benchmarks/scale.py generate "
        f"--interactions {SIZES[label]} --out raw",
        "ingest": "lmrec ingest --params params.yaml --source parquet "
        "--interactions raw/interactions.parquet --items raw/items.parquet --out data",
        **{name: dvc_stages[name]["cmd"] for name in PIPELINE},
    }
    for name, cmd in commands.items():
        print(f"[{label}] {name} ...", flush=True)
        stage = Stage(name, cmd, workspace, env).run(args.stage_budget, args.memory_gb)
        result["stages"][name] = stage
        print(f"[{label}] {name}: {stage}", flush=True)
        if stage["status"] != "ok":
            result["unfinished"] = {"stage": name, "reason": stage["reason"]}
            break
        save(result)
    else:
        _finish(label, workspace, env, args, result)
    result.pop("running")
    return result


def _finish(
    label: str, workspace: Path, env: dict[str, str], args: argparse.Namespace, result: dict
) -> None:
    """The epoch time from the training history, then the served smoke requests."""
    history = workspace / "artifacts/train/history.csv"
    if history.is_file():
        import pandas as pd

        epochs = pd.read_csv(history)
        if "epoch_seconds" in epochs:
            result["epoch_seconds"] = round(float(epochs["epoch_seconds"].mean()), 1)
            result["epochs_run"] = len(epochs)
    print(f"[{label}] serve ...", flush=True)
    result["serve"] = serve_smoke(workspace, env, args.port, args.stage_budget)
    if result["serve"]["status"] != "ok":
        result["unfinished"] = {"stage": "serve", "reason": result["serve"]["reason"]}


def compare(args: argparse.Namespace) -> dict[str, Any]:
    """The data stages on one synthetic log, the code of ``--before`` vs this working tree,
    run one after the other (same machine load, as far as a shared machine allows)."""
    root = (args.workspace / "compare").resolve()
    shutil.rmtree(root, ignore_errors=True)
    (root / "before").mkdir(parents=True)
    archive = subprocess.run(
        ["git", "archive", args.before, "src", "params.yaml"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(root / "before")], input=archive, check=True)
    data = root / "raw"
    subprocess.run(
        [sys.executable, str(REPO / "benchmarks/scale.py"), "generate"]
        + ["--interactions", str(args.interactions), "--out", str(data)],
        check=True,
    )
    commands = {  # each side with its own params.yaml (the validate/preprocess blocks agree)
        "generate": "{py} -c 'from lmrec.config import SyntheticParams as P; "
        "from lmrec.data import synthetic; "
        "synthetic.generate(P(n_topics=20, seed=7, "
        + ", ".join(f"{k}={v}" for k, v in shape(args.interactions).items())
        + "))'",
        "validate": "lmrec validate --params {params} --interactions "
        f"{data}/interactions.parquet"
        f" --items {data}/items.parquet --out {{out}}/validation",
        "preprocess": "lmrec preprocess --params {params} --interactions "
        f"{data}/interactions.parquet --items {data}/items.parquet --out {{out}}/preprocess",
    }
    out: dict[str, Any] = {"before": args.before}
    for name, cmd in commands.items():
        if name not in args.stages:
            continue
        for side, tree in (("before", root / "before"), ("after", REPO)):
            env = {
                **os.environ,
                "PYTHONPATH": str(tree / "src"),
                "PATH": f"{BIN}:{os.environ['PATH']}",
            }
            line = cmd.replace("{py}", sys.executable).replace("{out}", str(root / side))
            line = line.replace("{params}", str(tree / "params.yaml"))
            result = Stage(f"{name}-{side}", line, root, env).run(args.stage_budget, args.memory_gb)
            out.setdefault(name, {})[side] = result
            print(f"[compare] {name} {side}: {result}", flush=True)
    return out


def exponents(sizes: dict[str, dict[str, Any]], smallest: int = 1_000_000) -> dict[str, float]:
    """Per stage: slope of log(seconds) on log(interactions) over the sizes of at least
    ``smallest`` interactions that finished it."""
    names = dict.fromkeys(n for s in sizes.values() for n in s["stages"])
    out = {}
    for name in names:
        points = [
            (math.log(s["n_interactions"]), math.log(max(s["stages"][name]["seconds"], 0.1)))
            for s in sizes.values()
            if s["stages"].get(name, {}).get("status") == "ok" and s["n_interactions"] >= smallest
        ]
        if len(points) >= 2:
            x, y = np.array(points).T
            out[name] = round(float(np.polyfit(x, y, 1)[0]), 2)
    return out


def _short(commit: str) -> str:
    """A commit as its first 7 hex digits, keeping a ``+dirty`` mark."""
    head, plus, mark = commit.partition("+")
    return (head[:7] if len(head) == 40 else head) + plus + mark


def markdown(payload: dict[str, Any]) -> str:
    sizes = payload["sizes"]
    labels = [s for s in SIZES if s in sizes]
    names = list(dict.fromkeys(n for s in sizes.values() for n in s["stages"]))
    lines = [
        "# Scale: the whole pipeline on one machine",
        "",
        f"Machine: {payload.get('machine', '-')}. Command: `{payload.get('command', '-')}`. "
        f"Profile `{payload.get('profile', '-')}`; wall seconds and peak RSS (GB) of each "
        "stage's process "
        "tree; exponent = least-squares slope of log(seconds) on log(interactions) over the "
        "sizes from 1M up (the size table says which code and day each size ran).",
        "",
        "| stage | " + " | ".join(labels) + " | exponent |",
        "|---|" + "---|" * (len(labels) + 1),
    ]
    for name in names:
        cells = []
        for label in labels:
            st = sizes[label]["stages"].get(name)
            cells.append(
                "-"
                if st is None
                else (
                    f"{st['seconds']:.0f} s, "
                    + (f"{st['peak_rss_gb']:.1f} GB" if "peak_rss_gb" in st else "RSS not recorded")
                    + ("" if st["status"] == "ok" else " (not finished)")
                )
            )
        exponent = payload.get("exponents", {}).get(name, "-")
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {exponent} |")
    lines += [
        "",
        "| size | users | items | epoch s | serve (known user / history ms) | code, date "
        "| status |",
        "|---|---|---|---|---|---|---|",
    ]
    for label in labels:
        s = sizes[label]
        serve = s.get("serve", {})
        status = "finished"
        if s.get("running"):
            status = f"running (last stage done: {list(s['stages'])[-1]})"
        if "unfinished" in s:
            status = f"NOT finished: {s['unfinished']['stage']}: {s['unfinished']['reason']}"
        served = (
            f"{serve['known_user_ms']} / {serve['history_ms']}" if "history_ms" in serve else "-"
        )
        lines.append(
            f"| {label} | {s['n_users']} | {s['n_items']} | {s.get('epoch_seconds', '-')} "
            f"| {served} | {_short(s.get('code', 'not recorded'))}, {s.get('date', '-')} "
            f"| {status} |"
        )
    for label in ("1M", "3M", "10M"):
        if label not in sizes:
            lines += ["", f"{label}: not run."]
    for size, stages in payload.get("before_after", {}).items():
        lines += [
            "",
            f"Before/after at {int(size):,} interactions (the code of `{stages['before']}` vs "
            "this tree, run back to back):",
            "",
            "| stage | before | after |",
            "|---|---|---|",
        ]
        for name, sides in stages.items():
            if name != "before":
                b, a = sides["before"], sides["after"]
                lines.append(
                    f"| {name} | {b['seconds']:.0f} s, {b['peak_rss_gb']:.1f} GB "
                    f"| {a['seconds']:.0f} s, {a['peak_rss_gb']:.1f} GB |"
                )
    if payload.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {note}" for note in payload["notes"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="mode")
    gen = sub.add_parser("generate", help="(internal) the generate stage")
    gen.add_argument("--interactions", type=int, required=True)
    gen.add_argument("--out", type=Path, required=True)
    sub.add_parser("render", help="recompute the exponents, rewrite scale.md from scale.json")
    cmp = sub.add_parser("compare", help="validate/preprocess/generate at REV vs this tree")
    cmp.add_argument("--before", required=True, help="git revision of the 'before' code")
    cmp.add_argument("--interactions", type=int, default=SIZES["1M"])
    cmp.add_argument("--stages", nargs="+", default=["generate", "validate", "preprocess"])
    parser.add_argument("--sizes", nargs="+", choices=list(SIZES), default=["1M", "3M", "10M"])
    parser.add_argument("--workspace", type=Path, default=Path("/tmp/lmrec-scale"))
    parser.add_argument("--profile", type=Path, default=REPO / "profiles/large.yaml")
    parser.add_argument("--epochs", type=int, default=None, help="override train epochs")
    parser.add_argument("--stage-budget", type=float, default=3600.0, help="seconds a stage")
    parser.add_argument("--memory-gb", type=float, default=12.0, help="RSS budget a stage")
    parser.add_argument("--port", type=int, default=3917)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results")
    parser.add_argument("--note", action="append", help="a line for the notes (repeatable)")
    args = parser.parse_args(argv)
    if args.mode == "generate":
        return generate(args)
    json_path = args.out / "scale.json"
    payload = json.loads(json_path.read_text()) if json_path.is_file() else {"sizes": {}}
    if args.note:
        payload["notes"] = args.note
    if args.mode == "render":
        payload["exponents"] = exponents(payload["sizes"])
        json_path.write_text(json.dumps(payload, indent=2) + "\n")
        (args.out / "scale.md").write_text(markdown(payload))
        return 0
    if args.mode == "compare":
        entry = payload.setdefault("before_after", {}).setdefault(str(args.interactions), {})
        entry.update(compare(args))
        args.out.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(payload, indent=2) + "\n")
        (args.out / "scale.md").write_text(markdown(payload))
        return 0
    payload.update(
        machine=f"{os.cpu_count()} CPUs, {_memory_gb():.0f} GB RAM, {platform.platform()}",
        command="python benchmarks/scale.py " + " ".join(argv or sys.argv[1:]),
        profile=str(args.profile.resolve().relative_to(REPO)),
        stage_budget_s=args.stage_budget,
        memory_budget_gb=args.memory_gb,
    )

    def save(label: str, result: dict[str, Any]) -> None:
        result.setdefault("command", payload["command"])
        payload["sizes"][label] = result
        payload["exponents"] = exponents(payload["sizes"])
        args.out.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(payload, indent=2) + "\n")
        (args.out / "scale.md").write_text(markdown(payload))

    for label in args.sizes:
        save(label, run_size(label, args, lambda result, label=label: save(label, result)))
    return 0


def _memory_gb() -> float:
    import psutil

    return psutil.virtual_memory().total / 2**30


if __name__ == "__main__":
    sys.exit(main())
