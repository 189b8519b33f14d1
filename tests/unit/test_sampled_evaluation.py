"""The protocol on a seeded user sample: its 95% intervals bracket the full evaluation."""

from __future__ import annotations

import numpy as np
import pytest

from lmrec.evaluation import protocol as P
from lmrec.evaluation.intervals import mean_interval
from lmrec.features.dataset import load_split
from lmrec.models.itemknn import ItemKNNParams, ItemKNNRecommender
from lmrec.serving.exposure import ExposurePolicy
from lmrec.serving.offline import served_metrics

RANK_METRICS = ("hr@10", "ndcg@10", "mrr@10", "recall@20")


@pytest.fixture(scope="module")
def fitted(tiny_split_dir):
    """The tiny profile's split and an item-KNN with 3 neighbours fitted on it: its metrics
    sit mid-range (HR@10 ~0.7; 100 neighbours hit every target, popularity almost none,
    and an interval over 40 users cannot bracket a value pinned at 0 or 1)."""
    split = load_split(tiny_split_dir)
    return split, ItemKNNRecommender(ItemKNNParams(neighbors=3)).fit(split)


def test_every_user_means_an_exact_value_and_zero_width(fitted):
    split, model = fitted
    full = P.evaluate_protocol(model, split)
    overall = full["overall"]
    assert overall["users_evaluated"] == overall["users_total"] == overall["n_users"]
    assert full["sample"]["method"] == "every user"
    for metric in RANK_METRICS:
        assert overall["ci95"][metric] == {"low": overall[metric], "high": overall[metric]}
    assert P.sample_users(split, "test", overall["n_users"], 0) is None


def test_sampled_interval_brackets_the_full_evaluation(fitted):
    split, model = fitted
    full = P.evaluate_protocol(model, split)
    n_total = full["overall"]["users_total"]
    n_sample = n_total // 3
    covered = {metric: [] for metric in RANK_METRICS}
    for seed in range(30):
        sampled = P.evaluate_protocol(model, split, max_users=n_sample, sample_seed=seed)
        overall = sampled["overall"]
        assert overall["users_evaluated"] == n_sample and overall["users_total"] == n_total
        for metric in RANK_METRICS:
            low, high = overall["ci95"][metric]["low"], overall["ci95"][metric]["high"]
            assert low <= overall[metric] <= high
            if seed == 0:  # the acceptance check: this seed's interval brackets the truth
                assert low < full["overall"][metric] < high, (metric, low, high)
                assert 0 < full["overall"][metric] < 1, "a degenerate metric brackets nothing"
            covered[metric].append(low <= full["overall"][metric] <= high)
    for metric, hits in covered.items():  # nominal 95%; small samples run a little under
        assert np.mean(hits) >= 0.8, (metric, np.mean(hits))


def test_the_sample_is_seeded_and_the_slices_keep_its_users(fitted):
    split, model = fitted
    one = P.sample_users(split, "test", 40, 3)
    np.testing.assert_array_equal(one, P.sample_users(split, "test", 40, 3))
    assert not np.array_equal(one, P.sample_users(split, "test", 40, 4))
    assert len(np.unique(one)) == 40 and (split.test_items[one] >= 0).all()
    result = P.evaluate_protocol(model, split, max_users=40, sample_seed=3)
    new_users = P.new_item_rows(split, "test")[0]
    new = result["slices"]["new_items"]
    assert new["users_evaluated"] == np.isin(new_users, one).sum()
    assert new["users_total"] == len(new_users)
    cold_users = np.unique(split.cold["user_idx"])
    assert result["slices"]["cold_items"]["users_evaluated"] == np.isin(cold_users, one).sum()


def test_served_metrics_score_only_the_sample(fitted):
    split, model = fitted
    users = P.sample_users(split, "test", 40, 3)
    policy = ExposurePolicy(slots=0, text_weight=0.0)
    served = served_metrics(model, split, [policy], users=users)[0]
    assert served["overall"]["n_users"] == 40
    raw = P.evaluate_protocol(model, split, max_users=40, sample_seed=3)["overall"]
    assert served["overall"]["hr@10"] == pytest.approx(raw["hr@10"])  # no slots: same lists


def test_mean_interval_matches_the_textbook_formula():
    values = np.array([1.0, 0.0, 0.0, 1.0, 1.0])
    low, high = mean_interval(values, population=50)
    half = 1.96 * values.std(ddof=1) / np.sqrt(5) * np.sqrt(45 / 49)
    assert (low, high) == pytest.approx((0.6 - half, 0.6 + half))
    with pytest.raises(ValueError, match="population"):
        mean_interval(values, population=4)
