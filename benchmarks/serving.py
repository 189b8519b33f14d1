"""Serving speed: lmrec's HTTP service against a no-op BentoML service, measured in one run.

For each scenario, a real ``bentoml serve lmrec.serving.service:LmrecService`` and a real
``bentoml serve noop_service:NoopService`` (``benchmarks/noop_service.py``: the same
``POST /recommend`` answering a constant list, i.e. what BentoML itself costs) are started
side by side and loaded one at a time, with the same request sequence:

* open loop at fixed rates (default 50 and 100 requests/s): requests leave on a fixed
  timetable and latency is counted from the scheduled send time, so a slow server cannot
  hide its queue (no coordinated omission);
* closed loop at saturation (default 32 concurrent clients): throughput. Saturation runs
  alternate lmrec, noop, noop, lmrec (``--saturation-rounds``), pooled per service: on a
  shared machine whose background load drifts, a service measured only first (or only last)
  would be favoured or penalised by the drift, not by its own cost.

Requests are ``{"user_id": <a user of the bundle>, "k": 10}``, every fifth one
``{"history": [<5 item ids>], "k": 10}`` instead. Any non-2xx answer or exception is an
error. The load generator (one asyncio process, ``aiohttp``: ~1 ms of CPU per request here,
against 3-7 ms for ``httpx``, which would have been the bottleneck of the no-op's
saturation) runs on the same CPU cores as the server; its CPU use is reported per row.

Scenarios: ``movielens`` (the bundle of ``make demo``'s model on MovieLens-100K, exact
scoring) and ``synthetic-100k`` (a 100,000-item synthetic catalog, a 1-epoch model, served
through the faiss HNSW index; built once and cached under ``.cache/lmrec/bench/serving/``).
In process (no HTTP), the engine's ms/request and top-10 agreement are measured with and
without ``serve.quantize_int8`` (movielens) and for faiss against exact scoring (100k).

Targets (exit status 1 when one fails): lmrec's saturation throughput ≥ 0.8× the no-op's,
its p99 at 100 requests/s ≤ 1.5× the no-op's, zero errors. Writes ``<out>/serving.json``
and ``<out>/serving.md``.

    python benchmarks/serving.py                       # both scenarios, 60 s per mode
    python benchmarks/serving.py --scenarios movielens --duration 5
    python benchmarks/serving.py --bundle /work/scale/10M/artifacts/package/bundles/champion \
        --out /tmp/serving-10M      # any serving bundle (e.g. benchmarks/scale.py's 10M one)
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hashlib
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import numpy as np
import pandas as pd
import psutil
import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SCENARIOS = ("movielens", "synthetic-100k")
TARGETS = {"throughput_ratio_min": 0.8, "p99_ratio_max": 1.5, "errors_max": 0}
CHECK_RATE = 100.0
READY_TIMEOUT_S = 900.0  # the 100k scenario builds its HNSW index before /readyz says yes
HEADERS = {"content-type": "application/json"}
#: The 100k catalog: sizes, and the small 1-epoch model trained on it (sampled softmax);
#: the recipe from id_dropout on is the SequentialParams defaults it was first built with.
SYNTHETIC = {"n_users": 10_000, "n_items": 100_000, "n_interactions": 200_000, "seed": 7}
SYNTHETIC_MODEL = {
    "dim": 32,
    "heads": 2,
    "layers": 2,
    "epochs": 1,
    "batch_size": 128,
    "id_dropout": 0.3,
    "lr": 1.0e-3,
    "weight_decay": 0.0,
    "lr_schedule": "constant",
    "window_jitter": False,
    "label_smoothing": 0.0,
}
STAND_IN_NOTE = (
    "item text embeddings of the 100k catalog are random unit vectors (384-d, seeded), "
    "not MiniLM's: encoding 100k texts takes 15-40 min on these 2 cores "
    "(--synthetic-embeddings encoder does it once and caches it); the cost of a request "
    "does not depend on the values, faiss recall may"
)
CACHE_VERSION = 1


@dataclass
class Scenario:
    name: str
    bundle: Path
    params: Path
    facts: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------- scenarios
def cache_root() -> Path:
    base = os.environ.get("LMREC_BENCH_CACHE", REPO / ".cache" / "lmrec" / "bench")
    return Path(base) / "serving"


def write_params(path: Path, **serve: Any) -> Path:
    from lmrec.config import ServeParams

    path.write_text(yaml.safe_dump({"serve": ServeParams(**serve).model_dump()}))
    return path


def movielens(work: Path, log) -> Scenario:
    """A bundle of the demo pipeline's model (``lmrec bundle``), exact scoring."""
    needed = [
        REPO / "artifacts/train/model",
        REPO / "artifacts/preprocess",
        REPO / "artifacts/embed",
    ]
    missing = [str(p.relative_to(REPO)) for p in needed if not p.is_dir()]
    if missing:
        raise SystemExit(f"movielens: {', '.join(missing)} missing; run `make demo` first")
    bundle = work / "movielens" / "bundle"
    cmd = [str(BIN / "lmrec"), "bundle", "--model", str(needed[0]), "--split", str(needed[1])]
    cmd += ["--embeddings", str(needed[2]), "--out", str(bundle)]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"lmrec bundle failed:\n{done.stdout}{done.stderr}")
    log(f"movielens: bundle built in {bundle}")
    params = write_params(work / "movielens" / "params.yaml")
    return Scenario("movielens", bundle, params, bundle_facts(bundle, params))


def given_bundle(work: Path, bundle: Path, log) -> Scenario:
    """A serving bundle built elsewhere (``lmrec package``'s ``bundles/champion``), served
    with the default ServeParams (faiss HNSW from ``faiss_min_items`` items on)."""
    if not (bundle / "bundle.json").is_file():
        raise SystemExit(f"--bundle {bundle}: no bundle.json there (a serving bundle directory)")
    params = write_params(work / "bundle.yaml")
    log(f"bundle: {bundle}")
    facts = {**bundle_facts(bundle, params), "bundle": str(bundle.resolve())}
    return Scenario("bundle", bundle.resolve(), params, facts)


def synthetic(work: Path, embeddings: str, log) -> Scenario:
    """The 100k-item synthetic catalog through faiss; the bundle is built once and cached."""
    key = {**SYNTHETIC, "model": SYNTHETIC_MODEL, "emb": embeddings, "v": CACHE_VERSION}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    root = cache_root() / f"synthetic-100k-{digest}"
    if not (root / "bundle" / "bundle.json").is_file():
        log(f"synthetic-100k: building the bundle in {root} (once; ~3 min)")
        build_synthetic(root, embeddings, log)
    else:
        log(f"synthetic-100k: cached bundle {root / 'bundle'}")
    params = write_params(work / "synthetic-100k.yaml")  # faiss_min_items 50000 <= 100k
    facts = {
        **bundle_facts(root / "bundle", params),
        **json.loads((root / "build.json").read_text()),
    }
    return Scenario("synthetic-100k", root / "bundle", params, facts)


def build_synthetic(root: Path, embeddings: str, log) -> None:
    import torch
    from safetensors.numpy import save_file

    from lmrec import artifacts
    from lmrec.config import EmbedParams, PreprocessParams, SyntheticParams, TrainParams
    from lmrec.data.synthetic import generate
    from lmrec.features.dataset import load_split
    from lmrec.io import write_json
    from lmrec.serving.bundle import build_bundle
    from lmrec.stages import embed, preprocess
    from lmrec.train.trainer import train_sequential

    torch.set_num_threads(os.cpu_count() or 1)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=".build-", dir=root.parent) as tmp:
        work = Path(tmp)
        data, split_dir, embed_dir = work / "data", work / "split", work / "embed"
        data.mkdir()
        interactions, items, _ = generate(SyntheticParams(**SYNTHETIC))
        interactions.to_parquet(data / "interactions.parquet", index=False)
        items.to_parquet(data / "items.parquet", index=False)
        summary = preprocess.run(
            PreprocessParams(), data / "interactions.parquet", data / "items.parquet", split_dir
        )
        log(f"  preprocess: {summary['users']} users, {summary['items']} items")
        if embeddings == "encoder":
            embed.run(EmbedParams(), split_dir, embed_dir, progress=True)
        else:
            vectors = np.random.default_rng(0).standard_normal((summary["items"], 384))
            vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
            embed_dir.mkdir()
            save_file({"embeddings": vectors}, str(embed_dir / artifacts.EMBEDDINGS_FILE))
            meta = {"encoder": "stand-in: random unit vectors", "dim": 384, "n_items": len(vectors)}
            write_json(embed_dir / artifacts.ENCODER_FILE, meta)
        split = load_split(split_dir)
        text, _ = artifacts.load_embeddings(embed_dir)
        cfg = TrainParams(seed=0, device="cpu", sequential=SYNTHETIC_MODEL)
        result = train_sequential(split, text, cfg, work / "checkpoints", progress=False)
        model_dir = work / "model"
        result.model.save(model_dir)
        write_json(model_dir / "item_ids.json", split.items["item_id"].astype(str).tolist())
        meta = {"version": root.name, "alias": "bench", "digest": ""}
        build_bundle(model_dir, split_dir, embed_dir, root / "bundle", meta)
    seconds = time.perf_counter() - started
    facts = {"embeddings": embeddings, "build_seconds": round(seconds, 1), "split": summary}
    write_json(root / "build.json", {"synthetic": SYNTHETIC, "train": SYNTHETIC_MODEL, **facts})
    log(f"  built in {seconds:.0f} s (1 training epoch: {result.seconds:.0f} s)")


def bundle_facts(bundle: Path, params: Path) -> dict[str, Any]:
    from lmrec.config import load_params

    info = json.loads((bundle / "bundle.json").read_text())
    serve = load_params(params).serve
    model = json.loads((bundle / "model" / "config.json").read_text())
    return {
        "items": info["n_items"],
        "users": info["n_users"],
        "model": f"{model['model']} (dim {model['params']['dim']})",
        "scoring": "faiss HNSW" if info["n_items"] >= serve.faiss_min_items else "exact",
        "serve": serve.model_dump(),
    }


def request_plan(bundle: Path, n: int = 4096, seed: int = 0) -> list[dict[str, Any]]:
    """The request sequence: known users (cycling, shuffled), every fifth a 5-item history."""
    users = pd.read_parquet(bundle / "users.parquet")
    users = users[users["history"].map(len) > 0].reset_index(drop=True)
    item_ids = pd.read_parquet(bundle / "catalog.parquet").sort_values("item_idx")["item_id"]
    item_ids = item_ids.astype(str).to_numpy()
    order = np.random.default_rng(seed).permutation(len(users))
    plan = []
    for i in range(n):
        row = users.iloc[order[i % len(order)]]
        if i % 5 == 4:
            plan.append({"history": item_ids[np.asarray(row["history"])[-5:]].tolist(), "k": 10})
        else:
            plan.append({"user_id": str(row["user_id"]), "k": 10})
    return plan


# ----------------------------------------------------------------- servers
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def server(
    service: str, scenario: Scenario, root: Path, threads: int, log
) -> Iterator[tuple[str, psutil.Process]]:
    """Run ``bentoml serve`` for ``service`` ("lmrec" or "noop") until the block ends."""
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LMREC_", "BENTOML_"))}
    env.update(
        LMREC_BUNDLE=str(scenario.bundle),
        LMREC_PARAMS=str(scenario.params),
        LMREC_FEEDBACK_DB=str(root / "feedback.db"),
        BENTOML_HOME=str(root / "bentoml"),
        BENTOML_DO_NOT_TRACK="true",
    )
    if threads:  # torch/OpenMP threads of the server; unset = their default (every core)
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    target = ["lmrec.serving.service:LmrecService"]
    if service == "noop":
        target = ["noop_service:NoopService", "--working-dir", str(REPO / "benchmarks")]
    cmd = [str(BIN / "bentoml"), "serve", *target, "--host", "127.0.0.1", "--port", str(port)]
    log_path = root / f"{service}.log"
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    base = f"http://127.0.0.1:{port}"
    try:
        seconds = wait_ready(proc, base, log_path)
        log(f"  {service}: ready in {seconds:.1f} s on :{port}")
        yield base, psutil.Process(proc.pid)
    finally:
        stop(proc)


def wait_ready(proc: subprocess.Popen, base: str, log_path: Path) -> float:
    started = time.monotonic()
    while time.monotonic() - started < READY_TIMEOUT_S:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace")[-3000:]
            raise SystemExit(f"bentoml serve exited with {proc.returncode}:\n{tail}")
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return time.monotonic() - started
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{base}/readyz not 200 after {READY_TIMEOUT_S:.0f} s (log: {log_path})")


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group (it spawns a worker), SIGKILL what is left."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            continue


def tree_cpu(proc: psutil.Process) -> float:
    """CPU seconds used so far by a process and its children (the BentoML worker)."""
    total = 0.0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            times = p.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


def busy_cpu() -> float:
    """CPU seconds the whole machine has been busy (every process), so far."""
    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


def wait_quiet(max_seconds: float, log, threshold: float = 25.0) -> None:
    """Wait (up to ``max_seconds``) until the machine is under ``threshold`` % CPU: on a
    shared 2-core machine another job's load would be measured as the server's."""
    deadline = time.monotonic() + max_seconds
    while time.monotonic() < deadline:
        if (used := psutil.cpu_percent(interval=5)) < threshold:
            return
        log(f"  machine busy ({used:.0f}% CPU); waiting for it to quieten")
    log(f"  still busy after {max_seconds:.0f} s; measuring anyway (see the CPU other column)")


# ------------------------------------------------------------------- load
@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    samples: list[str] = field(default_factory=list)

    def record(self, seconds: float, error: str | None) -> None:
        if error is None:
            self.latencies.append(seconds)
            return
        self.errors += 1
        if len(self.samples) < 5:
            self.samples.append(error)


async def send(session: aiohttp.ClientSession, body: bytes) -> str | None:
    """POST one request; None when it succeeded, else what went wrong."""
    try:
        async with session.post("/recommend", data=body, headers=HEADERS) as reply:
            answer = await reply.read()
    except (aiohttp.ClientError, TimeoutError) as err:
        return f"{type(err).__name__}: {err}"
    if not 200 <= reply.status < 300:
        return f"HTTP {reply.status}: {answer[:200].decode(errors='replace')}"
    return None


def session(base: str, connections: int) -> aiohttp.ClientSession:
    """Keep-alive connections to ``base``; a request may take up to the service's 30 s."""
    return aiohttp.ClientSession(
        base,
        # Idle connections are dropped before the server's keep-alive timeout (uvicorn: 5 s)
        # can close them under a request in flight.
        connector=aiohttp.TCPConnector(limit=connections, keepalive_timeout=2.0),
        timeout=aiohttp.ClientTimeout(total=30),
    )


async def open_loop(base: str, bodies: list[bytes], rate: float, duration: float) -> dict:
    """Send at ``rate`` requests/s on a fixed timetable; latency from the scheduled time."""
    loop, tally = asyncio.get_running_loop(), Tally()
    async with session(base, 512) as client:

        async def one(body: bytes, due: float) -> None:
            error = await send(client, body)
            tally.record(loop.time() - due, error)

        start = loop.time() + 0.05
        tasks = []
        for i in range(int(rate * duration)):
            due = start + i / rate
            if (delay := due - loop.time()) > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(bodies[i % len(bodies)], due)))
        await asyncio.gather(*tasks)
        return {"tally": tally, "seconds": loop.time() - start}


async def closed_loop(base: str, bodies: list[bytes], concurrency: int, duration: float) -> dict:
    """``concurrency`` clients each sending their next request as soon as one answers."""
    loop, tally = asyncio.get_running_loop(), Tally()
    counter = iter(range(10**12))
    async with session(base, concurrency) as client:
        start = loop.time()
        deadline = start + duration

        async def worker() -> None:
            while loop.time() < deadline:
                sent = loop.time()
                error = await send(client, bodies[next(counter) % len(bodies)])
                tally.record(loop.time() - sent, error)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return {"tally": tally, "seconds": loop.time() - start}


def measure(base: str, proc: psutil.Process, bodies: list[bytes], rate: float | None, args):
    """One load run as a table row: open loop at ``rate`` requests/s, or saturation (None).
    The row's ``_ms`` (every latency) is dropped from the JSON."""
    # The client's own garbage collections (its heap grows by every task and latency of the
    # run) would stall its timetable and be counted as server latency: none during a run.
    gc.collect()
    gc.freeze()
    gc.disable()
    cpu_client, cpu_server, cpu_all = time.process_time(), tree_cpu(proc), busy_cpu()
    try:
        if rate is None:
            run = asyncio.run(closed_loop(base, bodies, args.concurrency, args.duration))
        else:
            run = asyncio.run(open_loop(base, bodies, rate, args.duration))
    finally:
        gc.enable()
        gc.unfreeze()
    tally, seconds = run["tally"], run["seconds"]
    client, server_ = time.process_time() - cpu_client, tree_cpu(proc) - cpu_server
    other = max(0.0, busy_cpu() - cpu_all - client - server_)
    ms = np.asarray(tally.latencies) * 1000.0
    pct = np.percentile(ms, [50, 95, 99]) if len(ms) else [float("nan")] * 3
    return {
        "mode": "saturation" if rate is None else f"rate {rate:g}/s",
        "offered_rps": rate,
        "requests": len(ms) + tally.errors,
        "throughput_rps": len(ms) / seconds,
        "p50_ms": float(pct[0]),
        "p95_ms": float(pct[1]),
        "p99_ms": float(pct[2]),
        "max_ms": float(ms.max()) if len(ms) else float("nan"),
        "errors": tally.errors,
        "error_samples": tally.samples,
        "seconds": seconds,
        "client_cpu": client / seconds,
        "server_cpu": server_ / seconds,
        "other_cpu": other / seconds,
        "_ms": ms,
    }


def merge_rounds(rounds: list[dict]) -> dict:
    """The runs of one service in one mode as one row: every request and second pooled."""
    ms = np.concatenate([r["_ms"] for r in rounds])
    seconds = sum(r["seconds"] for r in rounds)
    pct = np.percentile(ms, [50, 95, 99]) if len(ms) else [float("nan")] * 3

    def mean(column: str) -> float:
        return sum(r[column] * r["seconds"] for r in rounds) / seconds

    return {
        **rounds[0],
        "requests": sum(r["requests"] for r in rounds),
        "throughput_rps": len(ms) / seconds,
        "p50_ms": float(pct[0]),
        "p95_ms": float(pct[1]),
        "p99_ms": float(pct[2]),
        "max_ms": float(ms.max()) if len(ms) else float("nan"),
        "errors": sum(r["errors"] for r in rounds),
        "error_samples": [e for r in rounds for e in r["error_samples"]][:5],
        "seconds": seconds,
        "client_cpu": mean("client_cpu"),
        "server_cpu": mean("server_cpu"),
        "other_cpu": mean("other_cpu"),
        "runs": [(r["throughput_rps"], r["p99_ms"]) for r in rounds],
        "_ms": ms,
    }


def run_order(rounds: int) -> list[str]:
    """lmrec, noop, noop, lmrec, lmrec, noop, ...: each service first as often as last, so
    a machine that slowly gets busier or quieter favours neither."""
    pairs = [("lmrec", "noop") if i % 2 == 0 else ("noop", "lmrec") for i in range(rounds)]
    return [service for pair in pairs for service in pair]


def log_row(log, row: dict) -> None:
    log(
        f"  {row['service']:5s} {row['mode']:12s} {row['throughput_rps']:7.1f} req/s  "
        f"p50 {row['p50_ms']:6.1f}  p99 {row['p99_ms']:7.1f} ms  errors {row['errors']}"
    )


def bench_scenario(scenario: Scenario, bodies: list[bytes], work: Path, args, log) -> list[dict]:
    """Both servers up, loaded one at a time: every mode (the fixed rates, then saturation)
    run ``args.rounds`` times per service in ``run_order``, pooled into one row each."""
    roots = {service: work / scenario.name / service for service in ("lmrec", "noop")}
    rows: list[dict] = []
    with (
        server("lmrec", scenario, roots["lmrec"], args.server_threads, log) as lmrec,
        server("noop", scenario, roots["noop"], args.server_threads, log) as noop,
    ):
        up = {"lmrec": lmrec, "noop": noop}
        wait_quiet(args.quiet_wait, log)
        for base, _ in up.values():
            asyncio.run(closed_loop(base, bodies, min(8, args.concurrency), args.warmup))
        for rate in [*args.rates, None]:
            runs: dict[str, list[dict]] = {"lmrec": [], "noop": []}
            for service in run_order(args.rounds):
                base, proc = up[service]
                runs[service].append(
                    {"service": service, **measure(base, proc, bodies, rate, args)}
                )
                log_row(log, runs[service][-1])
                time.sleep(1.0)  # let the server drain before the next run
            rows += [merge_rounds(runs[service]) for service in up]
        rows.sort(key=lambda row: row["service"] != "lmrec")  # lmrec's rows first, as before
    for service, root in roots.items():
        mine = [row for row in rows if row["service"] == service]
        if any(row["errors"] for row in mine):  # the server's side of the story, for the JSON
            mine[-1]["server_log_tail"] = (root / f"{service}.log").read_text(errors="replace")[
                -4000:
            ]
    for row in rows:
        del row["_ms"]
    return rows


# -------------------------------------------------------------- in process
def time_engine(engine, plan: list[dict], warmup: int = 10) -> tuple[np.ndarray, list[list[str]]]:
    for req in plan[:warmup]:
        engine.recommend(**req)
    ms, tops = [], []
    for req in plan:
        started = time.perf_counter()
        result = engine.recommend(**req)
        ms.append((time.perf_counter() - started) * 1000.0)
        tops.append([item["item_id"] for item in result["items"]])
    return np.asarray(ms), tops


def agreement(reference: list[list[str]], other: list[list[str]]) -> float:
    """Mean share of the reference top-k that the other list also has (recall@k)."""
    return float(
        np.mean([len(set(a) & set(b)) / len(a) for a, b in zip(reference, other, strict=True) if a])
    )


def compare_engines(scenario: Scenario, plan: list[dict], variants: dict[str, dict]) -> dict:
    """ms/request and top-10 agreement with the first variant, per ServeParams variant."""
    import torch

    from lmrec.config import ServeParams
    from lmrec.serving.engine import Engine

    out, reference = {}, None
    for name, serve in variants.items():
        started = time.perf_counter()
        engine = Engine.load(scenario.bundle, ServeParams(**serve))
        load_s = time.perf_counter() - started
        ms, tops = time_engine(engine, plan)
        reference = reference or tops
        out[name] = {
            "serve": serve,
            "load_seconds": load_s,
            "ms_p50": float(np.percentile(ms, 50)),
            "ms_mean": float(ms.mean()),
            "ms_p99": float(np.percentile(ms, 99)),
            "top10_agreement": agreement(reference, tops),
        }
        del engine
        torch.backends.mha.set_fastpath_enabled(True)  # quantising turns it off process-wide
    return {"requests": len(plan), "variants": out}


# ------------------------------------------------------------------ report
def checks(rows: list[dict], duration: float) -> dict[str, Any]:
    """The issue's targets for one scenario (None where the mode was not run)."""

    def row(service: str, mode: str) -> dict | None:
        return next((r for r in rows if r["service"] == service and r["mode"] == mode), None)

    def ratio(mode: str, column: str) -> float | None:
        lm, noop = row("lmrec", mode), row("noop", mode)
        if lm is None or noop is None or not noop[column] > 0:
            return None
        return lm[column] / noop[column]

    throughput = ratio("saturation", "throughput_rps")
    p99 = ratio(f"rate {CHECK_RATE:g}/s", "p99_ms")
    errors = sum(r["errors"] for r in rows if r["service"] == "lmrec")
    return {
        "saturation_throughput_ratio": {
            "value": throughput,
            "target": f">= {TARGETS['throughput_ratio_min']}x no-op",
            "passed": None if throughput is None else throughput >= TARGETS["throughput_ratio_min"],
        },
        f"p99_ratio_at_{CHECK_RATE:g}_rps": {
            "value": p99,
            "target": f"<= {TARGETS['p99_ratio_max']}x no-op",
            "passed": None if p99 is None else p99 <= TARGETS["p99_ratio_max"],
        },
        "lmrec_errors": {
            "value": errors,
            "target": f"{TARGETS['errors_max']} in {duration:g} s per mode",
            "passed": errors <= TARGETS["errors_max"],
        },
    }


def machine_facts(args) -> dict[str, Any]:
    import bentoml
    import torch

    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "cpu_model": cpu,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "bentoml": bentoml.__version__,
        "torch": torch.__version__,
        "torch_threads_in_process": torch.get_num_threads(),
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "rates": args.rates,
        "concurrency": args.concurrency,
        "rounds": args.rounds,
        "server_threads": args.server_threads or "default",
        "client": "one asyncio process (aiohttp), on the same cores as the server",
    }


def _num(value: float | None, fmt: str) -> str:
    return "n/a" if value is None or value != value else format(value, fmt)


def markdown(payload: dict[str, Any]) -> str:
    facts = payload["facts"]
    lines = [
        "# Serving benchmark: lmrec against a no-op BentoML service",
        "",
        f"{facts['date']}; {facts['cpus']} CPUs ({facts['cpu_model']}), load average at start "
        f"{facts['load_average_at_start']}; Python {facts['python']}, BentoML "
        f"{facts['bentoml']}, torch {facts['torch']}. {facts['duration_s']:g} s per mode "
        f"after {facts['warmup_s']:g} s warm-up; saturation = {facts['concurrency']} "
        f"concurrent clients. Every mode: {facts['rounds']} runs of {facts['duration_s']:g} s "
        "per service in the order lmrec, noop, noop, lmrec, pooled per service (each run's "
        "req/s and p99 are listed under the tables). Open-loop latency counts from the "
        "scheduled send time; the load generator does not collect garbage during a run. "
        "Both servers are up, one is loaded at a time. The load generator shares the cores "
        "with the server. CPU columns: cores kept busy by the client, the server and "
        "everything else on the machine (1.0 = one core).",
        "",
    ]
    for name, result in payload["scenarios"].items():
        sf = result["facts"]
        lines += [
            f"## {name}: {sf['items']:,} items, {sf['users']:,} users, {sf['scoring']} scoring",
            "",
        ]
        if sf.get("note"):
            lines += [f"Stand-in: {sf['note']}.", ""]
        if sf.get("bundle"):
            lines += [f"Bundle: `{sf['bundle']}` (`--bundle`).", ""]
        lines += [
            "| service | mode | req/s | p50 ms | p95 ms | p99 ms | errors | CPU client "
            "| CPU server | CPU other |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in result["rows"]:
            cells = [
                r["service"],
                r["mode"],
                _num(r["throughput_rps"], ".1f"),
                *(_num(r[c], ".1f") for c in ("p50_ms", "p95_ms", "p99_ms")),
                str(r["errors"]),
                _num(r["client_cpu"], ".2f"),
                _num(r["server_cpu"], ".2f"),
                _num(r["other_cpu"], ".2f"),
            ]
            lines.append("| " + " | ".join(cells) + " |")
        runs = [
            f"{r['service']} {r['mode']}: "
            + ", ".join(f"{rps:.1f} req/s p99 {p99:.1f} ms" for rps, p99 in r["runs"])
            for r in result["rows"]
            if len(r.get("runs", ())) > 1
        ]
        if runs:
            lines += ["", "Runs: " + "; ".join(runs) + "."]
        lines += ["", "| check | lmrec ÷ no-op | target | passed |", "|---|---|---|---|"]
        for key, check in result["checks"].items():
            value = check["value"]
            shown = str(value) if key == "lmrec_errors" else _num(value, ".2f") + "×"
            passed = {True: "yes", False: "NO", None: "not run"}[check["passed"]]
            lines.append(f"| {key} | {shown} | {check['target']} | {passed} |")
        lines.append("")
    if payload["inprocess"]:
        lines += [
            "## In process (the engine alone, no HTTP; single requests, one after another)",
            "",
            "| scenario | variant | load s | ms p50 | ms mean | ms p99 | top-10 agreement |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, result in payload["inprocess"].items():
            for variant, v in result["variants"].items():
                cells = [
                    name,
                    variant,
                    _num(v["load_seconds"], ".1f"),
                    *(_num(v[c], ".2f") for c in ("ms_p50", "ms_mean", "ms_p99")),
                    _num(v["top10_agreement"], ".3f"),
                ]
                lines.append("| " + " | ".join(cells) + " |")
        lines += [
            "",
            "Top-10 agreement: the share of the first row's top 10 (fp32, exact) that the "
            "variant also returns (for faiss: its recall@10 against exact scoring), over the "
            "first "
            f"{next(iter(payload['inprocess'].values()))['requests']} requests of the "
            "load sequence.",
            "",
        ]
    return "\n".join(lines)


# -------------------------------------------------------------------- main
def _csv(kind):
    return lambda text: [kind(x) for x in text.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenarios", type=_csv(str), default=list(SCENARIOS))
    parser.add_argument("--duration", type=float, default=60.0, help="seconds per load mode")
    parser.add_argument("--rates", type=_csv(float), default=[50.0, 100.0])
    parser.add_argument("--concurrency", type=int, default=32, help="saturation clients")
    parser.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="runs of --duration s per service and mode, in the order lmrec, noop, noop, "
        "lmrec, ... (2: each service first once and last once); pooled per service",
    )
    parser.add_argument("--warmup", type=float, default=5.0, help="untimed seconds first")
    parser.add_argument(
        "--synthetic-embeddings",
        choices=("stand-in", "encoder"),
        default="stand-in",
        help="100k item text embeddings: random unit vectors, or MiniLM (~40 min, cached)",
    )
    parser.add_argument(
        "--server-threads",
        type=int,
        default=0,
        help="OMP_NUM_THREADS for the servers and torch threads in process (0: default)",
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=300.0,
        help="most seconds to wait for a busy machine to quieten before each server",
    )
    parser.add_argument("--inprocess-requests", type=int, default=200, help="0 skips them")
    parser.add_argument(
        "--bundle",
        type=Path,
        help="measure this serving bundle instead of --scenarios (e.g. the 10M scale run's "
        "artifacts/package/bundles/champion); in-process timings: exact vs faiss",
    )
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results")
    args = parser.parse_args(argv)
    if args.bundle is not None:
        args.scenarios = ["bundle"]
    elif unknown := sorted(set(args.scenarios) - set(SCENARIOS)):
        parser.error(f"unknown scenarios {unknown}; known: {', '.join(SCENARIOS)}")

    def log(message: str) -> None:
        print(message, flush=True)

    if args.server_threads:
        import torch

        torch.set_num_threads(args.server_threads)
    started = time.perf_counter()
    payload: dict[str, Any] = {"facts": machine_facts(args), "scenarios": {}, "inprocess": {}}
    with tempfile.TemporaryDirectory(prefix="lmrec-serving-bench-") as tmp:
        work = Path(tmp)
        for name in args.scenarios:
            if name == "bundle":
                scenario = given_bundle(work, args.bundle, log)
            elif name == "movielens":
                scenario = movielens(work, log)
            else:
                scenario = synthetic(work, args.synthetic_embeddings, log)
                if args.synthetic_embeddings == "stand-in":
                    scenario.facts["note"] = STAND_IN_NOTE
            plan = request_plan(scenario.bundle)
            bodies = [json.dumps(req).encode() for req in plan]
            log(f"{name}: {scenario.facts['items']:,} items, {scenario.facts['scoring']} scoring")
            rows = bench_scenario(scenario, bodies, work, args, log)
            payload["scenarios"][name] = {
                "facts": scenario.facts,
                "rows": rows,
                "checks": checks(rows, args.duration),
            }
            if args.inprocess_requests > 0:
                variants = (
                    {"fp32": {}, "int8 (quantize_int8)": {"quantize_int8": True}}
                    if name == "movielens"
                    else {"exact": {"faiss_min_items": 10**9}, "faiss HNSW": {}}
                )
                log(f"{name}: in-process engine timings ({', '.join(variants)})")
                wait_quiet(args.quiet_wait, log)
                result = compare_engines(scenario, plan[: args.inprocess_requests], variants)
                payload["inprocess"][name] = result
    payload["facts"]["total_seconds"] = round(time.perf_counter() - started, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    report = markdown(payload)
    (args.out / "serving.json").write_text(json.dumps(payload, indent=2) + "\n")
    (args.out / "serving.md").write_text(report)
    print()
    print(report)
    results = [c["passed"] for s in payload["scenarios"].values() for c in s["checks"].values()]
    return 1 if False in results else 0


if __name__ == "__main__":
    sys.exit(main())
