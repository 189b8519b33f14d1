"""RecBole 1.2.1 peers (SASRec, GRU4Rec), run in their own venv and scored on our histories.

RecBole needs numpy<2, so it cannot share the project's ``.venv``. This side exports the
split to a job directory, runs ``recbole_runner.py`` with ``.venv-recbole/bin/python`` (build
it with ``bash benchmarks/peers/setup_recbole.sh``) and loads the float32 score matrices the
runner writes back. RecBole trains on exactly our sequences: per user, train items + the
validation item + the test item, timestamps = positions, split leave-one-out
(``{'LS': 'valid_and_test'}``, order TO, no filtering), CE loss, early stopping on
validation NDCG@10. Its best checkpoint then scores ``split.history_for(u, stage)`` for every
user, so the protocol sees the same histories it gives every other model. Items RecBole never
saw (the cold items) score ``-1e9``: an ID-only model ties on the cold slice.

One run yields both stages; both are cached together. Progress goes to
``<job>/progress.log`` and the full RecBole log to ``<job>/runner.log`` (the job directory
is printed when the run starts; ``tail -f`` it). A failed run's log is kept at
``<cache>/<peer>/last-failure.log``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lmrec.features.dataset import SplitData

from .common import (
    REPO,
    STAGES,
    Fitted,
    PeerFn,
    PeerResult,
    cache_root,
    cached_peer,
    params_key,
    stage_histories,
)

RUNNER = Path(__file__).with_name("recbole_runner.py")
SETUP = Path(__file__).with_name("setup_recbole.sh")
NUM_THREADS = int(os.environ.get("LMREC_BENCH_THREADS", "2"))


def recbole_python() -> Path:
    """The RecBole venv's interpreter: ``$LMREC_RECBOLE_PYTHON`` or ``.venv-recbole``."""
    default = REPO / ".venv-recbole" / "bin" / "python"
    return Path(os.environ.get("LMREC_RECBOLE_PYTHON", default))


@dataclasses.dataclass(frozen=True)
class RecBoleParams:
    """Training settings shared by the RecBole peers, plus model-specific overrides.

    Attributes:
        epochs: cap on training epochs (one SASRec epoch on ML-100K takes minutes on 2 cores).
        stopping_step: epochs without a better validation NDCG@10 before stopping.
        train_batch_size: 256 rather than RecBole's 2048: the same work per epoch but 8x the
            optimiser steps, so the capped number of epochs is enough to converge.
        learning_rate: RecBole's default (Adam).
        max_seq_length: ``MAX_ITEM_LIST_LENGTH``: the most recent items a model reads.
        model_config: extra RecBole settings (layer sizes, dropout...), as (key, value) pairs.
    """

    epochs: int = 20
    stopping_step: int = 3
    train_batch_size: int = 256
    learning_rate: float = 0.001
    max_seq_length: int = 50
    model_config: tuple[tuple[str, Any], ...] = ()

    def recbole_config(self) -> dict[str, Any]:
        """These settings as a RecBole ``config_dict``."""
        return {
            "epochs": self.epochs,
            "stopping_step": self.stopping_step,
            "train_batch_size": self.train_batch_size,
            "learning_rate": self.learning_rate,
            "MAX_ITEM_LIST_LENGTH": self.max_seq_length,
            **dict(self.model_config),
        }


#: RecBole 1.2.1's own model defaults, spelled out so that they are part of the cache key.
SASREC_DEFAULTS = RecBoleParams(
    model_config=(
        ("n_layers", 2),
        ("n_heads", 2),
        ("hidden_size", 64),
        ("inner_size", 256),
        ("hidden_dropout_prob", 0.5),
        ("attn_dropout_prob", 0.5),
        ("hidden_act", "gelu"),
    )
)
GRU4REC_DEFAULTS = RecBoleParams(
    model_config=(
        ("embedding_size", 64),
        ("hidden_size", 128),
        ("num_layers", 1),
        ("dropout_prob", 0.3),
    )
)


def _flatten(arrays: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Ragged int arrays as (flat, offsets) with ``offsets[i]:offsets[i+1]`` per array."""
    lengths = np.array([len(a) for a in arrays], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    flat = np.concatenate([np.asarray(a, dtype=np.int64) for a in arrays]) if len(arrays) else []
    return np.asarray(flat, dtype=np.int64), offsets


def training_sequences(split: SplitData) -> list[np.ndarray]:
    """Per user, what RecBole trains and validates on: train items, val item, test item."""
    out = []
    for user in range(split.n_users):
        tail = [i for i in (split.val_items[user], split.test_items[user]) if i >= 0]
        out.append(np.concatenate([split.train[user], np.asarray(tail, dtype=np.int64)]))
    return out


def export_split(split: SplitData, path: Path, stages: Sequence[str] = STAGES) -> None:
    """Write the ``split.npz`` the runner reads (see ``recbole_runner`` for the layout)."""
    arrays: dict[str, np.ndarray] = {
        "n_users": np.int64(split.n_users),
        "n_items": np.int64(split.n_items),
    }
    arrays["seq_flat"], arrays["seq_offsets"] = _flatten(training_sequences(split))
    for stage in stages:
        flat, offsets = _flatten(stage_histories(split, stage))
        arrays[f"hist_{stage}_flat"], arrays[f"hist_{stage}_offsets"] = flat, offsets
    np.savez(path, **arrays)


def _environment_tag() -> str:
    """What the cached scores depend on beyond the split: runner code and the venv's pins."""
    digest = hashlib.sha256(RUNNER.read_bytes())
    stamp = recbole_python().parent.parent / ".lmrec-recbole-stamp"
    digest.update(stamp.read_bytes() if stamp.is_file() else b"no-stamp")
    return digest.hexdigest()[:16]


def run_runner(jobdir: Path, *, timeout: float | None = None) -> dict[str, Any]:
    """Run ``recbole_runner.py`` on ``jobdir`` in the RecBole venv; return its result.json.

    Raises:
        FileNotFoundError: when the RecBole venv is missing.
        RuntimeError: when the runner fails (the end of its log is in the message).
    """
    python = recbole_python()
    if not python.is_file():
        raise FileNotFoundError(f"{python} not found; build it with: bash {SETUP}")
    env = {
        **os.environ,
        "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1",
        "OMP_NUM_THREADS": str(NUM_THREADS),
        "MKL_NUM_THREADS": str(NUM_THREADS),
        "OPENBLAS_NUM_THREADS": str(NUM_THREADS),
        "PYTHONHASHSEED": "0",
    }
    env.pop("PYTHONPATH", None)  # nothing from the lmrec side may leak into the RecBole venv
    log = jobdir / "runner.log"
    print(f"recbole: running {jobdir} (progress: {jobdir / 'progress.log'})", file=sys.stderr)
    with log.open("w") as out:
        proc = subprocess.run(
            [str(python), str(RUNNER), str(jobdir)],
            cwd=jobdir,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=timeout,
            check=False,
        )
    if proc.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        raise RuntimeError(f"recbole runner failed (exit {proc.returncode}):\n{tail}")
    return json.loads((jobdir / "result.json").read_text())


def recbole_peer(
    model: str,
    split: SplitData,
    seed: int = 0,
    stage: str = "test",
    *,
    params: RecBoleParams,
    cache: bool = True,
    timeout: float | None = None,
) -> PeerResult:
    """Train RecBole ``model`` on the split (both stages in one run) and return ``stage``."""
    name = f"recbole-{model.lower()}"

    def fit(workdir: Path) -> Fitted:
        jobdir = workdir / "job"
        jobdir.mkdir()
        export_split(split, jobdir / "split.npz")
        job = {
            "model": model,
            "seed": seed,
            "threads": NUM_THREADS,
            "stages": list(STAGES),
            "config": params.recbole_config(),
        }
        (jobdir / "job.json").write_text(json.dumps(job, indent=2))
        try:
            result = run_runner(jobdir, timeout=timeout)
        except (RuntimeError, subprocess.TimeoutExpired):
            keep = cache_root() / name / "last-failure.log"
            keep.parent.mkdir(parents=True, exist_ok=True)
            if (jobdir / "runner.log").is_file():
                shutil.copy(jobdir / "runner.log", keep)
            raise
        scores = {s: np.load(jobdir / f"scores-{s}.npy") for s in STAGES}
        # The dataset copy and checkpoint are large and reproducible; keep only logs.
        shutil.rmtree(jobdir / "dataset", ignore_errors=True)
        shutil.rmtree(jobdir / "saved", ignore_errors=True)
        for stage_name in STAGES:
            (jobdir / f"scores-{stage_name}.npy").unlink()
        info = {
            "params": params_key(params),
            "seed": seed,
            "library": "recbole {recbole}, torch {torch}".format(**result["versions"]),
            **{k: v for k, v in result.items() if k not in ("config", "versions")},
        }
        return Fitted(scores, float(result["fit_seconds"]), info)

    key = {"params": params_key(params), "seed": seed, "env": _environment_tag()}
    return cached_peer(name, split, stage, key, fit, cache=cache)


def sasrec_peer(
    split: SplitData,
    seed: int = 0,
    stage: str = "test",
    *,
    params: RecBoleParams | None = None,
    cache: bool = True,
) -> PeerResult:
    """RecBole SASRec (2 layers, 2 heads, hidden 64, max length 50, CE loss)."""
    return recbole_peer("SASRec", split, seed, stage, params=params or SASREC_DEFAULTS, cache=cache)


def gru4rec_peer(
    split: SplitData,
    seed: int = 0,
    stage: str = "test",
    *,
    params: RecBoleParams | None = None,
    cache: bool = True,
) -> PeerResult:
    """RecBole GRU4Rec (embedding 64, GRU hidden 128, 1 layer, dropout 0.3, CE loss)."""
    p = params or GRU4REC_DEFAULTS
    return recbole_peer("GRU4Rec", split, seed, stage, params=p, cache=cache)


PEERS: dict[str, PeerFn] = {"recbole-sasrec": sasrec_peer, "recbole-gru4rec": gru4rec_peer}
