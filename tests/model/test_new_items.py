"""New items reach full-catalog lists: the protocol's ``new_items`` slice on planted data
whose right answers are items the model never trained on (text alone says where they fit)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from lmrec.evaluation.protocol import new_item_slice
from lmrec.models.popularity import PopularityRecommender
from lmrec.serving.exposure import ExposurePolicy
from lmrec.serving.offline import served_metrics

from .conftest import Planted, group_text_embeddings, make_cold_planted, tiny_sequential

COLD_PER_GROUP = 3


@pytest.fixture(scope="module")
def planted_new() -> Planted:
    """The planted walks plus never-trained items, ``COLD_PER_GROUP`` per group whose stand-in
    text sits in the group; every user's cold interaction is one of their own group's."""
    planted = make_cold_planted(COLD_PER_GROUP)
    split, groups, n_groups = planted.split, planted.groups, len(planted.groups)
    rng = np.random.default_rng(5)
    rows = [
        (u, int(rng.choice(groups[u % n_groups][-COLD_PER_GROUP:])), len(split.train[u]))
        for u in range(split.n_users)
    ]
    cold_df = pd.DataFrame(rows, columns=["user_idx", "item_idx", "timestamp"])
    return Planted(dataclasses.replace(split, cold=cold_df), groups, planted.cold_items)


@pytest.fixture(scope="module")
def fitted(planted_new: Planted):
    return tiny_sequential(planted_new).fit(planted_new.split)


def test_text_only_items_win_full_catalog_slots(planted_new: Planted, fitted) -> None:
    split, model = planted_new.split, fitted
    result = new_item_slice(model, split, "test", k=10)
    assert result["n_users"] == split.n_users and result["n_items"] == len(planted_new.cold_items)
    chance = 10 / split.n_items
    assert result["hr@10"] >= 5 * chance, (result, chance)  # raw lists, whole catalog
    popular = new_item_slice(PopularityRecommender().fit(split), split, "test", k=10)
    assert popular["hr@10"] == 0.0  # no interactions, no popularity: never listed
    # The served lists: one reserved slot, given to the model's best fresh item.
    served = served_metrics(model, split, [ExposurePolicy(slots=1, max_age_days=None)])[0]
    assert served["new_items"]["hr@10"] >= 5 * chance, (served, chance)
    assert served["new_items"]["hr@10"] >= result["hr@10"]
    assert served["overall"]["fresh_per_list"] >= 1.0


def test_a_text_weighted_pick_needs_the_text_and_finds_the_group(planted_new: Planted, fitted):
    """At ``text_weight`` 1 the slot goes to the fresh item closest in text to the history:
    on the planted data, one of the user's own group's new items."""
    split = planted_new.split
    policy = ExposurePolicy(slots=1, max_age_days=None, text_weight=1.0)
    with pytest.raises(ValueError, match="needs `text`"):
        served_metrics(fitted, split, [policy])
    text = group_text_embeddings(planted_new.groups, split.n_items)
    served = served_metrics(fitted, split, [policy], text=text)[0]
    chance = 10 / split.n_items
    assert served["text_weight"] == 1.0
    # a random one of the group's new items would hit 1 / COLD_PER_GROUP of the time
    assert served["new_items"]["hr@10"] >= 1 / (2 * COLD_PER_GROUP), served
    assert served["new_items"]["hr@10"] >= 5 * chance
