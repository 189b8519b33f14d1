"""The recommendation engine behind the HTTP service: no HTTP here, so it is tested directly.

``Engine`` answers the docs/design.md API on one bundle:

- ``recommend``: by ``user_id`` (the stored history of a known user), by a posted
  ``history`` (a session, no retraining), or both (stored history, then the session).
  Unknown users with no history get the cold-start path (most popular items). Options:
  ``exclude_seen``, ``explain`` (per item: the history item it is closest to in text space
  and the shared categories), ``diversity`` (MMR re-ranking over a candidate pool).
  Posted history items the engine does not know are left out and listed in
  ``ignored_items``; only a request with nothing known left is refused (422).
- ``similar_items``: nearest items by text embedding.

New-item exposure (``serve.exposure``): on every path, once the list is chosen, its last
``policy.reserved(k)`` slots go to the best fresh items (``lmrec.serving.exposure``,
``lmrec.serving.fresh``) unless it already holds that many: the model's best for the user,
or on the cold-start path (no user to score for) the most recently added first. On the
model path a fresh item needs a pick score of at least ``fresh.threshold`` (the
``min_score_quantile`` of the known users' best pick scores, set in ``set_fresh``); with
``text_weight`` > 0 fresh items are picked by their model score blended with their text
affinity to the user's recent history (``exposure.PickScale``, fitted on the same users).
Items join at serving time through ``lmrec.serving.new_items`` (``POST /items``);
``model_items`` is the size of the catalog the model was trained on.

Scoring is exact for small catalogs; at ``serve.faiss_min_items`` items and above, models
with a two-tower form (``user_vectors`` + ``item_matrix``: the LM-powered model) search a
faiss HNSW inner-product index instead. ``serve.quantize_int8`` applies dynamic int8
quantisation to the user encoder. Bad requests raise ``RequestError`` (-> HTTP 4xx).

Length: one class, ``Engine``, answers every endpoint on one bundle; its parts that stand
alone already live beside it (``user_encoder``, ``known_users``, ``exposure``, ``fresh``,
``faiss_index``, ``catalog_store``).
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from lmrec.artifacts import item_index
from lmrec.config import ServeParams
from lmrec.data.contract import pseudonymise_id, user_id_salt
from lmrec.models.registry import load_model
from lmrec.serving import known_users
from lmrec.serving.bundle import Bundle
from lmrec.serving.exposure import (
    TEXT_WINDOW,
    ExposurePolicy,
    PickScale,
    prior_terms,
    score_threshold,
    text_profiles,
)
from lmrec.serving.faiss_index import FaissIndex
from lmrec.serving.fresh import FreshItems
from lmrec.serving.known_users import KnownUser
from lmrec.serving.rerank import mmr

log = logging.getLogger(__name__)

#: Known users whose best fresh-item scores set the exposure's score threshold.
THRESHOLD_USERS = 20_000
#: Known users per chunk when the threshold is computed (bounds its memory).
THRESHOLD_CHUNK = 1024

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
        self.index = item_index(self.item_ids)
        self.popularity = catalog["popularity"].to_numpy(dtype=np.float64)
        self.popular_order = np.lexsort((np.arange(len(self.popularity)), -self.popularity))
        self.text = bundle.text_vectors
        self.n_items = self.model_items = len(self.item_ids)
        self.added_at = np.full(self.n_items, np.nan)  # catalog items: addition time unknown
        self.applied_seq = 0  # the last stored added item applied (lmrec.serving.new_items)
        self.encoder = bundle.encoder  # the text encoder record new items are encoded with
        texts = catalog["text"] if "text" in catalog.columns else None  # what it was trained on
        self.trained_text = None if texts is None else texts.astype(str).tolist()
        self.version = str(bundle.info.get("version", "unversioned"))
        self.two_tower = hasattr(self.model, "user_vectors") and hasattr(self.model, "item_matrix")
        self.item_matrix = self.model.item_matrix() if self.two_tower else None
        # The float network, kept for new items' vectors even when int8 replaces model.net.
        self.item_net = getattr(self.model, "net", None) if self.two_tower else None
        # A fine-tuned encoder's text vectors are not the bundle's: added items are then
        # searchable, not scored (they would be scored from the wrong embedding).
        tuned = (bundle.root / "model" / "encoder_adapter").exists()
        self.vectorized = getattr(self.item_net, "text_proj", None) is not None and not tuned
        if params.quantize_int8 and self.two_tower:
            self._quantize()
        self.faiss_index = None
        if self.two_tower and self.n_items >= params.faiss_min_items:
            matrix = self.item_matrix
            self.faiss_index = FaissIndex(matrix, params.faiss_hnsw_m, params.faiss_ef_search)
        self.user_encoder = self._numpy_user_encoder() if self.two_tower else None
        self.user_cache: dict[str, KnownUser] = {}
        if self.two_tower and 0 < len(bundle.users) <= params.user_vector_cache_max:
            # a request by user id alone: a slice, or one search, not a transformer pass
            self.user_cache = known_users.prepare(
                bundle.users, self.model.user_vectors, self.top_unseen(), params.precompute_top_k
            )
        self.salt = user_id_salt()  # read once: it is per deployment
        self.fresh = FreshItems(ExposurePolicy(**params.exposure.model_dump()))
        self.set_fresh()

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

    def top_unseen(self) -> known_users.TopUnseen:
        """How known users' lists are prepared: faiss search or exact scoring."""
        if self.faiss_index is not None:
            return self.faiss_index.top_unseen
        return known_users.top_unseen_exact(self.item_matrix)

    def set_fresh(self) -> None:
        """Recompute the fresh items (at load and whenever the catalog changes), the pick's
        scale (``text_weight`` or ``prior_weight`` > 0), the popularity prior
        (``prior_weight`` > 0) and the pick score a fresh item needs for a reserved slot
        (``exposure.score_threshold`` over the known users' best pick scores). They need
        known users' vectors: two-tower models only; others pick by the model's score with
        no bar."""
        scorable = self.n_items if self.vectorized else self.model_items
        fresh = self.fresh
        fresh.update(self.popularity, self.added_at, scorable)
        fresh.threshold, fresh.scale, fresh.prior = -np.inf, None, None
        if not self.user_cache or not len(fresh.scored):
            return
        keys = list(self.user_cache)[:THRESHOLD_USERS]  # a bounded sample
        policy = fresh.policy
        if policy.text_weight > 0 or policy.prior_weight > 0:
            fresh.scale = PickScale.fit(self._calibration_chunks(keys))
        terms = prior_terms(self.text, self.popularity, fresh.mask, policy.prior_weight)
        if terms is not None:
            fresh.prior = np.zeros(self.n_items)
            fresh.prior[fresh.mask] = terms
        if fresh.policy.min_score_quantile > 0:
            best = []
            for model, text in self._calibration_chunks(keys):
                pick = (
                    model
                    if fresh.scale is None
                    else fresh.scale.blend(model, text, fresh.policy.text_weight)
                )
                best.append(pick.max(axis=1))
            fresh.threshold = score_threshold(np.concatenate(best), fresh.policy)

    def _calibration_chunks(self, keys: list[str]):
        """(model scores, text affinities) ``[users, fresh items]`` per chunk of known users."""
        matrix, text = self.item_matrix[self.fresh.scored], self.text[self.fresh.scored]
        for start in range(0, len(keys), THRESHOLD_CHUNK):
            chunk = keys[start : start + THRESHOLD_CHUNK]
            vectors = np.stack([self.user_cache[key].vector for key in chunk])
            affinity = None
            if self.fresh.policy.text_weight > 0:
                profiles = text_profiles(self.text, [self.bundle.users[key] for key in chunk])
                affinity = profiles @ text.T
            yield vectors @ matrix.T, affinity

    def _affinity(self, items: np.ndarray) -> Callable[[np.ndarray], np.ndarray] | None:
        """``candidates -> their text affinity to this history`` (``exposure.text_profiles``)
        when the fresh pick uses it."""
        if self.fresh.scale is None or self.fresh.policy.text_weight == 0 or not len(items):
            return None
        text, profile = self.text, text_profiles(self.text, [items[-TEXT_WINDOW:]])[0]
        return lambda candidates: text[candidates] @ profile

    # ---------------------------------------------------------- requests
    def check_k(self, k: Any) -> int:
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= self.params.max_k:
            raise RequestError(f"k must be an integer from 1 to {self.params.max_k}, got {k!r}")
        return min(k, self.n_items)

    def resolve_history(
        self, user_id: str | None, history: list[str] | None
    ) -> tuple[np.ndarray, str | None, list[str]]:
        """(item indices, oldest first; the known user's bundle key, or None; the posted
        item ids left out: unknown, or added items the model cannot read in a history)."""
        stored = np.zeros(0, dtype=np.int64)
        known, ignored = None, []
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
            readable = self.n_items if self.user_encoder is not None else self.model_items
            found = [self.index.get(i, readable) for i in history]
            unknown = [i for i, j in zip(history, found, strict=True) if j >= readable]
            if unknown and len(unknown) == len(history) and known is None:
                shown = ", ".join(repr(i) for i in unknown[:5])
                more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
                raise RequestError(f"no item of the history is known: {shown}{more}", status=422)
            posted = np.array([j for j in found if j < readable], dtype=np.int64)
            ignored = list(dict.fromkeys(unknown))
        return np.concatenate([stored, posted]), known, ignored

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
        items, known, ignored = self.resolve_history(user_id, history)
        cached = self.user_cache.get(known) if known is not None and not history else None
        user = cached.vector if cached is not None else None
        scores = None
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
            if self.two_tower and user is None:
                user = self._user_vector(items)
            pool = max(k, self.params.candidate_pool) if diversity > 0 else k
            candidates, scores = self._top(items, min(pool, available), excluded, user)
            picked = self._mmr(candidates, k, float(diversity)) if diversity > 0 else candidates[:k]
        fixed = known if cached is not None and exclude_seen else None  # same fresh pick
        picked = self._expose(picked, k, excluded, user, scores, items, fixed)
        if explain:
            picked = [Scored(s.item, s.score, self._reason(s.item, items)) for s in picked]
        return {
            "items": [self._item(s, explain) for s in picked],
            "path": path,
            "known_user": known is not None,
            "history_length": len(items),
            "ignored_items": ignored,
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
        return [Scored(int(i), float(self.popularity[i]), self._cold_reason(i)) for i in order]

    def _user_vector(self, items: np.ndarray) -> np.ndarray:
        if self.user_encoder is not None:
            return self.user_encoder.user_vector(items)
        return self.model.user_vectors([items])[0]

    def _scores(self, items: np.ndarray, user: np.ndarray | None) -> np.ndarray:
        """Every item's score (a new array); items the model cannot score get -inf."""
        if self.two_tower:
            scores = self.item_matrix @ user  # float32
        else:
            scores = self.model.score([items])[0].astype(np.float64)
        if len(scores) < self.n_items:  # added items the model has no vector for
            scores = np.concatenate([scores, np.full(self.n_items - len(scores), -np.inf)])
        return scores

    def _top(
        self, items: np.ndarray, n: int, excluded: np.ndarray, user: np.ndarray | None
    ) -> tuple[list[Scored], np.ndarray | None]:
        """The ``n`` best items outside ``excluded``, and every item's score when they were
        all computed (exact scoring; None from faiss)."""
        if n <= 0:
            return [], None
        if self.faiss_index is not None:
            top, top_scores = self.faiss_index.search(user, n, excluded)
            return [Scored(int(i), float(s)) for i, s in zip(top, top_scores, strict=True)], None
        scores = self._scores(items, user)
        scores[excluded] = -np.inf
        candidates = np.arange(len(scores))
        return self._ranked(candidates, scores[candidates], n, user), scores

    def _ranked(
        self, candidates: np.ndarray, scores: np.ndarray, n: int, user: np.ndarray | None
    ) -> list[Scored]:
        """The ``n`` best finite-scored ``candidates``, best first (ties by index)."""
        if n < len(candidates):
            part = (-scores).argpartition(n - 1)[:n]
            candidates, scores = candidates[part], scores[part]
        candidates = candidates[np.isfinite(scores)]
        if self.two_tower:  # as the lists prepared for known users are ranked
            top, top_scores = known_users.ranked(self.item_matrix, candidates, user)
        else:
            scores = scores[np.isfinite(scores)]
            order = np.lexsort((candidates, -scores))
            top, top_scores = candidates[order], scores[order]
        return [Scored(i, s) for i, s in zip(top.tolist(), top_scores.tolist(), strict=True)]

    # ----------------------------------------------------------- exposure
    def _expose(
        self,
        picked: list[Scored],
        k: int,
        excluded: np.ndarray,
        user: np.ndarray | None,
        scores: np.ndarray | None,
        history: np.ndarray,
        known: str | None = None,
    ) -> list[Scored]:
        """``picked`` with the exposure policy's reserved slots (module docstring)."""
        head = [s.item for s in picked]
        reserved = self.fresh.reserved(head, k)
        if not reserved:
            return picked
        if not len(history):  # the cold-start path
            items = self.fresh.recent_outside(excluded, reserved).tolist()
            extra = [Scored(i, float(self.popularity[i]), self._cold_reason(i)) for i in items]
        else:
            matrix = self.item_matrix if self.two_tower else None
            text = None if known in self.fresh.by_user else self._affinity(history)
            items, values, pick = self.fresh.best(
                reserved, excluded, user, scores, matrix, known, text
            )
            bar = self.fresh.threshold  # a weak fresh item does not take a slot
            extra = [Scored(i, s) for i, s, p in zip(items, values, pick, strict=True) if p >= bar]
        order = self.fresh.merge(head, [s.item for s in extra], k, reserved)
        chosen = {s.item: s for s in extra} | {s.item: s for s in picked}
        return [chosen[i] for i in order]

    def _mmr(self, candidates: list[Scored], k: int, diversity: float) -> list[Scored]:
        vectors = self.text[[c.item for c in candidates]]
        chosen = mmr(np.array([c.score for c in candidates]), vectors, k, diversity)
        return [candidates[i] for i in chosen]

    # ------------------------------------------------------- explanation
    def _cold_reason(self, item: int) -> str:
        if item not in self.fresh.members:
            return f"popular: {int(self.popularity[item])} interactions"
        added = self.added_at[item]
        if np.isnan(added):
            return f"new: {int(self.popularity[item])} interactions"
        return "new: added " + time.strftime("%Y-%m-%d", time.gmtime(added))

    def _reason(self, item: int, history: np.ndarray) -> str:
        if len(history) == 0:
            return self._cold_reason(item)
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
