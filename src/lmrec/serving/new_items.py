"""Items added at serving time (``POST /items``): encoded, applied to engines, re-applied.

An item's text (title, text and categories assembled as preprocess does) is encoded with
the encoder and settings the bundle's embeddings came from (its ``encoder.json``: name,
weights digest, ``max_length``, ``normalize``), on CPU, loaded once on first use. The item
then becomes, in an engine:

- similar-searchable and explainable: its L2-normalised embedding joins ``engine.text``;
- recommendable (models with a text tower, the LM-powered one): its vector is the model's
  own ``item_vectors`` of that text with no ID embedding, what the model uses for every item
  without training interactions; it joins the item matrix, the faiss index, the numpy user
  encoder's input table (so posted histories may hold it) and the prepared lists of known
  users (``known_users.put_item``). Models without a text tower (the baselines), or whose
  encoder was fine-tuned in training (their text vectors are not the bundle's encoder's),
  cannot score it: it is similar-searchable only, and left out of posted histories;
- fresh for the exposure policy (no training interaction, added now).

An id already served is an update: title, categories and text vector replaced (a trained
item keeps its ID embedding). Every posted item is stored first (``ItemStore``, with its
embedding) and re-applied to each engine a load or reload brings, unless that model was
trained on the same text (its catalog has the id with that text).

Threading: engines being served are changed only on the event loop's thread, where the
async endpoints read them, so a request never sees half an item. Encoding and the durable
write run in a worker thread first. A model loaded meanwhile may miss an item stored while
it was loading: ``sync`` catches an engine up from the store, and the service calls it
(one integer comparison) before each request. One worker process (``workers=1``) serves.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lmrec.io import LmrecError
from lmrec.serving import known_users
from lmrec.serving.catalog_store import ItemStore, NewItem, StoredItem

log = logging.getLogger(__name__)

#: texts per encoder pass when re-encoding stored items
ENCODE_BATCH = 32


def encoder_key(record: dict[str, Any] | None) -> str:
    """A fingerprint of an encoder record: the same key, the same embeddings."""
    if not record:
        raise LmrecError(
            "the served bundle does not record its text encoder (encoder.json): "
            "rebuild it with `lmrec package` to add items"
        )
    fields = ("encoder", "weights_sha256", "max_length", "normalize", "pooling")
    return json.dumps({name: record.get(name) for name in fields}, sort_keys=True)


class Encoders:
    """Text encoders by record, each loaded once on first use, on CPU; one pass at a time."""

    def __init__(self) -> None:
        self._loaded: dict[str, Any] = {}
        self._lock = threading.Lock()

    def encode(self, record: dict[str, Any], texts: list[str]) -> np.ndarray:
        """The embed stage's output for ``texts``: float32 ``[len(texts), dim]``."""
        import torch

        key = encoder_key(record)
        with self._lock:
            encoder = self._loaded.get(key) or self._load(key, record)
            torch.set_num_threads(int(os.environ.get("LMREC_TORCH_THREADS", "1")))
            return encoder.encode(
                texts, ENCODE_BATCH, int(record["max_length"]), bool(record["normalize"])
            )

    def _load(self, key: str, record: dict[str, Any]) -> Any:
        from lmrec.text.encoder import TextEncoder, weights_sha256

        encoder = TextEncoder(str(record["encoder"]), device="cpu")
        expected = record.get("weights_sha256")
        if expected and weights_sha256(encoder.path) != expected:
            raise LmrecError(
                f"encoder {record['encoder']!r} at {encoder.path} has other weights than the "
                "one the served embeddings came from"
            )
        log.info("text encoder %s loaded for new items", record["encoder"])
        self._loaded[key] = encoder
        return encoder


def _model_vectors(engine: Any, embeddings: np.ndarray, indices: list[int | None]) -> np.ndarray:
    """The model's item vectors for these text embeddings (``SequentialNet.item_vectors``):
    text alone for added items (index None or past the model's catalog), text plus the
    trained ID embedding for the model's own items."""
    import torch

    net = engine.item_net
    out = []
    with torch.no_grad():
        for embedding, index in zip(embeddings, indices, strict=True):
            row = torch.from_numpy(np.asarray(embedding, np.float32)).to(net.bos.device)
            table = row[None, :].expand(net.n_items, -1)  # table[i] is this text, for any i
            if index is None or index >= engine.model_items:
                index, keep = 0, torch.zeros(net.n_items, device=row.device)  # no ID part
            else:
                keep = None
            at = torch.tensor([index], device=row.device)
            out.append(net.item_vectors(at, keep, table)[0].float().cpu().numpy())
    return np.stack(out).astype(np.float32)


def _unit(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)


def apply(engine: Any, items: list[StoredItem], embeddings: np.ndarray) -> list[str]:
    """Add ``items`` to ``engine`` or update them; "added" / "updated" for each."""
    indices = [engine.index.get(s.item.item_id) for s in items]
    text = _unit(np.asarray(embeddings, dtype=np.float32))
    vectors = _model_vectors(engine, embeddings, indices) if engine.vectorized else None
    new = [j for j, i in enumerate(indices) if i is None]
    if new:
        fresh_vectors = None if vectors is None else vectors[new]
        _append(engine, [items[j] for j in new], text[new], fresh_vectors)
    updates = [(j, i) for j, i in enumerate(indices) if i is not None]
    for j, i in updates:
        engine.titles[i] = items[j].item.title
        engine.categories[i] = _categories(items[j].item)
    if updates:
        rows = [i for _, i in updates]
        engine.text = engine.text.copy()  # a new array: the old one may be the bundle's
        engine.text[rows] = text[[j for j, _ in updates]]
        if vectors is not None:
            engine.item_matrix = engine.item_matrix.copy()
            engine.item_matrix[rows] = vectors[[j for j, _ in updates]]
    if vectors is not None:
        _index_vectors(engine, [engine.index[s.item.item_id] for s in items], vectors, new)
    engine.set_fresh()
    return ["added" if i is None else "updated" for i in indices]


def _categories(item: NewItem) -> frozenset[str]:
    return frozenset(c for c in item.categories.split("|") if c)


def _append(engine: Any, items: list[StoredItem], text: np.ndarray, vectors: Any) -> None:
    start = engine.n_items
    for offset, stored in enumerate(items):
        engine.item_ids.append(stored.item.item_id)
        engine.titles.append(stored.item.title)
        engine.categories.append(_categories(stored.item))
        engine.index[stored.item.item_id] = start + offset
    added = np.arange(start, start + len(items))
    engine.popularity = np.concatenate([engine.popularity, np.zeros(len(items))])
    engine.added_at = np.concatenate([engine.added_at, [s.added_at for s in items]])
    engine.popular_order = np.concatenate([engine.popular_order, added])  # 0 interactions: last
    engine.text = np.concatenate([engine.text, text])
    if vectors is not None:
        engine.item_matrix = np.concatenate([engine.item_matrix, vectors])
    engine.n_items = start + len(items)


def _index_vectors(engine: Any, rows: list[int], vectors: np.ndarray, new: list[int]) -> None:
    """Hand changed item vectors to the faiss index, the user encoder and known users."""
    if engine.user_encoder is not None:
        engine.user_encoder.items = engine.item_matrix
    if engine.faiss_index is not None:
        for row, vector in zip(rows, vectors, strict=True):
            engine.faiss_index.put(row, vector)
    top_k = engine.params.precompute_top_k
    if len(rows) == 1:
        known_users.put_item(
            engine.user_cache, rows[0], vectors[0], top_k, engine.top_unseen(), new=bool(new)
        )
    elif engine.user_cache and top_k > 0:  # many at once (a restart): prepare lists anew
        known_users.refresh(engine.user_cache, list(engine.user_cache), engine.top_unseen(), top_k)


def trained_on(engine: Any, item: NewItem) -> bool:
    """Whether ``engine``'s model was trained on ``item`` as it is now: its catalog has the
    id, with the same encoder text (then the stored item is not applied over it)."""
    row = engine.index.get(item.item_id)
    texts = engine.trained_text
    if texts is None or row is None or row >= engine.model_items:
        return False
    return texts[row] == item.encoder_text


@dataclass(frozen=True)
class Prepared:
    """A posted item, stored: its sequence number and embeddings by encoder key."""

    seq: int
    embeddings: dict[str, np.ndarray]


@dataclass
class NewItems:
    """``POST /items`` in one service process: the store, the encoders, and keeping every
    served engine up to date with the store (threading: the module docstring).

    Args:
        db: the SQLite file of the store (the feedback store's by default).
    """

    db: str | Path
    encoders: Encoders = field(default_factory=Encoders)
    #: the highest sequence number stored so far (engines behind it get ``sync``)
    last_seq: int = 0
    _store: ItemStore | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def store(self) -> ItemStore:
        with self._lock:
            if self._store is None:
                self._store = ItemStore(self.db)
            return self._store

    def _seen_seq(self, seq: int) -> None:
        with self._lock:
            self.last_seq = max(self.last_seq, seq)

    def reapply(self, engine: Any) -> None:
        """Apply every stored item to a freshly loaded ``engine`` (not yet served). Never
        raises: a failure is logged and the engine is served without the stored items."""
        try:
            store = self.store()
            self._seen_seq(store.last_seq())
            self._apply_rows(engine, store.read(), None)
        except Exception as err:  # serving the model matters more than the added items
            log.error("stored items not applied to model %s: %s", engine.version, err)
        engine.applied_seq = max(engine.applied_seq, self.last_seq)

    def prepare(self, item: NewItem, engines: dict[str, Any]) -> Prepared:
        """Encode ``item`` for every served engine's encoder, then store it durably (in a
        worker thread: both take milliseconds or more)."""
        records = {encoder_key(e.encoder): e.encoder for e in engines.values()}
        texts = [item.encoder_text]
        embeddings = {key: self.encoders.encode(rec, texts)[0] for key, rec in records.items()}
        key = encoder_key(engines["champion"].encoder)
        seq = self.store().append(item, time.time(), key, embeddings[key])
        self._seen_seq(seq)
        return Prepared(seq, embeddings)

    def sync(self, engine: Any, prepared: Prepared | None = None) -> None:
        """Apply to a served ``engine`` what was stored since it was last brought up to
        date (on the event loop's thread). Failures are logged, not raised."""
        target = max(self.last_seq, prepared.seq if prepared is not None else 0)
        if engine.applied_seq >= target:
            return
        seen, engine.applied_seq = engine.applied_seq, target  # a failure is not retried
        try:
            self._apply_rows(engine, self.store().read(seen), prepared)
        except Exception as err:  # the request being answered matters more
            log.error("stored items not applied to model %s: %s", engine.version, err)

    def _apply_rows(self, engine: Any, rows: list[StoredItem], prepared: Prepared | None) -> None:
        rows = [r for r in rows if not trained_on(engine, r.item)]
        if not rows:
            return
        key = encoder_key(engine.encoder)
        given = prepared.embeddings.get(key) if prepared is not None else None
        vectors = [
            given
            if given is not None and r.seq == prepared.seq
            else (r.embedding if r.encoder == key else None)
            for r in rows
        ]
        missing = [j for j, v in enumerate(vectors) if v is None]
        if missing:  # stored for another encoder: encode again
            texts = [rows[j].item.encoder_text for j in missing]
            for j, vector in zip(missing, self.encoders.encode(engine.encoder, texts), strict=True):
                vectors[j] = vector
        engine.applied_seq = max(engine.applied_seq, max(r.seq for r in rows))
        apply(engine, rows, np.stack(vectors))
