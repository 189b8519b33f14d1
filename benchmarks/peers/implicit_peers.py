"""Peers from ``implicit`` (Frederickson): ALS (Hu, Koren & Volinsky) and BPR (Rendle et al.).

Neither model folds new history into a user vector, so each is fitted on the histories of
the stage it is scored for (``common.stage_pairs``: train pairs for "val", train + validation
item for "test") and scores user ``u`` as ``user_factors[u] @ item_factors.T``. Items with no
interaction keep the model's own factors (zero for ALS, the random initialisation for BPR):
the cold slice sees an ID-only model's near-chance behaviour, as intended.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from lmrec.features.dataset import SplitData

from .common import Fitted, PeerFn, PeerResult, cached_peer, params_key, stage_pairs, timed

NUM_THREADS = int(os.environ.get("LMREC_BENCH_THREADS", "2"))
#: implicit's BPR is hogwild SGD: reproducible only on one thread, which is the default.
BPR_THREADS = int(os.environ.get("LMREC_BPR_THREADS", "1"))


@dataclasses.dataclass(frozen=True)
class ALSParams:
    """``implicit.cpu.als.AlternatingLeastSquares`` settings (binary interactions).

    Confidence of an observed pair is ``alpha`` (implicit scales the stored 1 by alpha).
    """

    factors: int = 64
    regularization: float = 0.1
    alpha: float = 10.0
    iterations: int = 15


@dataclasses.dataclass(frozen=True)
class BPRParams:
    """``implicit.cpu.bpr.BayesianPersonalizedRanking`` settings."""

    factors: int = 64
    learning_rate: float = 0.01
    regularization: float = 0.01
    iterations: int = 100


def user_item_matrix(split: SplitData, stage: str) -> sp.csr_matrix:
    """Binary float32 CSR ``[n_users, n_items]`` of the ``stage`` histories."""
    users, items = stage_pairs(split, stage)
    data = np.ones(len(users), dtype=np.float32)
    matrix = sp.csr_matrix((data, (users, items)), shape=(split.n_users, split.n_items))
    matrix.sum_duplicates()
    matrix.data[:] = 1.0
    return matrix


def _implicit_version() -> str:
    import implicit

    return str(implicit.__version__)


def _fit_factors(make_model: Callable[[], Any], matrix: sp.csr_matrix) -> tuple[np.ndarray, float]:
    """Build and fit an implicit model on ``matrix``; return (scores, fit seconds)."""
    # implicit parallelises itself; a multi-threaded BLAS underneath only oversubscribes
    # (implicit warns about it when the model is built, hence building it in here too).
    with threadpool_limits(limits=1, user_api="blas"):
        model = make_model()
        with timed() as seconds:
            model.fit(matrix, show_progress=False)
    user_f = np.asarray(model.user_factors, dtype=np.float32)
    item_f = np.asarray(model.item_factors, dtype=np.float32)
    return user_f @ item_f.T, seconds[0]


def _implicit_peer(
    name: str,
    split: SplitData,
    seed: int,
    stage: str,
    p: ALSParams | BPRParams,
    make: Callable[[], Any],
    threads: int,
    cache: bool,
    extra_key: dict[str, Any],
) -> PeerResult:
    """Fit an implicit model (built by ``make``) on the ``stage`` histories, through the cache."""
    version = _implicit_version()

    def fit(_: Path) -> Fitted:
        scores, seconds = _fit_factors(make, user_item_matrix(split, stage))
        info = {"params": params_key(p), "seed": seed, "library": f"implicit {version}"}
        info["num_threads"] = threads
        return Fitted({stage: scores}, seconds, info)

    key = {"params": params_key(p), "seed": seed, "stage": stage, "lib": version, **extra_key}
    return cached_peer(name, split, stage, key, fit, cache=cache)


def als_peer(
    split: SplitData,
    seed: int = 0,
    stage: str = "test",
    *,
    params: ALSParams | None = None,
    cache: bool = True,
) -> PeerResult:
    """implicit ALS fitted on the ``stage`` histories; scores every user's row."""
    from implicit.cpu.als import AlternatingLeastSquares

    p = params or ALSParams()

    def make() -> AlternatingLeastSquares:
        return AlternatingLeastSquares(
            factors=p.factors,
            regularization=p.regularization,
            alpha=p.alpha,
            iterations=p.iterations,
            num_threads=NUM_THREADS,
            random_state=seed,
        )

    return _implicit_peer("implicit-als", split, seed, stage, p, make, NUM_THREADS, cache, {})


def bpr_peer(
    split: SplitData,
    seed: int = 0,
    stage: str = "test",
    *,
    params: BPRParams | None = None,
    cache: bool = True,
) -> PeerResult:
    """implicit BPR fitted on the ``stage`` histories; scores every user's row."""
    from implicit.cpu.bpr import BayesianPersonalizedRanking

    p = params or BPRParams()

    def make() -> BayesianPersonalizedRanking:
        return BayesianPersonalizedRanking(
            factors=p.factors,
            learning_rate=p.learning_rate,
            regularization=p.regularization,
            iterations=p.iterations,
            num_threads=BPR_THREADS,
            random_state=seed,
        )

    extra = {"threads": BPR_THREADS}
    return _implicit_peer("implicit-bpr", split, seed, stage, p, make, BPR_THREADS, cache, extra)


PEERS: dict[str, PeerFn] = {"implicit-als": als_peer, "implicit-bpr": bpr_peer}
