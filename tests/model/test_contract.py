"""The contract every registered model passes (like implicit's RecommenderBaseTestMixin).

Parametrized over ``lmrec.models.registry.MODELS``; a new model joins by being registered
and given a tiny-config factory in ``conftest.MODEL_FACTORIES``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest

from lmrec.models.base import (
    CONFIG_FILE,
    FORMAT_VERSION,
    WEIGHTS_FILE,
    ModelLoadError,
    Params,
    Recommender,
)
from lmrec.models.popularity import PopularityRecommender
from lmrec.models.registry import MODELS, get_model_class, load_model

from .conftest import MODEL_FACTORIES, Planted, hit_rate, make_split

#: A history-aware model must reach at least this multiple of a random ranker's HR@10.
MIN_LIFT_OVER_CHANCE = 3.0


def sample_histories(planted: Planted) -> list[np.ndarray]:
    """Training and unseen histories, an empty one, and one of cold items only."""
    split = planted.split
    group = planted.groups[0]
    return [
        split.history_for(0, "test"),
        split.train[1],
        group[[3, 4, 5, 7]],  # an unseen user of group 0
        np.zeros(0, dtype=np.int64),
        planted.cold_items[:2],
        np.array([group[0], group[0], group[1]]),  # repeats are allowed
    ]


def test_registry_keys_are_model_names() -> None:
    for name, cls in MODELS.items():
        assert cls.name == name, f"MODELS[{name!r}] is {cls.__name__} named {cls.name!r}"
        assert issubclass(cls, Recommender)
    missing = sorted(set(MODELS) - set(MODEL_FACTORIES))
    assert not missing, f"registered models without a tiny factory in conftest: {missing}"


def test_planted_pattern_beats_chance(fitted: Recommender, planted: Planted) -> None:
    if not fitted.uses_history:
        pytest.skip(f"{fitted.name} ignores histories by design")
    hr, chance = hit_rate(fitted, planted.split)
    lift = hr / chance
    assert lift >= MIN_LIFT_OVER_CHANCE, f"{fitted.name}: HR@10 {hr:.3f} is {lift:.1f}x chance"


def test_planted_pattern_is_not_solvable_by_popularity(planted: Planted) -> None:
    # Guards the test above: the signal is in the histories, not in item popularity.
    hr, chance = hit_rate(PopularityRecommender().fit(planted.split), planted.split)
    assert hr < 2.0 * chance


def test_scores_shape_dtype_and_finite(fitted: Recommender, planted: Planted) -> None:
    histories = sample_histories(planted)
    scores = fitted.score(histories)
    assert scores.shape == (len(histories), planted.split.n_items)
    assert scores.dtype == np.float32
    assert np.isfinite(scores).all()
    assert fitted.score([]).shape == (0, planted.split.n_items)


def test_empty_history_gives_finite_scores(fitted: Recommender) -> None:
    scores = fitted.score([np.array([], dtype=np.int64)])
    assert np.isfinite(scores).all()
    top, top_scores = fitted.recommend(np.array([], dtype=np.int64), k=5)
    assert len(top) == 5 and np.isfinite(top_scores).all()


def test_scores_do_not_depend_on_batch(fitted: Recommender, planted: Planted) -> None:
    histories = sample_histories(planted)
    batch = fitted.score(histories)
    for row, history in enumerate(histories):
        np.testing.assert_allclose(fitted.score([history])[0], batch[row], rtol=1e-5, atol=1e-6)


def test_fit_is_deterministic(model_name: str, fitted: Recommender, planted: Planted) -> None:
    again = MODEL_FACTORIES[model_name]().fit(planted.split)
    histories = sample_histories(planted)
    np.testing.assert_array_equal(again.score(histories), fitted.score(histories))


def test_save_load_round_trip(fitted: Recommender, planted: Planted, tmp_path) -> None:
    directory = tmp_path / "model"
    fitted.save(directory)
    fitted.save(directory)  # overwriting an existing save is fine
    assert sorted(p.name for p in directory.iterdir()) == sorted([CONFIG_FILE, WEIGHTS_FILE])
    config = json.loads((directory / CONFIG_FILE).read_text())
    assert config["model"] == fitted.name
    assert config["format_version"] == FORMAT_VERSION
    assert config["n_items"] == planted.split.n_items
    assert "params" in config

    for loaded in (load_model(directory), type(fitted).load(directory)):
        assert type(loaded) is type(fitted)
        assert loaded.params == fitted.params
        histories = sample_histories(planted)
        np.testing.assert_array_equal(loaded.score(histories), fitted.score(histories))


def test_recommend_excludes_history_by_default(fitted: Recommender, planted: Planted) -> None:
    n_items = planted.split.n_items
    for history in sample_histories(planted):
        top, scores = fitted.recommend(history, k=n_items)
        assert not set(top) & set(history.tolist())
        assert len(top) == n_items - len(np.unique(history))
        assert np.all(np.diff(scores) <= 0), "best first"
        np.testing.assert_array_equal(scores, fitted.score([history])[0][top])


def test_recommend_honours_explicit_exclude(fitted: Recommender, planted: Planted) -> None:
    n_items = planted.split.n_items
    history = planted.split.history_for(2, "test")
    top, _ = fitted.recommend(history, k=n_items, exclude=np.array([], dtype=np.int64))
    assert sorted(top) == list(range(n_items)), "nothing excluded: whole catalog returned"
    exclude = np.array([0, 5, n_items - 1])
    top, _ = fitted.recommend(history, k=n_items, exclude=exclude)
    assert set(top) == set(range(n_items)) - set(exclude.tolist())
    top10, _ = fitted.recommend(history, k=10, exclude=exclude)
    np.testing.assert_array_equal(top10, top[:10])


@pytest.mark.parametrize("k", [0, -1, "n_items+1", 2.5, True, None])
def test_recommend_rejects_bad_k(fitted: Recommender, k: Any) -> None:
    if k == "n_items+1":
        k = fitted.n_items + 1
    with pytest.raises(ValueError, match="k must be"):
        fitted.recommend(np.array([0]), k=k)


def test_recommend_accepts_k_bounds(fitted: Recommender) -> None:
    assert len(fitted.recommend(np.array([], dtype=np.int64), k=1)[0]) == 1
    assert len(fitted.recommend(np.array([], dtype=np.int64), k=np.int64(fitted.n_items))[0]) > 0


@pytest.mark.parametrize("bad", [np.array([-1]), np.array([10_000]), np.array([0.5, 1.0])])
def test_score_rejects_bad_history(fitted: Recommender, bad: np.ndarray) -> None:
    with pytest.raises(ValueError, match=fitted.name):
        fitted.score([bad])


def test_unfitted_model_refuses_to_score(model_name: str, tmp_path) -> None:
    model = MODEL_FACTORIES[model_name]()
    with pytest.raises(RuntimeError, match="not fitted"):
        model.score([np.array([0])])
    with pytest.raises(RuntimeError, match="not fitted"):
        model.save(tmp_path / "m")


def test_from_config_rejects_unknown_keys(model_name: str) -> None:
    with pytest.raises(ValueError, match="unknown"):
        MODELS[model_name].from_config({"no_such_param": 1})


def test_popularity_ranks_most_popular_first() -> None:
    # Counts: item 4 -> 5, item 1 -> 3, item 2 -> 2, item 0 -> 1; 3 is cold, 5 unused.
    split = make_split([[4, 1, 4], [2, 4, 1], [4, 2, 1, 0], [4]], n_items=6, cold_items=[3])
    model = PopularityRecommender().fit(split)
    top, scores = model.recommend(np.array([], dtype=np.int64), k=3)
    np.testing.assert_array_equal(top, [4, 1, 2])
    np.testing.assert_array_equal(scores, [5, 3, 2])
    top, _ = model.recommend(np.array([4]), k=1)
    assert top[0] == 1, "the most popular item is excluded once seen"


class _Broken(Recommender):
    """Scores a NaN (or an inf) for item 1: the base class must refuse to return it."""

    name = "broken"
    params_cls = Params

    def __init__(self, params: Params | None = None, bad: float = np.nan) -> None:
        super().__init__(params)
        self.bad = bad

    def _fit(self, split) -> None:
        pass

    def _score(self, histories: list[np.ndarray]) -> np.ndarray:
        scores = np.zeros((len(histories), self.n_items))
        scores[:, 1] = self.bad
        return scores

    def _state(self) -> dict[str, np.ndarray]:
        return {}

    def _restore(self, state: Mapping[str, np.ndarray], config: Mapping[str, Any]) -> None:
        pass


@pytest.mark.parametrize("bad", [np.nan, np.inf, 1e300])
def test_non_finite_scores_are_rejected(bad: float) -> None:
    model = _Broken(bad=bad).fit(make_split([[0, 2]], n_items=3))
    with pytest.raises(ValueError, match="broken: produced 1 non-finite"):
        model.score([np.array([0])])
    with pytest.raises(ValueError, match="broken"):
        model.recommend(np.array([0]), k=2)


def test_load_model_errors(tmp_path) -> None:
    with pytest.raises(ModelLoadError, match="not found"):
        load_model(tmp_path / "missing")
    with pytest.raises(ModelLoadError, match="known models: itemknn, mf, popularity"):
        get_model_class("nope")

    saved = tmp_path / "pop"
    PopularityRecommender().fit(make_split([[0, 1]], n_items=2)).save(saved)
    with pytest.raises(ModelLoadError, match="holds model 'popularity'"):
        MODELS["mf"].load(saved)

    config = json.loads((saved / CONFIG_FILE).read_text())
    for change, message in [
        ({"model": "nope"}, "unknown model 'nope'"),
        ({"format_version": FORMAT_VERSION + 1}, "format_version"),
        ({"params": {"bogus": 1}}, "bad params"),
    ]:
        (saved / CONFIG_FILE).write_text(json.dumps({**config, **change}))
        with pytest.raises(ModelLoadError, match=message):
            load_model(saved)
