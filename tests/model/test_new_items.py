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

from .conftest import Planted, make_cold_planted, tiny_sequential

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


def test_text_only_items_win_full_catalog_slots(planted_new: Planted) -> None:
    split = planted_new.split
    model = tiny_sequential(planted_new).fit(split)
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
