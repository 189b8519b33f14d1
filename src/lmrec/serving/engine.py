"""The recommendation engine behind the HTTP service: no HTTP here, so it is tested directly.

``Engine`` answers the DESIGN.md API on one bundle:

- ``recommend``: by ``user_id`` (the stored history of a known user), by a posted
  ``history`` (a session, no retraining), or both (stored history, then the session).
  Unknown users with no history get the cold-start path (most popular items). Options:
  ``exclude_seen``, ``explain`` (per item: the history item it is closest to in text space
  and the shared categories), ``diversity`` (MMR re-ranking over a candidate pool).
- ``similar_items``: nearest items by text embedding.

Scoring is exact for small catalogs; at ``serve.faiss_min_items`` items and above, models
with a two-tower form (``user_vectors`` + ``item_matrix``: the LM-powered model) search a
faiss HNSW inner-product index instead. ``serve.quantize_int8`` applies dynamic int8
quantisation to the user encoder. Bad requests raise ``RequestError`` (-> HTTP 4xx).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from lmrec.config import ServeParams
from lmrec.data.contract import pseudonymise_id, user_id_salt
from lmrec.models.registry import load_model
from lmrec.serving import known_users
from lmrec.serving.bundle import Bundle
from lmrec.serving.known_users import KnownUser

log = logging.getLogger(__name__)

#: History items considered when explaining a recommendation (the most recent ones).
EXPLAIN_WINDOW = 50


class RequestError(ValueError):
    """A request the engine refuses; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class Scored(NamedTuple):  # a tuple: built ~10 times per request, cheaply
    item: int
    score: float
    reason: str | None = None


class Engine:
    """Top-k recommendations from a loaded bundle."""

    def __init__(self, bundle: Bundle, params: ServeParams) -> None:
        self.bundle, self.params = bundle, params
        self.model = load_model(bundle.root / "model")
        catalog = bundle.catalog.sort_values("item_idx")
        self.item_ids = catalog["item_id"].astype(str).tolist()
        self.titles = catalog["title"].astype(str).tolist()
        self.categories = [
            frozenset(c for c in str(cats).split("|") if c) for cats in catalog["categories"]
        ]
        self.index = {item: i for i, item in enumerate(self.item_ids)}
        self.popularity = catalog["popularity"].to_numpy(dtype=np.float64)
        self.popular_order = np.lexsort((np.arange(len(self.popularity)), -self.popularity))
        self.text = bundle.text_vectors
        self.n_items = len(self.item_ids)
        self.version = str(bundle.info.get("version", "unversioned"))
        self.two_tower = hasattr(self.model, "user_vectors") and hasattr(self.model, "item_matrix")
        self.item_matrix = self.model.item_matrix() if self.two_tower else None
        if params.quantize_int8 and self.two_tower:
            self._quantize()
        self.faiss_index = None
        if self.two_tower and self.n_items >= params.faiss_min_items:
            self.faiss_index = self._build_faiss()
        self.user_encoder = self._numpy_user_encoder() if self.two_tower else None
        self.user_cache = self._cache_users() if self.two_tower else {}
        self.salt = user_id_salt()  # read once: it is per deployment

    @classmethod
    def load(cls, root: str | Path, params: ServeParams) -> Engine:
        return cls(Bundle.read(root), params)

    # ------------------------------------------------------------ setup
    def _quantize(self) -> None:
        import torch

        net = self.model.net
        # The transformer's fused fast path reads Linear weights as tensors; quantised
        # Linear layers expose them as methods, so the plain path must be used.
        torch.backends.mha.set_fastpath_enabled(False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notices
            self.model.net = torch.ao.quantization.quantize_dynamic(
                net, {torch.nn.Linear}, dtype=torch.qint8
            )
        log.info("user encoder quantised to int8 (dynamic)")

    def _numpy_user_encoder(self) -> Any:
        """The sequential model's user tower in numpy for single requests (several times
        faster than torch at batch size 1); None for other models, or with int8 weights
        (those stay on torch's quantised kernels)."""
        if self.params.quantize_int8 or not hasattr(self.model, "net"):
            return None
        from lmrec.serving.user_encoder import NumpyUserEncoder

        try:
            return NumpyUserEncoder(self.model.net, self.item_matrix, self.model.params.max_len)
        except (AttributeError, ValueError) as err:
            log.info("user vectors through torch: %s", err)
            return None

    def _cache_users(self) -> dict[str, KnownUser]:
        """Known users' vectors, seen items and best ``serve.precompute_top_k`` unseen items
        (``lmrec.serving.known_users``): a request by user id alone is then a slice, or one
        inner-product search, instead of a transformer pass and a catalog scan."""
        users = self.bundle.users
        if not 0 < len(users) <= self.params.user_vector_cache_max:
            return {}
        if self.faiss_index is not None:
            top_unseen = self._top_unseen_faiss
        else:
            top_unseen = known_users.top_unseen_exact(self.item_matrix)
        cache = known_users.prepare(
            users, self.model.user_vectors, top_unseen, self.params.precompute_top_k
        )
        log.info(
            "known users: %d vectors, top %d unseen items each",
            len(cache),
            self.params.precompute_top_k,
        )
        return cache

    def _top_unseen_faiss(
        self, vectors: np.ndarray, seen: list[np.ndarray], k: int
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        out = []
        for vector, items in zip(vectors, seen, strict=True):
            picked = self._top_faiss(vector, min(k, self.n_items - len(items)), items)
            out.append(
                (
                    np.array([p.item for p in picked], dtype=np.int64),
                    np.array([p.score for p in picked], dtype=np.float32),
                )
            )
        return out

    def _build_faiss(self) -> Any:
        import faiss

        matrix = np.ascontiguousarray(self.item_matrix, dtype=np.float32)
        index = faiss.IndexHNSWFlat(
            matrix.shape[1], self.params.faiss_hnsw_m, faiss.METRIC_INNER_PRODUCT
        )
        index.hnsw.efConstruction = max(40, self.params.faiss_ef_search)
        index.add(matrix)
        index.hnsw.efSearch = self.params.faiss_ef_search
        log.info("faiss HNSW inner-product index over %d items", self.n_items)
        return index

    # ---------------------------------------------------------- requests
    def check_k(self, k: Any) -> int:
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= self.params.max_k:
            raise RequestError(f"k must be an integer from 1 to {self.params.max_k}, got {k!r}")
        return min(k, self.n_items)

    def resolve_history(
        self, user_id: str | None, history: list[str] | None
    ) -> tuple[np.ndarray, str | None]:
        """(item indices, oldest first; the known user's bundle key, or None)."""
        stored = np.zeros(0, dtype=np.int64)
        known = None
        if user_id is not None:
            if not user_id or len(user_id) > 256:
                raise RequestError("user_id must be a non-empty string of at most 256 characters")
            for key in (pseudonymise_id(user_id, self.salt), user_id):  # pseudonymised too
                if key in self.bundle.users:
                    stored, known = self.bundle.users[key], key
                    break
        posted = np.zeros(0, dtype=np.int64)
        if history:
            if len(history) > self.params.max_history:
                raise RequestError(
                    f"history has {len(history)} items; at most {self.params.max_history} "
                    "are accepted (send the most recent ones)",
                    status=413,
                )
            unknown = [i for i in history if i not in self.index]
            if unknown:
                shown = ", ".join(repr(i) for i in unknown[:5])
                more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
                raise RequestError(f"unknown item ids in history: {shown}{more}", status=422)
            posted = np.array([self.index[i] for i in history], dtype=np.int64)
        return np.concatenate([stored, posted]), known

    def recommend(
        self,
        user_id: str | None = None,
        history: list[str] | None = None,
        k: int = 10,
        exclude_seen: bool = True,
        explain: bool = False,
        diversity: float = 0.0,
    ) -> dict[str, Any]:
        k = self.check_k(k)
        if not 0.0 <= float(diversity) <= 1.0:
            raise RequestError(f"diversity must be between 0 and 1, got {diversity!r}")
        items, known = self.resolve_history(user_id, history)
        cached = self.user_cache.get(known) if known is not None and not history else None
        user = cached.vector if cached is not None else None
        if not exclude_seen:
            excluded = np.zeros(0, dtype=np.int64)
        else:
            excluded = cached.seen if cached is not None else np.unique(items)
        available = self.n_items - len(excluded)
        path = "model" if len(items) else "cold_start"
        if len(items) == 0:
            picked = self._popular(k, excluded)
        elif (
            cached is not None
            and exclude_seen
            and diversity == 0
            and k <= self.params.precompute_top_k
        ):  # the list prepared at load (known_users): exactly what _top would return
            top = zip(cached.top[:k].tolist(), cached.top_scores[:k].tolist(), strict=True)
            picked = [Scored(i, s) for i, s in top]
        else:
            pool = max(k, self.params.candidate_pool) if diversity > 0 else k
            candidates = self._top(items, min(pool, available), excluded, user)
            picked = self._mmr(candidates, k, float(diversity)) if diversity > 0 else candidates[:k]
        if explain:
            picked = [Scored(s.item, s.score, self._reason(s.item, items)) for s in picked]
        return {
            "items": [self._item(s, explain) for s in picked],
            "path": path,
            "known_user": known is not None,
            "history_length": len(items),
        }

    def similar_items(self, item_id: str, k: int = 10) -> dict[str, Any]:
        k = self.check_k(k)
        if not isinstance(item_id, str) or item_id not in self.index:
            raise RequestError(f"unknown item_id {item_id!r}", status=404)
        anchor = self.index[item_id]
        sims = self.text @ self.text[anchor]
        sims[anchor] = -np.inf
        order = np.lexsort((np.arange(self.n_items), -sims))[: min(k, self.n_items - 1)]
        picked = [Scored(int(i), float(sims[i])) for i in order]
        return {"items": [self._item(s, False) for s in picked]}

    # ----------------------------------------------------------- scoring
    def _popular(self, k: int, excluded: np.ndarray) -> list[Scored]:
        mask = np.ones(self.n_items, dtype=bool)
        mask[excluded] = False
        order = self.popular_order[mask[self.popular_order]][:k]
        return [
            Scored(
                int(i),
                float(self.popularity[i]),
                f"popular: {int(self.popularity[i])} interactions",
            )
            for i in order
        ]

    def _top(
        self, items: np.ndarray, n: int, excluded: np.ndarray, user: np.ndarray | None = None
    ) -> list[Scored]:
        if n <= 0:
            return []
        if self.two_tower and user is None:
            if self.user_encoder is not None:
                user = self.user_encoder.user_vector(items)
            else:
                user = self.model.user_vectors([items])[0]
        if self.faiss_index is not None:
            return self._top_faiss(user, n, excluded)
        if self.two_tower:
            scores = self.item_matrix @ user  # float32, a new array
        else:
            scores = self.model.score([items])[0].astype(np.float64)
        scores[excluded] = -np.inf
        top = (-scores).argpartition(n - 1)[:n] if n < self.n_items else np.arange(self.n_items)
        top = top[np.isfinite(scores[top])]
        if self.two_tower:  # as the lists prepared for known users are ranked
            top, top_scores = known_users.ranked(self.item_matrix, top, user)
        else:
            top = top[np.lexsort((top, -scores[top]))]
            top_scores = scores[top]
        return [Scored(i, s) for i, s in zip(top.tolist(), top_scores.tolist(), strict=True)]

    def _top_faiss(self, user: np.ndarray, n: int, excluded: np.ndarray) -> list[Scored]:
        user = np.ascontiguousarray(user[None, :], dtype=np.float32)
        drop = set(excluded.tolist())
        want = n + len(drop)
        while True:
            scores, ids = self.faiss_index.search(user, min(want, self.n_items))
            picked = [
                Scored(int(i), float(s))
                for i, s in zip(ids[0], scores[0], strict=True)
                if i >= 0 and int(i) not in drop
            ]
            if len(picked) >= n or want >= self.n_items:
                return picked[:n]
            want *= 2

    def _mmr(self, candidates: list[Scored], k: int, diversity: float) -> list[Scored]:
        """Maximal marginal relevance: trade relevance for text dissimilarity to the picks."""
        if len(candidates) <= 1:
            return candidates[:k]
        scores = np.array([c.score for c in candidates])
        span = scores.max() - scores.min()
        relevance = (scores - scores.min()) / span if span > 0 else np.ones_like(scores)
        vectors = self.text[[c.item for c in candidates]]
        lam = 1.0 - diversity
        chosen: list[int] = []
        max_sim = np.full(len(candidates), -np.inf)
        for _ in range(min(k, len(candidates))):
            penalty = np.where(np.isfinite(max_sim), max_sim, 0.0)
            gain = lam * relevance - (1 - lam) * penalty
            gain[chosen] = -np.inf
            best = int(np.argmax(gain))
            chosen.append(best)
            max_sim = np.maximum(max_sim, vectors @ vectors[best])
        return [candidates[i] for i in chosen]

    # ------------------------------------------------------- explanation
    def _reason(self, item: int, history: np.ndarray) -> str:
        if len(history) == 0:
            return f"popular: {int(self.popularity[item])} interactions"
        recent = np.unique(history[-EXPLAIN_WINDOW:])
        sims = self.text[recent] @ self.text[item]
        best = int(recent[int(np.argmax(sims))])
        shared = sorted(self.categories[item] & self.categories[best])
        reason = (
            f"similar to {self.titles[best] or self.item_ids[best]!r} ({float(sims.max()):.2f})"
        )
        if shared:
            reason += f"; shares {', '.join(shared)}"
        return reason

    def _item(self, scored: Scored, explain: bool) -> dict[str, Any]:
        out: dict[str, Any] = {
            "item_id": self.item_ids[scored.item],
            "title": self.titles[scored.item],
            "score": round(scored.score, 6),
        }
        if explain:
            out["reason"] = scored.reason
        return out
