"""What every peer shares: the result type, a score-matrix scorer, the cache, evaluation.

A peer is trained once per (split, params, seed, stage) and turned into a dense float32
score matrix ``[n_users, n_items]``: row ``u`` scores the whole catalog for user ``u`` at
that stage. ``MatrixScorer`` serves those rows through the protocol's ``score_users`` hook,
so a peer is evaluated by exactly the code that evaluates lmrec's own models.

Matrices, fit seconds and metrics are cached under ``.cache/lmrec/bench/`` (override with
``LMREC_BENCH_CACHE``) by a hash of the split's content, the peer's name, parameters, library
version and seed; a rerun of the benchmark reuses them. Entries are written atomically (to a
temporary directory renamed into place), so an interrupted fit never looks cached.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from lmrec.evaluation import metrics as lmrec_metrics
from lmrec.evaluation import protocol
from lmrec.features.dataset import SplitData

REPO = Path(__file__).resolve().parents[2]
#: Bump to invalidate every cached peer result (a change in how matrices are built).
CACHE_VERSION = 1
STAGES = ("val", "test")
META_FILE = "meta.json"


def cache_root() -> Path:
    """Where peer results live: ``$LMREC_BENCH_CACHE`` or ``<repo>/.cache/lmrec/bench``."""
    return Path(os.environ.get("LMREC_BENCH_CACHE", REPO / ".cache" / "lmrec" / "bench"))


def check_stage(stage: str) -> str:
    """Return ``stage`` if it is "val" or "test"; raise ``ValueError`` otherwise."""
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    return stage


# --------------------------------------------------------------------------- scoring
class MatrixScorer:
    """Serves precomputed per-user score rows to ``evaluate_protocol``.

    The rows belong to one stage: a peer fitted for "test" saw each user's validation item.
    ``score_users`` therefore checks that every history it is given has the length of the
    history the matrix was built from, so a matrix cannot be evaluated at the wrong stage.
    """

    def __init__(self, scores: np.ndarray, history_lengths: np.ndarray, stage: str) -> None:
        scores = np.asarray(scores, dtype=np.float32)
        if scores.ndim != 2 or len(history_lengths) != scores.shape[0]:
            raise ValueError(
                f"scores {scores.shape} do not match {len(history_lengths)} history lengths"
            )
        if not np.isfinite(scores).all():
            raise ValueError("peer scores must be finite")
        self.scores = scores
        self.history_lengths = np.asarray(history_lengths, dtype=np.int64)
        self.stage = check_stage(stage)

    @property
    def n_items(self) -> int:
        return int(self.scores.shape[1])

    def score_users(self, users: np.ndarray, histories: Sequence[np.ndarray]) -> np.ndarray:
        """Rows of the matrix for ``users`` (the protocol's per-user hook)."""
        users = np.asarray(users, dtype=np.int64)
        lengths = np.fromiter((len(h) for h in histories), dtype=np.int64, count=len(histories))
        if len(users) != len(lengths):
            raise ValueError(f"{len(users)} users but {len(lengths)} histories")
        if (lengths != self.history_lengths[users]).any():
            raise ValueError(
                f"histories do not match the {self.stage!r}-stage histories this peer was "
                "fitted for; evaluate it at the stage it was built for"
            )
        return self.scores[users]

    def score_rows(self, users: np.ndarray) -> np.ndarray:
        """Rows for ``users`` whatever history is asked about: the protocol's ``new_items``
        slice scores targets no peer ever trained on (cold items), so a row built from the
        full stage history leaks no answer; it only gives the peer more context."""
        return self.scores[np.asarray(users, dtype=np.int64)]

    def score(self, histories: Sequence[np.ndarray]) -> np.ndarray:
        """Not supported: peer rows are per user; the protocol calls ``score_users``."""
        raise TypeError("a peer scorer needs user indices: call score_users(users, histories)")


def stage_histories(split: SplitData, stage: str) -> list[np.ndarray]:
    """Every user's history at ``stage``, exactly as the protocol builds it."""
    check_stage(stage)
    return [split.history_for(u, stage) for u in range(split.n_users)]


def history_lengths(split: SplitData, stage: str) -> np.ndarray:
    """Length of every user's ``stage`` history."""
    return np.array([len(h) for h in stage_histories(split, stage)], dtype=np.int64)


def stage_pairs(split: SplitData, stage: str) -> tuple[np.ndarray, np.ndarray]:
    """(user, item) pairs of every user's ``stage`` history: what a non-sequential peer fits.

    For "val" that is the training pairs; for "test" the training pairs plus each user's
    validation item (a factorisation model cannot fold in new history, so it is refitted).
    """
    histories = stage_histories(split, stage)
    lengths = np.array([len(h) for h in histories], dtype=np.int64)
    users = np.repeat(np.arange(split.n_users, dtype=np.int64), lengths)
    items = np.concatenate(histories).astype(np.int64) if len(histories) else np.zeros(0, int)
    return users, items


def item_genres(split: SplitData) -> list[list[str]]:
    """Per item index, its genres (``categories`` split on "|"; empty list if none)."""
    cats = split.items.sort_values("item_idx")["categories"].fillna("").astype(str)
    return [[g.strip() for g in c.split("|") if g.strip()] for c in cats]


# --------------------------------------------------------------------------- results
@dataclasses.dataclass(frozen=True)
class PeerResult:
    """A fitted peer at one stage.

    Attributes:
        name: the peer's registry name.
        stage: "val" or "test": the stage whose histories the scores are for.
        scorer: pass to ``evaluate_protocol(scorer, split, stage=stage)``.
        fit_seconds: wall seconds spent training (as measured when first fitted).
        info: params, library version, seed and peer-specific facts (JSON-able).
        cached: True when read from the cache rather than fitted in this call.
        cache_dir: the cache entry, or None when caching was off.
    """

    name: str
    stage: str
    scorer: MatrixScorer
    fit_seconds: float
    info: dict[str, Any]
    cached: bool = False
    cache_dir: Path | None = None


#: A peer entry point: ``peer(split, seed, stage) -> PeerResult``.
PeerFn = Callable[..., PeerResult]


@dataclasses.dataclass(frozen=True)
class Fitted:
    """What a peer's fitting code returns: score matrices per stage, seconds, facts."""

    scores: dict[str, np.ndarray]
    fit_seconds: float
    info: dict[str, Any] = dataclasses.field(default_factory=dict)


def split_fingerprint(split: SplitData) -> str:
    """SHA-256 of everything in a split that a peer's scores depend on."""
    digest = hashlib.sha256()

    def add(label: str, array: np.ndarray) -> None:
        array = np.ascontiguousarray(array)
        digest.update(f"{label}:{array.dtype.str}:{array.shape}".encode())
        digest.update(array.tobytes())

    lengths = np.array([len(s) for s in split.train], dtype=np.int64)
    add("train_lengths", lengths)
    add("train", np.concatenate(split.train).astype(np.int64) if len(lengths) else lengths)
    add("val", np.asarray(split.val_items, dtype=np.int64))
    add("test", np.asarray(split.test_items, dtype=np.int64))
    items = split.items.sort_values("item_idx")
    add("item_idx", items["item_idx"].to_numpy(dtype=np.int64))
    add("is_cold", items["is_cold"].to_numpy(dtype=bool))
    digest.update("\n".join(items["categories"].fillna("").astype(str)).encode())
    cold = split.cold.sort_values(["user_idx", "item_idx"])
    add("cold_users", cold["user_idx"].to_numpy(dtype=np.int64))
    add("cold_items", cold["item_idx"].to_numpy(dtype=np.int64))
    return digest.hexdigest()


def _digest(payload: Mapping[str, Any]) -> str:
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


@contextmanager
def _atomic_entry(final: Path) -> Iterator[Path]:
    """Yield a temporary directory that becomes ``final`` only if the block succeeds."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.partial-{os.getpid()}-{time.time_ns()}"
    tmp.mkdir()
    try:
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def cached_peer(
    name: str,
    split: SplitData,
    stage: str,
    key: Mapping[str, Any],
    fit: Callable[[Path], Fitted],
    *,
    cache: bool = True,
) -> PeerResult:
    """Fit a peer through the cache and return its result for ``stage``.

    Args:
        name: the peer's registry name (first component of the cache path).
        split: the split being fitted; its fingerprint is part of the key.
        stage: the stage to return.
        key: everything else the scores depend on (params, seed, library version, and the
            stage itself for peers that fit per stage). ``fit`` may return more stages than
            asked for (one RecBole run scores both); all are stored.
        fit: ``fit(workdir) -> Fitted``; ``workdir`` is the (temporary) entry directory,
            for logs and intermediate files.
        cache: False to always fit (nothing is read or written).

    Returns:
        The ``PeerResult``; ``cached`` tells whether the matrices came from disk.
    """
    check_stage(stage)
    lengths = history_lengths(split, stage)
    full_key = {"peer": name, "split": split_fingerprint(split), "v": CACHE_VERSION, **key}
    entry = cache_root() / name / _digest(full_key)[:20]
    if cache and (entry / META_FILE).is_file() and (entry / f"scores-{stage}.npy").is_file():
        meta = json.loads((entry / META_FILE).read_text())
        scores = np.load(entry / f"scores-{stage}.npy")
        scorer = MatrixScorer(scores, lengths, stage)
        return PeerResult(name, stage, scorer, meta["fit_seconds"], meta["info"], True, entry)
    if not cache:
        with tempfile.TemporaryDirectory(prefix=f"lmrec-peer-{name}-") as work:
            fitted = fit(Path(work))
        _check_fitted(fitted, split, stage)
        scorer = MatrixScorer(fitted.scores[stage], lengths, stage)
        return PeerResult(name, stage, scorer, fitted.fit_seconds, fitted.info, False, None)
    with _atomic_entry(entry) as tmp:
        fitted = fit(tmp)
        _check_fitted(fitted, split, stage)
        for fitted_stage, scores in fitted.scores.items():
            np.save(tmp / f"scores-{fitted_stage}.npy", np.asarray(scores, dtype=np.float32))
        meta = {"key": full_key, "fit_seconds": fitted.fit_seconds, "info": fitted.info}
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))
    scorer = MatrixScorer(fitted.scores[stage], lengths, stage)
    return PeerResult(name, stage, scorer, fitted.fit_seconds, fitted.info, False, entry)


def _check_fitted(fitted: Fitted, split: SplitData, stage: str) -> None:
    if stage not in fitted.scores:
        raise RuntimeError(f"peer fit returned stages {sorted(fitted.scores)}, not {stage!r}")
    for fitted_stage, scores in fitted.scores.items():
        check_stage(fitted_stage)
        if scores.shape != (split.n_users, split.n_items):
            raise RuntimeError(
                f"peer scores for {fitted_stage!r} have shape {scores.shape}, "
                f"expected ({split.n_users}, {split.n_items})"
            )


@contextmanager
def timed() -> Iterator[list[float]]:
    """``with timed() as t: ...``; afterwards ``t[0]`` holds the elapsed wall seconds."""
    out: list[float] = []
    start = time.perf_counter()
    try:
        yield out
    finally:
        out.append(time.perf_counter() - start)


def params_key(params: Any) -> dict[str, Any]:
    """A dataclass of hyperparameters as a plain dict (for cache keys and ``info``)."""
    return dataclasses.asdict(params)


# --------------------------------------------------------------------------- evaluation
def _protocol_source_hash() -> str:
    """Hash of the evaluation code, so cached metrics follow changes to the protocol."""
    source = inspect.getsource(protocol) + inspect.getsource(lmrec_metrics)
    return hashlib.sha256(source.encode()).hexdigest()[:16]


def evaluate_peer(
    result: PeerResult, split: SplitData, *, cache: bool = True, **protocol_kwargs: Any
) -> dict[str, Any]:
    """``evaluate_protocol`` on a peer at its own stage, cached next to its scores.

    Args:
        result: a peer result.
        split: the split it was fitted on.
        cache: False to always recompute.
        **protocol_kwargs: passed on to ``evaluate_protocol`` (k, recall_k, ...); part of
            the metrics' cache key, as is the source of the evaluation code.

    Returns:
        The protocol's result dict.
    """
    path = None
    if cache and result.cache_dir is not None and "item_embeddings" not in protocol_kwargs:
        tag = _digest({"kwargs": protocol_kwargs, "code": _protocol_source_hash()})[:16]
        path = result.cache_dir / f"metrics-{result.stage}-{tag}.json"
        if path.is_file():
            return json.loads(path.read_text())
    metrics = protocol.evaluate_protocol(
        result.scorer, split, stage=result.stage, **protocol_kwargs
    )
    if path is not None:
        tmp = path.with_suffix(f".tmp-{os.getpid()}")
        tmp.write_text(json.dumps(metrics, indent=2, sort_keys=True))
        tmp.rename(path)
    return metrics
