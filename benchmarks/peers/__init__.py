"""Open-source peer recommenders, trained on lmrec's split and scored by lmrec's protocol.

Every peer is a callable ``peer(split, seed=0, stage="test", *, params=None, cache=True)``
returning a ``PeerResult`` whose ``scorer`` goes straight into
``lmrec.evaluation.protocol.evaluate_protocol(result.scorer, split, stage=stage)`` (or
``evaluate_peer(result, split)``, which also caches the metrics).

Peers (module, registry name):

* ``implicit_peers``: ``implicit-als``, ``implicit-bpr``
* ``lightfm_peers``: ``lightfm-warp`` (identity + genre item features), ``lightfm-genre``
  (genre features only: a content model that can score cold items)
* ``recbole_peers``: ``recbole-sasrec``, ``recbole-gru4rec`` (run in ``.venv-recbole``)

Each module is imported only when one of its peers is asked for, so a missing optional
library affects only its own peers.
"""

from __future__ import annotations

import importlib

from .common import (
    Fitted,
    MatrixScorer,
    PeerFn,
    PeerResult,
    cache_root,
    evaluate_peer,
    split_fingerprint,
)

#: Registry name -> module (relative to this package) that defines it in its ``PEERS``.
PEER_MODULES: dict[str, str] = {
    "implicit-als": "implicit_peers",
    "implicit-bpr": "implicit_peers",
    "lightfm-warp": "lightfm_peers",
    "lightfm-genre": "lightfm_peers",
    "recbole-sasrec": "recbole_peers",
    "recbole-gru4rec": "recbole_peers",
}


def get_peer(name: str) -> PeerFn:
    """The entry point of peer ``name`` (imports its module on first use).

    Raises:
        KeyError: for an unknown name.
        ImportError: when the peer's library is not installed.
    """
    if name not in PEER_MODULES:
        raise KeyError(f"unknown peer {name!r}; known: {sorted(PEER_MODULES)}")
    module = importlib.import_module(f".{PEER_MODULES[name]}", __name__)
    return module.PEERS[name]


__all__ = [
    "PEER_MODULES",
    "Fitted",
    "MatrixScorer",
    "PeerFn",
    "PeerResult",
    "cache_root",
    "evaluate_peer",
    "get_peer",
    "split_fingerprint",
]
