"""Fixtures for the model tests: synthetic splits with known answers and tiny model configs.

To put a new model through the contract suite, register it in ``lmrec.models.registry``
and add a tiny-config factory to ``MODEL_FACTORIES`` below.
"""

from __future__ import annotations

import os

# Two shared CPU cores: keep BLAS single-threaded (must precede the numpy import).
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest
import torch

from lmrec.config import SequentialParams
from lmrec.features.dataset import SplitData
from lmrec.models.base import Recommender
from lmrec.models.itemknn import ItemKNNParams, ItemKNNRecommender
from lmrec.models.mf import MFParams, MFRecommender
from lmrec.models.popularity import PopularityRecommender
from lmrec.models.random import RandomParams, RandomRecommender
from lmrec.models.registry import MODELS
from lmrec.models.sequential import SequentialRecommender

torch.set_num_threads(1)

#: Registry name -> a small, fast, seeded configuration of that model.
MODEL_FACTORIES: dict[str, Callable[[], Recommender]] = {
    "popularity": PopularityRecommender,
    "random": lambda: RandomRecommender(RandomParams(seed=0)),
    "itemknn": lambda: ItemKNNRecommender(ItemKNNParams(neighbors=20)),
    "mf": lambda: MFRecommender(MFParams(factors=16, iterations=8, seed=0)),
    "sequential": lambda: tiny_sequential(make_planted()),
}


#: The recipe these tests were written for (the SequentialParams defaults until they became
#: params.yaml's): ID dropout, no weight decay, a constant learning rate, fixed training
#: windows, no label smoothing.
TEST_RECIPE = {
    "id_dropout": 0.3,
    "weight_decay": 0.0,
    "lr_schedule": "constant",
    "window_jitter": False,
    "label_smoothing": 0.0,
}


def tiny_sequential(planted: Planted, **changes) -> SequentialRecommender:
    """The LM model, tiny and seeded, with stand-in text embeddings for ``planted``."""
    tiny = {"dim": 32, "layers": 1, "max_len": 20, "epochs": 30, "batch_size": 64, "lr": 3.0e-3}
    params = {**tiny, **TEST_RECIPE, "device": "cpu", **changes}
    text = group_text_embeddings(planted.groups, planted.split.n_items)
    return SequentialRecommender(SequentialParams(**params), item_embeddings=text)


def group_text_embeddings(
    groups: Sequence[np.ndarray], n_items: int, dim: int = 16, noise: float = 0.5, seed: int = 0
) -> np.ndarray:
    """Stand-in item text embeddings: a group's items lie near the group's random centre.

    Items in no group (e.g. the planted cold items) get noise only. Rows are unit length,
    like sentence-transformer outputs.
    """
    rng = np.random.default_rng(seed)
    emb = noise * rng.normal(size=(n_items, dim))
    for group in groups:
        emb[group] += rng.normal(size=dim)
    return (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float32)


def make_split(
    train: Sequence[Sequence[int]],
    n_items: int,
    *,
    val: Sequence[int] | None = None,
    test: Sequence[int] | None = None,
    cold_items: Sequence[int] = (),
) -> SplitData:
    """A ``SplitData`` built in memory from per-user training sequences."""
    n_users = len(train)
    seqs = [np.asarray(s, dtype=np.int64) for s in train]
    flat = np.concatenate(seqs) if seqs else np.zeros(0, dtype=np.int64)
    is_cold = np.zeros(n_items, dtype=bool)
    is_cold[list(cold_items)] = True
    assert not is_cold[flat].any(), "cold items must not appear in training"
    items = pd.DataFrame(
        {
            "item_idx": np.arange(n_items),
            "item_id": [f"i{i}" for i in range(n_items)],
            "title": [f"Item {i}" for i in range(n_items)],
            "text": [f"text of item {i}" for i in range(n_items)],
            "categories": ["c"] * n_items,
            "is_cold": is_cold,
            "n_train": np.bincount(flat, minlength=n_items),
        }
    )
    none = np.full(n_users, -1, dtype=np.int64)
    return SplitData(
        train=seqs,
        val_items=none.copy() if val is None else np.asarray(val, dtype=np.int64),
        test_items=none.copy() if test is None else np.asarray(test, dtype=np.int64),
        train_times=[np.arange(len(s), dtype=np.int64) for s in seqs],
        user_ids=np.array([f"u{u}" for u in range(n_users)], dtype=object),
        items=items,
        cold=pd.DataFrame({"user_idx": np.zeros(0, np.int64), "item_idx": np.zeros(0, np.int64)}),
    )


@dataclass(frozen=True)
class Planted:
    """A split with a planted pattern, and the item groups that generated it."""

    split: SplitData
    groups: list[np.ndarray]  # per group, its items in successor order
    cold_items: np.ndarray


def make_planted(
    n_groups: int = 8, group_size: int = 16, n_users: int = 240, n_cold: int = 6, seed: int = 7
) -> Planted:
    """Users walk through one item group, each step usually to the group's next item.

    Item i of a group is followed by item i+1 (mod group size) with probability 0.8, else
    by item i+2. Each user's walk covers at most one lap, so the test item is never in the
    history. Item indices are shuffled so that index order carries no signal, and popularity
    is flat in expectation, so only history-aware models can beat chance.
    """
    rng = np.random.default_rng(seed)
    n_items = n_groups * group_size + n_cold
    perm = rng.permutation(n_items)
    groups = [perm[g * group_size : (g + 1) * group_size] for g in range(n_groups)]
    cold = np.sort(perm[n_groups * group_size :])
    train, val, test = [], [], []
    for user in range(n_users):
        group = groups[user % n_groups]
        steps = np.where(rng.random(rng.integers(6, 10) + 1) < 0.8, 1, 2)
        if steps.sum() >= group_size:
            steps[:] = 1
        pos = (rng.integers(group_size) + np.concatenate([[0], np.cumsum(steps)])) % group_size
        walk = group[pos]
        train.append(walk[:-2])
        val.append(walk[-2])
        test.append(walk[-1])
    split = make_split(train, n_items, val=val, test=test, cold_items=cold)
    return Planted(split=split, groups=groups, cold_items=cold)


def make_cold_planted(per_group: int) -> Planted:
    """The planted walks plus ``per_group`` never-trained items per group, text-wise in it:
    ``groups`` lists each group's warm items followed by its cold ones, so the stand-in text
    embeddings put a cold item next to its group's warm items."""
    base = make_planted(n_cold=0)
    n_warm = base.split.n_items
    cold = np.arange(n_warm, n_warm + per_group * len(base.groups))
    groups = [
        np.concatenate([group, cold[g * per_group : (g + 1) * per_group]])
        for g, group in enumerate(base.groups)
    ]
    split = make_split(
        base.split.train,
        n_warm + len(cold),
        val=base.split.val_items,
        test=base.split.test_items,
        cold_items=cold,
    )
    return Planted(split=split, groups=groups, cold_items=cold)


def hit_rate(model: Recommender, split: SplitData, k: int = 10) -> tuple[float, float]:
    """HR@k of the test item given the test-time history, and the same for a random ranker."""
    hits, chance = [], []
    for user in range(split.n_users):
        history = split.history_for(user, "test")
        top, _ = model.recommend(history, k)
        hits.append(split.test_items[user] in top)
        chance.append(k / (split.n_items - len(np.unique(history))))
    return float(np.mean(hits)), float(np.mean(chance))


@pytest.fixture(scope="session")
def planted() -> Planted:
    return make_planted()


@pytest.fixture(scope="session", params=sorted(MODELS))
def model_name(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="session")
def fitted(model_name: str, planted: Planted) -> Recommender:
    """Each registered model, tiny config, fitted once on the planted split (do not mutate)."""
    if model_name not in MODEL_FACTORIES:
        pytest.fail(f"model {model_name!r} is registered but has no factory in MODEL_FACTORIES")
    return MODEL_FACTORIES[model_name]().fit(planted.split)
