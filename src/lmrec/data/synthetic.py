"""A synthetic source with planted structure that tests (and models) can check.

Planted structure, all reproducible from the seed:
- topics: every item belongs to one topic; its title/text use that topic's words, so
  text embeddings cluster by topic;
- preferences correlated with text: each user prefers one or two topics and draws most
  items from them;
- a sequential pattern: within a topic, items form a fixed cycle ``successor``; with
  probability ``p_next`` a user's next item is the successor of the previous one;
- same-second ties: with probability ``p_same_second`` an event shares the previous
  event's timestamp, so the split's tie-break is exercised.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from lmrec.config import SyntheticParams
from lmrec.data.contract import interactions_frame, items_frame

_SYLLABLES = ("ka", "lo", "mi", "ru", "te", "so", "na", "vi", "be", "zu", "po", "xa", "fe", "di")
_T0 = 1_600_000_000  # 2020-09-13: synthetic clocks start here


@dataclass(frozen=True)
class SyntheticWorld:
    """The planted truth behind a synthetic data set."""

    item_topic: np.ndarray  # topic per item index
    successor: np.ndarray  # next item in the topic cycle, per item index
    user_topics: list[np.ndarray]  # preferred topics per user index
    topic_words: list[list[str]]


def _words(rng: np.random.Generator, n: int) -> list[str]:
    return ["".join(rng.choice(_SYLLABLES, size=3)) for _ in range(n)]


def _catalog(p: SyntheticParams, rng: np.random.Generator) -> tuple[pd.DataFrame, SyntheticWorld]:
    topic_words = [_words(rng, 6) for _ in range(p.n_topics)]
    item_topic = np.arange(p.n_items) % p.n_topics
    successor = np.empty(p.n_items, dtype=np.int64)
    for t in range(p.n_topics):
        members = rng.permutation(np.flatnonzero(item_topic == t))
        successor[members] = np.roll(members, -1)
    titles, texts = [], []
    for i, t in enumerate(item_topic):
        words = rng.choice(topic_words[t], size=3, replace=False)
        titles.append(f"{words[0].title()} {words[1]} {i}")
        texts.append(f"A story about {words[0]}, {words[1]} and {words[2]}.")
    items = items_frame(
        item_id=pd.Series([f"item{i:05d}" for i in range(p.n_items)]),
        title=pd.Series(titles),
        text=pd.Series(texts),
        categories=pd.Series([f"topic{t}" for t in item_topic]),
    )
    world = SyntheticWorld(item_topic, successor, [], topic_words)
    return items, world


class _Pools:
    """Per preferred-topic set: the candidate items and the cumulative Zipf weights.

    Built once per distinct topic set (at most ``n_topics`` choose 2 of them) instead of
    once per user: a per-user ``np.isin`` over the catalog and a per-draw ``cumsum`` over
    the pool made generation grow with users x items.
    """

    def __init__(self, world: SyntheticWorld) -> None:
        self.world = world
        self._cache: dict[tuple[int, ...], tuple[np.ndarray, np.ndarray]] = {}

    def get(self, topics: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        key = tuple(sorted(int(t) for t in topics))
        if key not in self._cache:
            pool = np.flatnonzero(np.isin(self.world.item_topic, topics))
            weights = 1.0 / np.arange(1, len(pool) + 1) ** 0.8  # Zipf-like popularity
            weights = weights / weights.sum()
            # numpy's Generator.choice(pool, p=weights) draws exactly this: one uniform,
            # searchsorted (right) into the normalised cumulative weights.
            cdf = weights.cumsum()
            cdf /= cdf[-1]
            self._cache[key] = pool, cdf
        return self._cache[key]


def _user_sequence(
    p: SyntheticParams,
    rng: np.random.Generator,
    world: SyntheticWorld,
    pools: _Pools,
    topics: np.ndarray,
) -> list[int]:
    pool, cdf = pools.get(topics)

    def draw() -> int:
        return int(pool[cdf.searchsorted(rng.random(), side="right")])

    mean = max(5, p.n_interactions // p.n_users)
    length = int(np.clip(rng.poisson(mean), 5, len(pool)))
    seq: list[int] = [draw()]
    seen = set(seq)
    while len(seq) < length:
        nxt = int(world.successor[seq[-1]])
        if rng.random() >= p.p_next or nxt in seen:
            nxt = draw()
            if nxt in seen:
                continue
        seq.append(nxt)
        seen.add(nxt)
    return seq


def generate(p: SyntheticParams) -> tuple[pd.DataFrame, pd.DataFrame, SyntheticWorld]:
    """Generate (interactions, items, planted truth) in the data contract."""
    rng = np.random.default_rng(p.seed)
    items, world = _catalog(p, rng)
    rows_user, rows_item, rows_ts = [], [], []
    user_topics = []
    pools = _Pools(world)
    for u in range(p.n_users):
        topics = rng.choice(
            p.n_topics, size=min(p.n_topics, 1 + int(rng.random() < 0.3)), replace=False
        )
        user_topics.append(np.sort(topics))
        seq = _user_sequence(p, rng, world, pools, topics)
        ts = _T0 + int(rng.integers(0, 180 * 86_400))
        for step, item in enumerate(seq):
            if step and rng.random() >= p.p_same_second:
                ts += int(rng.exponential(3_600)) + 1
            rows_user.append(f"user{u:05d}")
            rows_item.append(item)
            rows_ts.append(ts)
    item_ids = items["item_id"].to_numpy()
    n = len(rows_user)
    interactions = interactions_frame(
        user_id=pd.Series(rows_user),
        item_id=pd.Series(item_ids[np.asarray(rows_item)]),
        timestamp=pd.Series(rows_ts, dtype="int64"),
        event=pd.Series(rng.choice(["view", "click", "purchase"], size=n, p=[0.6, 0.3, 0.1])),
        value=pd.Series(rng.integers(1, 6, size=n).astype("float64")),
    )
    world = SyntheticWorld(world.item_topic, world.successor, user_topics, world.topic_words)
    return interactions, items, world
