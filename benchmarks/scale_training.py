"""Before/after probes of the training loader and the embed batching (issue 14).

``windows``: peak traced memory and time of ``training_windows`` (every window materialised,
the loader before) against ``StreamedWindows`` (the loader now) on synthetic sequences of
``--users`` users and ``--interactions`` interactions (geometric lengths), and the time to
build one batch from the streamed index.

``embed``: texts per second encoding a split's first ``--texts`` item texts batched by
character length (before) and by token length (now), alternating, with the max difference.

    nice -n 10 python benchmarks/scale_training.py windows --users 50000 --interactions 1000000
    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/scale_training.py embed \
        --split /tmp/q/preprocess --texts 512
"""

from __future__ import annotations

import argparse
import json
import time
import tracemalloc
from pathlib import Path

import numpy as np
import torch

from lmrec.features.dataset import load_split
from lmrec.models.sequential_loss import training_windows
from lmrec.models.sequential_windows import StreamedWindows
from lmrec.text.encoder import TextEncoder


def _traced(build):
    tracemalloc.start()
    start = time.perf_counter()
    built = build()
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return built, seconds, peak


def windows(users: int, interactions: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    lengths = rng.geometric(users / interactions, users)
    train = [rng.integers(0, 200_000, n) for n in lengths]
    streamed, s_seconds, s_peak = _traced(lambda: StreamedWindows(train, 50, 0, rng))
    _, m_seconds, m_peak = _traced(lambda: training_windows(train, 50, 0, rng))
    order = rng.permutation(len(streamed))
    start = time.perf_counter()
    for b in range(100):
        streamed.batch(order[b * 64 : (b + 1) * 64])
    return {
        "users": users,
        "interactions": int(lengths.sum()),
        "windows": len(streamed),
        "materialised_mib": round(m_peak / 2**20, 1),
        "materialised_s": round(m_seconds, 2),
        "streamed_mib": round(s_peak / 2**20, 1),
        "streamed_s": round(s_seconds, 2),
        "batch_ms": round(10 * (time.perf_counter() - start), 2),
    }


def embed(split: Path, n_texts: int, rounds: int = 2) -> dict:
    texts = load_split(split).item_texts()[:n_texts]
    encoder = TextEncoder()
    by_chars = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    by_tokens = np.argsort(-encoder.token_lengths(texts), kind="stable").tolist()
    spent = {"chars": 0.0, "tokens": 0.0}
    out = {}
    with torch.inference_mode():
        for _ in range(rounds):
            for name, order in (("chars", by_chars), ("tokens", by_tokens)):
                start = time.perf_counter()
                vectors = np.zeros((len(texts), encoder.dim), dtype=np.float32)
                for b in range(0, len(order), 64):
                    rows = order[b : b + 64]
                    vectors[rows] = encoder.embed_batch([texts[i] for i in rows]).numpy()
                spent[name] += time.perf_counter() - start
                out[name] = vectors
    rate = {f"{k}_texts_per_s": round(rounds * len(texts) / v, 1) for k, v in spent.items()}
    return {
        "texts": len(texts),
        **rate,
        "max_abs_diff": float(np.abs(out["chars"] - out["tokens"]).max()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="probe", required=True)
    w = sub.add_parser("windows")
    w.add_argument("--users", type=int, default=50_000)
    w.add_argument("--interactions", type=int, default=1_000_000)
    e = sub.add_parser("embed")
    e.add_argument("--split", type=Path, required=True)
    e.add_argument("--texts", type=int, default=512)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.probe == "windows":
        print(json.dumps(windows(args.users, args.interactions)), flush=True)
    else:
        print(json.dumps(embed(args.split, args.texts)), flush=True)


if __name__ == "__main__":
    main()
