"""The exposure policy's list surgery (lmrec.serving.exposure)."""

from __future__ import annotations

import numpy as np
import pytest

from lmrec.serving.exposure import (
    TEXT_WINDOW,
    ExposurePolicy,
    PickScale,
    PopularityPrior,
    apply_to_scores,
    best_fresh_scores,
    list_ranks,
    merge,
    score_threshold,
    text_profiles,
)

FRESH = np.zeros(20, dtype=bool)
FRESH[[15, 16, 17]] = True


def test_fresh_items_take_the_last_slots_and_the_head_stays():
    top = list(range(10))
    assert merge(top, [16, 15, 17], 10, 2, FRESH) == [0, 1, 2, 3, 4, 5, 6, 7, 16, 15]


def test_listed_fresh_items_count_and_keep_their_places():
    top = [0, 15, 1, 2, 3, 4, 5, 6, 7, 16]  # two fresh items already in the list
    assert merge(top, [15, 16, 17], 10, 2, FRESH) == top
    assert merge(top, [15, 16, 17], 10, 3, FRESH) == [0, 15, 1, 2, 3, 4, 5, 6, 16, 17]


def test_short_catalogs_and_too_few_fresh_items():
    assert merge([0, 1, 2], [15], 5, 2, FRESH) == [0, 1, 2, 15]  # room: nothing dropped
    assert merge(list(range(10)), [15], 10, 3, FRESH) == [*range(9), 15]  # only one fresh


def test_policy_reserves_nothing_below_min_k_or_when_off():
    policy = ExposurePolicy(slots=2, min_k=5)
    assert [policy.reserved(k) for k in (1, 4, 5, 10)] == [0, 0, 2, 2]
    assert ExposurePolicy(slots=0).reserved(10) == 0
    with pytest.raises(ValueError, match="max_age_days"):
        ExposurePolicy(max_age_days=0)


def test_fresh_means_few_interactions_and_young_when_the_age_is_known():
    policy = ExposurePolicy(max_interactions=2, max_age_days=1.0)
    counts = np.array([0, 1, 2, 0, 0])
    added = np.array([np.nan, np.nan, np.nan, 1000.0, 1000.0 - 2 * 86_400])
    assert policy.fresh_mask(counts).tolist() == [True, True, False, True, True]
    assert policy.fresh_mask(counts, added, now=1000.0).tolist() == [True, True, False, True, False]
    with pytest.raises(ValueError, match="now"):
        policy.fresh_mask(counts, added)


def test_batch_lists_skip_excluded_items_and_rank_targets():
    scores = np.tile(np.arange(20, 0, -1, dtype=float), (2, 1))  # item 0 best ... 19 worst
    excluded = np.zeros((2, 20), dtype=bool)
    excluded[1, 15] = True  # user 1 has seen fresh item 15
    lists = apply_to_scores(scores, excluded, FRESH, 5, ExposurePolicy(slots=1, min_k=5))
    assert lists.tolist() == [[0, 1, 2, 3, 15], [0, 1, 2, 3, 16]]
    assert list_ranks(lists, np.array([15, 9]), miss=5).tolist() == [4, 5]


def test_a_score_threshold_withholds_the_slot_from_weak_fresh_items():
    scores = np.tile(np.arange(20, 0, -1, dtype=float), (2, 1))
    scores[1, 15] = 30.0  # user 1's fresh item 15 is strong (and tops the list on its own)
    scores[1, 0] = 31.0
    policy = ExposurePolicy(slots=1, min_k=5, min_score_quantile=0.5)
    threshold = score_threshold(best_fresh_scores(scores, FRESH), policy)
    assert threshold == pytest.approx(np.quantile([5.0, 30.0], 0.5))
    lists = apply_to_scores(scores, np.zeros((2, 20), dtype=bool), FRESH, 5, policy, threshold)
    assert lists.tolist() == [[0, 1, 2, 3, 4], [0, 15, 1, 2, 3]]
    assert score_threshold(np.array([1.0, 2.0]), ExposurePolicy()) == -np.inf


def test_the_params_block_and_the_policy_name_the_same_settings():
    """``serve.exposure`` is passed whole (``ExposurePolicy(**block.model_dump())``) by the
    engine and the evaluate stage: a setting added to one must exist in the other."""
    import dataclasses

    from lmrec.config import ExposureParams

    fields = {f.name: f.default for f in dataclasses.fields(ExposurePolicy)}
    assert fields == ExposureParams().model_dump()


def test_the_pick_scale_is_the_mean_and_std_over_every_chunk():
    rng = np.random.default_rng(0)
    model, text = rng.normal(3.0, 2.0, (50, 7)), rng.normal(0.2, 0.1, (50, 7))
    model[4, 2] = -np.inf  # an excluded pair: left out of both parts
    scale = PickScale.fit([(model[:20], text[:20]), (model[20:], text[20:])])
    keep = np.isfinite(model)
    assert scale.model_mean == pytest.approx(model[keep].mean())
    assert scale.model_std == pytest.approx(model[keep].std())
    assert scale.text_mean == pytest.approx(text[keep].mean())
    assert scale.text_std == pytest.approx(text[keep].std())
    z = scale.blend(model, text, 0.25)
    expected = 0.75 * (model - model[keep].mean()) / model[keep].std()
    expected += 0.25 * (text - text[keep].mean()) / text[keep].std()
    assert np.allclose(z[keep], expected[keep]) and z[4, 2] == -np.inf
    assert PickScale.fit([]) == PickScale()


def test_a_text_weighted_pick_takes_the_fresh_item_closest_in_text():
    """The model prefers fresh item 15; the user's history reads like fresh item 17: with
    enough text weight, 17 takes the slot (and the threshold applies to the pick score)."""
    scores = np.tile(np.arange(20, 0, -1, dtype=float), (1, 1))
    text = np.eye(20, dtype=np.float32)
    text[17] = text[3]  # item 17's text is item 3's
    affinity = text_profiles(text, [np.array([3])]) @ text.T
    scale = PickScale(model_mean=10.0, model_std=5.0, text_mean=0.05, text_std=0.2)
    excluded = np.zeros((1, 20), dtype=bool)
    excluded[0, 3] = True
    for weight, chosen in ((0.0, 15), (0.5, 17)):
        policy = ExposurePolicy(slots=1, min_k=5, text_weight=weight)
        pick = scale.blend(scores, affinity, weight)
        lists = apply_to_scores(scores, excluded, FRESH, 5, policy, pick=pick)
        assert lists.tolist() == [[0, 1, 2, 4, chosen]]
    lists = apply_to_scores(scores, excluded, FRESH, 5, policy, float(pick[0, 17]) + 1e-6, pick)
    assert lists.tolist() == [[0, 1, 2, 4, 5]]  # below the bar: no slot


def test_a_text_profile_is_the_mean_of_the_last_items():
    text = np.eye(TEXT_WINDOW + 5, dtype=np.float32)
    history = np.arange(TEXT_WINDOW + 5)
    profiles = text_profiles(text, [history, np.zeros(0, dtype=np.int64)])
    assert np.allclose(profiles[0], text[history[-TEXT_WINDOW:]].mean(axis=0))
    assert not profiles[1].any()
    with pytest.raises(ValueError, match="text_weight"):
        ExposurePolicy(text_weight=1.5)


def test_the_popularity_prior_ranks_fresh_items_like_the_popular_items_they_read_like():
    """Warm items of one text direction are popular, of another rare: a fresh item reading
    like the popular ones gets the higher prior; the prior is z-scored over fresh items."""
    rng = np.random.default_rng(0)
    popular, rare = np.eye(8)[0], np.eye(8)[1]
    warm = [popular + 0.1 * rng.normal(size=8) for _ in range(20)]
    warm += [rare + 0.1 * rng.normal(size=8) for _ in range(20)]
    fresh_text = [popular + 0.1 * rng.normal(size=8), rare + 0.1 * rng.normal(size=8)]
    fresh_text.append(0.5 * (popular + rare))
    text = np.array(warm + fresh_text)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    counts = np.array([200] * 20 + [2] * 20 + [0, 0, 0])
    fresh = counts == 0
    prior = PopularityPrior.fit(text, counts, fresh, ridge=0.1)
    z = prior(text[fresh])
    assert z[0] > z[2] > z[1]
    assert z.mean() == pytest.approx(0.0, abs=1e-9) and z.std() == pytest.approx(1.0)
    assert PopularityPrior.fit(text, counts, np.arange(43) >= 1) is None  # one item known
    assert PopularityPrior.fit(text, counts, np.arange(43) == 0) is None  # one fresh
    with pytest.raises(ValueError, match="prior_weight"):
        ExposurePolicy(prior_weight=-1.0)


def test_the_gate_counts_strong_picks_and_the_prior_chooses_which_fresh_item():
    """Row 0: fresh item 15 passes the bar on its pick score, 16 does not but the prior
    prefers it: the list gets one slot and it goes to 16. Row 1: no fresh item passes, so
    however strong the prior, no slot."""
    scores = np.tile(np.arange(20, 0, -1, dtype=float), (2, 1))
    pick = np.full((2, 20), -5.0)
    pick[0, 15], pick[0, 16] = 2.0, 0.5
    pick[1, 15], pick[1, 16] = 0.5, 0.4
    choose = pick.copy()
    choose[:, 16] += 3.0  # the prior
    policy = ExposurePolicy(slots=1, min_k=5)
    excluded = np.zeros((2, 20), dtype=bool)
    lists = apply_to_scores(scores, excluded, FRESH, 5, policy, 1.0, pick, choose)
    assert lists.tolist() == [[0, 1, 2, 3, 16], [0, 1, 2, 3, 4]]
    two = ExposurePolicy(slots=2, min_k=5)  # one strong pick: one of the two slots
    lists = apply_to_scores(scores, excluded, FRESH, 5, two, 1.0, pick, choose)
    assert lists.tolist() == [[0, 1, 2, 3, 16], [0, 1, 2, 3, 4]]
    same = apply_to_scores(scores, excluded, FRESH, 5, policy, 1.0, pick)  # no prior
    assert same.tolist() == [[0, 1, 2, 3, 15], [0, 1, 2, 3, 4]]
