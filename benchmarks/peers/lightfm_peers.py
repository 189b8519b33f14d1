"""LightFM peers (Kula, 2015): WARP with item identity + genre features, and genre-only.

* ``lightfm-warp``: each item is represented by its own identity feature plus its genre
  features (rows normalised to sum 1, as ``lightfm.data.Dataset`` does), the hybrid model
  of the LightFM paper.
* ``lightfm-genre``: genre features only, no identity features: a pure content model whose
  item vectors are sums of genre vectors, so cold items (never in training) get the same
  kind of score as any other item. It is the content peer on the cold slice.

Users have identity features only. Like the other factorisation peers, each is fitted on the
histories of the stage it is scored for (``common.stage_pairs``) and scores user ``u`` as
``user_embedding[u] @ item_embedding.T + item_bias`` (LightFM's ``predict`` without the
per-user constant, which does not change a ranking).

The installable package is ``rectools-lightfm`` (import name ``lightfm``): the same LightFM
1.17 code with a build that works under PEP 517 and numpy 2 (the ``lightfm`` 1.17 sdist's
setup.py fails to build with current setuptools).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from lmrec.features.dataset import SplitData

from .common import (
    Fitted,
    PeerFn,
    PeerResult,
    cached_peer,
    item_genres,
    params_key,
    stage_pairs,
    timed,
)

#: LightFM's hogwild SGD is not reproducible with more than one thread; one is the default.
NUM_THREADS = int(os.environ.get("LMREC_LIGHTFM_THREADS", "1"))
NO_GENRE = "(no genre)"


@dataclasses.dataclass(frozen=True)
class LightFMParams:
    """``lightfm.LightFM`` settings and the number of training epochs."""

    no_components: int = 64
    loss: str = "warp"
    learning_rate: float = 0.05
    item_alpha: float = 0.0
    user_alpha: float = 0.0
    max_sampled: int = 10
    epochs: int = 30


def item_feature_matrix(split: SplitData, *, identity: bool) -> tuple[sp.csr_matrix, list[str]]:
    """Row-normalised CSR ``[n_items, n_features]`` of (identity +) genre features.

    Items without a genre get the feature ``NO_GENRE``, so no item has an empty row.

    Returns:
        The matrix and the feature names (identity features first, as ``item:<index>``).
    """
    genres = [g or [NO_GENRE] for g in item_genres(split)]
    vocab = sorted({g for item in genres for g in item})
    offset = split.n_items if identity else 0
    column = {g: offset + j for j, g in enumerate(vocab)}
    rows, cols = [], []
    for item, item_g in enumerate(genres):
        if identity:
            rows.append(item)
            cols.append(item)
        for g in item_g:
            rows.append(item)
            cols.append(column[g])
    data = np.ones(len(rows), dtype=np.float32)
    matrix = sp.csr_matrix((data, (rows, cols)), shape=(split.n_items, offset + len(vocab)))
    matrix.sum_duplicates()
    matrix = sp.diags(1.0 / np.asarray(matrix.sum(axis=1)).ravel()) @ matrix
    names = [f"item:{i}" for i in range(offset)] + [f"genre:{g}" for g in vocab]
    return matrix.astype(np.float32).tocsr(), names


def interaction_matrix(split: SplitData, stage: str) -> sp.coo_matrix:
    """Binary float32 COO ``[n_users, n_items]`` of the ``stage`` histories."""
    users, items = stage_pairs(split, stage)
    matrix = sp.csr_matrix(
        (np.ones(len(users), dtype=np.float32), (users, items)),
        shape=(split.n_users, split.n_items),
    )
    matrix.sum_duplicates()
    matrix.data[:] = 1.0
    return matrix.tocoo()


def _lightfm_version() -> str:
    from lightfm import __version__

    return str(__version__)


def _lightfm_peer(
    name: str,
    split: SplitData,
    seed: int,
    stage: str,
    params: LightFMParams,
    identity: bool,
    cache: bool,
) -> PeerResult:
    from lightfm import LightFM

    version = _lightfm_version()

    def fit(_: Path) -> Fitted:
        features, feature_names = item_feature_matrix(split, identity=identity)
        model = LightFM(
            no_components=params.no_components,
            loss=params.loss,
            learning_rate=params.learning_rate,
            item_alpha=params.item_alpha,
            user_alpha=params.user_alpha,
            max_sampled=params.max_sampled,
            random_state=seed,
        )
        interactions = interaction_matrix(split, stage)
        with timed() as seconds:
            model.fit(
                interactions,
                item_features=features,
                epochs=params.epochs,
                num_threads=NUM_THREADS,
            )
        _, user_emb = model.get_user_representations()
        item_bias, item_emb = model.get_item_representations(features)
        scores = user_emb.astype(np.float32) @ item_emb.astype(np.float32).T
        scores += item_bias.astype(np.float32)[None, :]
        info = {
            "params": params_key(params),
            "seed": seed,
            "library": f"lightfm {version}",
            "item_features": "identity+genre" if identity else "genre",
            "n_item_features": len(feature_names),
            "num_threads": NUM_THREADS,
        }
        return Fitted({stage: scores}, seconds[0], info)

    key = {"params": params_key(params), "seed": seed, "stage": stage, "lib": version}
    key["threads"] = NUM_THREADS
    return cached_peer(name, split, stage, key, fit, cache=cache)


def warp_peer(
    split: SplitData,
    seed: int = 0,
    stage: str = "test",
    *,
    params: LightFMParams | None = None,
    cache: bool = True,
) -> PeerResult:
    """LightFM WARP with identity + genre item features."""
    p = params or LightFMParams()
    return _lightfm_peer("lightfm-warp", split, seed, stage, p, identity=True, cache=cache)


def genre_peer(
    split: SplitData,
    seed: int = 0,
    stage: str = "test",
    *,
    params: LightFMParams | None = None,
    cache: bool = True,
) -> PeerResult:
    """LightFM WARP with genre item features only (a content model for cold items)."""
    p = params or LightFMParams()
    return _lightfm_peer("lightfm-genre", split, seed, stage, p, identity=False, cache=cache)


PEERS: dict[str, PeerFn] = {"lightfm-warp": warp_peer, "lightfm-genre": genre_peer}
