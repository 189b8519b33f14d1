"""Items added through ``POST /items``: what a valid one is, and the durable store of them.

``NewItem.parse`` checks a posted item and refuses bad input with a message (the service
answers 422). ``ItemStore`` keeps every posted item in an append-only SQLite table
(``catalog_items``, schema in ``lmrec.data.feedback``; by default in the feedback store's
file): WAL mode, ``synchronous=FULL``, so an item acknowledged to the client survives a
crash. A row also holds the text encoder's output, so a restarted service re-applies the
stored items without re-encoding them. The ``feedback`` ingest source reads the same table
(``lmrec.data.feedback.read_added_items``): added items reach the next retraining.

``categories`` are accepted as a ``|``-separated string (the contract's form) or a list of
strings (no ``|`` inside one); either way they are stored as one ``|``-joined string,
blanks and repeats dropped.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lmrec.data.feedback import ITEM_FIELDS, ITEMS_SCHEMA, ITEMS_TABLE, items_query, latest_items
from lmrec.features.text import assemble
from lmrec.serving.feedback import open_durable

MAX_ID_CHARS = 256
MAX_TITLE_CHARS = 1_000
MAX_TEXT_CHARS = 20_000
MAX_CATEGORIES = 50
MAX_CATEGORY_CHARS = 100


def _string(name: str, value: object, limit: int, required: bool) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string, got {type(value).__name__}")
    if required and not value.strip():
        raise ValueError(f"{name} must not be empty")
    if len(value) > limit:
        raise ValueError(f"{name} is longer than {limit} characters ({len(value)})")
    return value


def _categories(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        parts = value.split("|")
    elif isinstance(value, list):
        parts = [
            _string(f"categories[{i}]", c, MAX_CATEGORY_CHARS, False) for i, c in enumerate(value)
        ]
        if any("|" in c for c in parts):
            raise ValueError("a category in a list must not contain '|' (the separator)")
    else:
        raise ValueError(f"categories must be a string or a list of strings, not {value!r}")
    kept = list(dict.fromkeys(c.strip() for c in parts if c.strip()))
    if len(kept) > MAX_CATEGORIES:
        raise ValueError(f"at most {MAX_CATEGORIES} categories, got {len(kept)}")
    if any(len(c) > MAX_CATEGORY_CHARS for c in kept):
        raise ValueError(f"a category is longer than {MAX_CATEGORY_CHARS} characters")
    return "|".join(kept)


@dataclass(frozen=True)
class NewItem:
    """A posted item, checked: ``categories`` is the ``|``-joined form."""

    item_id: str
    title: str
    text: str = ""
    categories: str = ""

    @classmethod
    def parse(cls, item_id: object, title: object, text: object, categories: object) -> NewItem:
        """Check a posted item. Raises ValueError with a message naming the bad field."""
        item_id = _string("item_id", item_id, MAX_ID_CHARS, True)
        if item_id != item_id.strip():
            raise ValueError("item_id must not start or end with whitespace")
        return cls(
            item_id=item_id,
            title=_string("title", title, MAX_TITLE_CHARS, True).strip(),
            text=_string("text", "" if text is None else text, MAX_TEXT_CHARS, False),
            categories=_categories(categories),
        )

    @property
    def encoder_text(self) -> str:
        """What the encoder reads: title, text and categories assembled as at preprocess."""
        return assemble(self.title, self.text, self.categories)


@dataclass(frozen=True)
class StoredItem:
    """An item as the store holds it: the latest posted version, first addition time."""

    seq: int
    item: NewItem
    added_at: float
    encoder: str | None = None
    embedding: np.ndarray | None = None


class ItemStore:
    """The append-only SQLite log of posted items (see the module docstring).

    One connection shared by the threads of a process, serialised by a lock (as
    ``lmrec.serving.feedback.FeedbackStore``, which may use the same file).

    Args:
        path: the database file; its folder and the table are created when missing.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._conn = open_durable(self.path, ITEMS_SCHEMA)

    def append(
        self, item: NewItem, added_at: float, encoder: str | None, embedding: np.ndarray | None
    ) -> int:
        """Store one posted item; return its sequence number once it is on disk."""
        blob = None if embedding is None else np.asarray(embedding, dtype=np.float32).tobytes()
        values = (item.item_id, item.title, item.text, item.categories, added_at, encoder, blob)
        marks = ", ".join("?" * len(ITEM_FIELDS))
        sql = f"INSERT INTO {ITEMS_TABLE} ({', '.join(ITEM_FIELDS)}) VALUES ({marks})"
        with self._lock:
            return int(self._conn.execute(sql, values).lastrowid)

    def read(self, since_seq: int = 0) -> list[StoredItem]:
        """Items posted after ``since_seq``, one per id (its latest row), first-seen order."""
        with self._lock:
            rows = self._conn.execute(*items_query(since_seq)).fetchall()
        out = []
        for seq, item_id, title, text, categories, added_at, encoder, blob in latest_items(rows):
            out.append(
                StoredItem(
                    seq=int(seq),
                    item=NewItem(item_id, title, text, categories),
                    added_at=float(added_at),
                    encoder=encoder,
                    embedding=None if blob is None else np.frombuffer(blob, np.float32).copy(),
                )
            )
        return out

    def last_seq(self) -> int:
        """The highest sequence number stored (0 when empty)."""
        with self._lock:
            found = self._conn.execute(f"SELECT MAX(seq) FROM {ITEMS_TABLE}").fetchone()[0]
        return int(found or 0)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> ItemStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
