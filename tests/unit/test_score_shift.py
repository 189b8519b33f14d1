"""``score_shift``: rank percentiles against a slow reference, the distance's bounds, and the
drift stage scoring a real saved model (ItemKNN, fitted on the tiny split) end to end."""

from __future__ import annotations

import json
import re
import shutil
import time

import numpy as np
import pandas as pd
import pytest

from lmrec.config import MonitorParams
from lmrec.data.contract import pseudonymise
from lmrec.features.dataset import SplitData, load_split
from lmrec.io import DataError
from lmrec.models.itemknn import ItemKNNParams, ItemKNNRecommender
from lmrec.models.popularity import PopularityRecommender
from lmrec.monitoring.drift import check_drift, rank_percentiles, score_shift, verdict
from lmrec.monitoring.score_shift import live_events, live_sample, reference_sample
from lmrec.serving.feedback import FeedbackEvent, FeedbackStore
from lmrec.stages import drift as stage


def slow_rank_percentiles(scores: np.ndarray, items: np.ndarray) -> list[float]:
    """One row at a time, in plain Python: non-finite scores are below every finite one."""

    def key(x: float) -> float:
        return x if np.isfinite(x) else -np.inf

    out = []
    for row, item in zip(scores.tolist(), items.tolist(), strict=True):
        own = key(row[item])
        out.append(sum(key(x) > own for x in row) / len(row))
    return out


# --- pure functions ---------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_rank_percentiles_match_a_slow_reference(seed):
    rng = np.random.default_rng(seed)
    n, n_items = 40, 13
    # Few distinct values: many ties; then some NaN and +-inf sprinkled in.
    scores = rng.integers(0, 4, size=(n, n_items)).astype(np.float32)
    scores[rng.random(scores.shape) < 0.1] = np.nan
    scores[rng.random(scores.shape) < 0.05] = np.inf
    scores[rng.random(scores.shape) < 0.05] = -np.inf
    items = rng.integers(0, n_items, size=n)
    assert rank_percentiles(scores, items) == pytest.approx(slow_rank_percentiles(scores, items))


def test_rank_percentiles_by_hand():
    scores = np.array([[3.0, 2.0, 1.0], [3.0, 2.0, 1.0], [1.0, np.nan, 1.0], [np.inf, 0.0, 5.0]])
    got = rank_percentiles(scores, np.array([0, 2, 2, 0]))
    # first; last; tied with item 0 (not strictly higher), NaN is lowest; +inf is lowest.
    assert got.tolist() == pytest.approx([0.0, 2 / 3, 0.0, 2 / 3])
    with pytest.raises(ValueError, match="expected"):
        rank_percentiles(scores, np.array([0, 1]))


def test_score_shift_is_one_sided_and_bounded():
    rng = np.random.default_rng(0)
    a, b = rng.random(500) * 0.3, 0.6 + rng.random(300) * 0.4
    assert score_shift(a, a.copy(), 10) == 0.0
    assert score_shift(a, b, 10) == pytest.approx(1.0)  # live all ranked below the reference
    assert score_shift(b, a, 10) == 0.0  # live ranked higher: the model's top picks, no drift
    c = rng.random(400)
    assert 0.5 < score_shift(a, c, 10) < 1.0
    # The largest excess of the reference CDF over the live one, at bin edges.
    ref, live = np.array([0.05, 0.05, 0.55, 0.55]), np.array([0.05, 0.55, 0.55, 0.55])
    assert score_shift(ref, live, 10) == pytest.approx(0.25)
    # 0.0 and the largest percentile (n-1)/n fall in the first and last bins.
    assert score_shift(np.zeros(5), np.full(5, 0.999), 2) == pytest.approx(1.0)


def test_verdict_skips_absent_metrics():
    cfg = MonitorParams()
    calm = {"unseen_user_rate": 0.0, "unseen_item_rate": 0.0, "popularity_shift": 0.0}
    assert verdict({**calm, "catalog_churn": 0.0}, cfg) == (False, [])
    drifted, reasons = verdict({**calm, "catalog_churn": 0.0, "score_shift": 0.9}, cfg)
    assert drifted and reasons == ["score_shift 0.9000 > max_score_shift 0.3"]


def test_check_drift_judges_model_metrics_and_keeps_notes():
    catalog = pd.DataFrame({"item_id": ["a", "b"], "n_train": [5, 5]})
    events = pd.DataFrame({"user_id": ["u0"] * 10, "item_id": ["a", "b"] * 5, "timestamp": 0.0})
    cfg = MonitorParams(min_events=5)
    report = check_drift(cfg, ["u0"], catalog, events, 60.0, {"score_shift": 0.5}, ["n"])
    assert report["drifted"] and report["reasons"] == ["score_shift 0.5000 > max_score_shift 0.3"]
    assert report["notes"] == ["n"] and report["thresholds"]["score_shift"] == 0.3
    report = check_drift(cfg, ["u0"], catalog, events, 60.0, None, ["skipped"])
    assert not report["drifted"] and "score_shift" not in report["metrics"]
    assert report["notes"] == ["skipped"]


# --- the stage, on the tiny split with a saved ItemKNN model ----------------------------


@pytest.fixture(scope="module")
def split(tiny_split_dir) -> SplitData:
    return load_split(tiny_split_dir)


@pytest.fixture(scope="module")
def knn(split, tmp_path_factory):
    """(model, its saved directory): ItemKNN fitted on the tiny split."""
    model = ItemKNNRecommender(ItemKNNParams(neighbors=20)).fit(split)
    directory = tmp_path_factory.mktemp("knn") / "model"
    model.save(directory)
    return model, directory


@pytest.fixture(scope="module")
def raw_users(split) -> list[str]:
    """Raw ids (the synthetic source's "user00042") in split user-index order."""
    raw = pd.Series([f"user{i:05d}" for i in range(split.n_users)])
    by_pseudonym = dict(zip(pseudonymise(raw), raw, strict=True))
    return [by_pseudonym[u] for u in split.user_ids]


def full_history(split: SplitData, user: int) -> np.ndarray:
    hist = split.history_for(user, "test")
    return np.append(hist, split.test_items[user]) if split.test_items[user] >= 0 else hist


def write_log(db, users: list[str], items: list[str], age_s: float = 60.0) -> None:
    """Append one click per (user, item), ``age_s`` seconds old."""
    now = time.time()
    with FeedbackStore(db) as store:
        store.append_many(
            FeedbackEvent(u, i, "click", timestamp=now - age_s)
            for u, i in zip(users, items, strict=True)
        )


def strictly_higher(scores: np.ndarray, item: int) -> int:
    return int(np.sum(scores > scores[item]))


def rank_matched_log(split, model, raw_users):
    """Users as predictable as at test time: per user, the warm item whose rank given the
    full history is closest to the test item's rank given the test-time history."""
    warm = np.flatnonzero(split.items["n_train"].to_numpy() > 0)
    users, items = [], []
    for u in np.flatnonzero(split.test_items >= 0):
        at_test = model.score([split.history_for(u, "test")])[0]
        target = strictly_higher(at_test, split.test_items[u])
        now = model.score([full_history(split, u)])[0]
        pick = min(warm, key=lambda i: (abs(strictly_higher(now, i) - target), i))
        users.append(raw_users[u])
        items.append(split.items["item_id"][pick])
    return users, items


def ranked_last_log(split, model, raw_users):
    """Per user, the warm item the model ranks last given the user's full history."""
    warm = np.flatnonzero(split.items["n_train"].to_numpy() > 0)
    users, items = [], []
    for u in range(split.n_users):
        now = model.score([full_history(split, u)])[0]
        pick = max(warm, key=lambda i: (strictly_higher(now, i), i))
        users.append(raw_users[u])
        items.append(split.items["item_id"][pick])
    return users, items


def test_samples_rank_each_item_given_the_right_history(split, knn, raw_users):
    model, _ = knn
    ids = split.items["item_id"]
    window = pd.DataFrame(
        {
            "user_id": pseudonymise(
                pd.Series([raw_users[3], raw_users[7], "stranger", raw_users[3]])
            ),
            "item_id": [ids[5], ids[0], ids[1], "not-in-catalog"],
        }
    )
    users, items = live_events(split, window)
    assert users.tolist() == [3, 7] and items.tolist() == [5, 0]
    scores = [model.score([full_history(split, u)])[0] for u in (3, 7)]
    expected = slow_rank_percentiles(np.stack(scores), items)
    assert live_sample(model, split, users, items) == pytest.approx(expected)
    tested = np.flatnonzero(split.test_items >= 0)
    at_test = model.score([split.history_for(u, "test") for u in tested])
    expected = slow_rank_percentiles(at_test, split.test_items[tested])
    assert reference_sample(model, split) == pytest.approx(expected)


def test_users_as_predictable_as_at_test_time_are_not_drift(
    tmp_path, tiny_split_dir, split, knn, raw_users
):
    model, directory = knn
    users, items = rank_matched_log(split, model, raw_users)
    assert len(users) >= 50
    write_log(tmp_path / "feedback.db", users, items)
    # A month ago the same users clicked what the model ranks last: outside the window.
    write_log(tmp_path / "feedback.db", *ranked_last_log(split, model, raw_users), 30 * 86_400)
    cfg = MonitorParams(min_events=50, score_model=str(directory))
    report = stage.run(cfg, tiny_split_dir, tmp_path / "feedback.db", tmp_path / "out")
    print("rank-matched score_shift", report["metrics"]["score_shift"])
    assert report["n_events"] == len(users)
    # Same percentiles by construction (0.0 here); scoring the live items given the
    # test-time history only, without the test item, gives 0.07.
    assert report["metrics"]["score_shift"] < 0.03
    assert report["notes"] == [] and report["score_model"] == str(directory.resolve())
    assert not report["drifted"], report["reasons"]


def test_items_ranked_last_are_drift(tmp_path, tiny_split_dir, split, knn, raw_users):
    model, directory = knn
    users, items = ranked_last_log(split, model, raw_users)
    write_log(tmp_path / "feedback.db", users, items)
    cfg = MonitorParams(min_events=50, score_model=str(directory))
    report = stage.run(cfg, tiny_split_dir, tmp_path / "feedback.db", tmp_path / "out")
    print("ranked-last score_shift", report["metrics"]["score_shift"])
    assert report["metrics"]["score_shift"] > cfg.max_score_shift
    assert report["drifted"] and report["exit_code"] == 5
    assert any(r.startswith("score_shift ") for r in report["reasons"]), report["reasons"]


def test_too_few_qualifying_events_skip_the_metric(tmp_path, tiny_split_dir, split, knn, raw_users):
    _, directory = knn
    # 60 events, but only 10 by split users: the others are strangers (not drift here).
    catalog = split.items["item_id"].tolist()
    users = raw_users[:10] + [f"stranger{i}" for i in range(50)]
    write_log(tmp_path / "feedback.db", users, [catalog[i % len(catalog)] for i in range(60)])
    cfg = MonitorParams(min_events=50, score_model=str(directory), max_unseen_user_rate=1.0)
    report = stage.run(cfg, tiny_split_dir, tmp_path / "feedback.db", tmp_path / "out")
    assert report["judged"] and "score_shift" not in report["metrics"]
    assert report["notes"] == [
        "score_shift: skipped, only 10 window event(s) by split users on catalog items "
        "(min_events 50)"
    ]


def test_missing_model_skips_the_metric(tmp_path, tiny_split_dir, split, knn, raw_users):
    model, _ = knn
    users, items = ranked_last_log(split, model, raw_users)  # drift, had there been a model
    write_log(tmp_path / "feedback.db", users, items)
    missing = tmp_path / "not-trained-yet"
    cfg = MonitorParams(min_events=50, score_model=str(missing), max_popularity_shift=1.0)
    report = stage.run(cfg, tiny_split_dir, tmp_path / "feedback.db", tmp_path / "out")
    assert report["judged"] and "score_shift" not in report["metrics"]
    assert set(report["metrics"]) == {
        "unseen_user_rate",
        "unseen_item_rate",
        "popularity_shift",
        "catalog_churn",
    }
    assert report["notes"] == [f"score_shift: skipped, no model at {missing} (train first)"]
    assert not report["drifted"] and report["exit_code"] == 0
    off = stage.run(
        cfg.model_copy(update={"score_model": None}),
        tiny_split_dir,
        tmp_path / "feedback.db",
        tmp_path / "out",
    )
    assert off["notes"] == ["score_shift: off (monitor.score_model is null)"]
    assert off["score_model"] is None and not off["drifted"]


def test_model_of_another_catalog_is_a_data_error(tmp_path, tiny_split_dir, split, raw_users):
    other = SplitData(
        train=[np.array([0, 1, 2, 1])],
        val_items=np.array([-1]),
        test_items=np.array([-1]),
        train_times=[np.arange(4)],
        user_ids=np.array(["u"], dtype=object),
        items=pd.DataFrame({"item_idx": range(5), "item_id": list("abcde"), "n_train": 1}),
        cold=pd.DataFrame({"user_idx": [], "item_idx": []}),
    )
    directory = tmp_path / "other-model"
    PopularityRecommender().fit(other).save(directory)
    catalog = split.items["item_id"].tolist()
    write_log(tmp_path / "feedback.db", raw_users * 2, (catalog * 4)[: 2 * len(raw_users)])
    cfg = MonitorParams(min_events=50, score_model=str(directory))
    with pytest.raises(DataError, match=rf"{re.escape(str(directory))}: .* 5 items .* has 80"):
        stage.run(cfg, tiny_split_dir, tmp_path / "feedback.db", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_model_of_a_reordered_catalog_is_a_data_error(
    tmp_path, tiny_split_dir, split, knn, raw_users
):
    directory = tmp_path / "reordered"
    shutil.copytree(knn[1], directory)
    ids = split.items.sort_values("item_idx")["item_id"].astype(str).tolist()
    (directory / "item_ids.json").write_text(json.dumps(ids[::-1]))  # same size, other order
    catalog = split.items["item_id"].tolist()
    write_log(tmp_path / "feedback.db", raw_users * 2, (catalog * 4)[: 2 * len(raw_users)])
    cfg = MonitorParams(min_events=50, score_model=str(directory))
    with pytest.raises(DataError, match="catalog differs"):
        stage.run(cfg, tiny_split_dir, tmp_path / "feedback.db", tmp_path / "out")
    (directory / "item_ids.json").write_text(json.dumps(ids))  # the right catalog: judged
    report = stage.run(cfg, tiny_split_dir, tmp_path / "feedback.db", tmp_path / "out")
    assert "score_shift" in report["metrics"]


def test_the_served_champion_is_scored_not_the_refused_candidate(
    tmp_path, tiny_split_dir, split, knn, raw_users, monkeypatch
):
    """``score_model: champion``: the packaged champion's version, downloaded from a real
    MLflow registry, scores the window, whatever ``artifacts/train/model`` holds (after a
    gate refusal, the refused candidate); its catalog is mapped onto the split's."""
    from lmrec.artifacts import ITEM_IDS_FILE
    from lmrec.registry.store import Registry
    from lmrec.train.tracking import Tracker

    model, directory = knn
    (directory / ITEM_IDS_FILE).write_text(json.dumps(split.items["item_id"].tolist()))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.chdir(tmp_path)  # MLflow's artifact root (mlruns/) lands in the temp dir
    tracker = Tracker(uri, "test")
    logged = tracker.log_model(directory)
    tracker.end()
    registry = Registry(uri, "lmrec")
    version = registry.register(logged, tracker.run_id, {}).number
    registry.promote(version)
    write_log(tmp_path / "feedback.db", *ranked_last_log(split, model, raw_users))
    cfg = MonitorParams(min_events=50, score_model=str(directory))
    by_path = stage.run(cfg, tiny_split_dir, tmp_path / "feedback.db", tmp_path / "a")
    package = tmp_path / "artifacts" / "package"  # nothing packaged yet: the registry alias
    served, label = stage.champion_model(uri, "lmrec", package, tmp_path / "dl")
    assert label == f"champion v{version}" and served is not None
    champion = cfg.model_copy(update={"score_model": "champion"})
    report = stage.run(
        champion, tiny_split_dir, tmp_path / "feedback.db", tmp_path / "b",
        champion_dir=served, champion_label=label,
    )  # fmt: skip
    assert report["score_model"] == f"champion (champion v{version})"
    assert report["metrics"]["score_shift"] == by_path["metrics"]["score_shift"] > 0.5
    # The packaged version wins over the alias; an unknown one is a reason, not a crash.
    package.mkdir(parents=True)
    (package / "package.json").write_text(json.dumps({"models": {"champion": {"version": 7}}}))
    missing, why = stage.champion_model(uri, "lmrec", package, tmp_path / "dl2")
    assert missing is None and "version 7" in why
    skipped = stage.run(
        champion, tiny_split_dir, tmp_path / "feedback.db", tmp_path / "c",
        champion_dir=None, champion_label=why,
    )  # fmt: skip
    assert "score_shift" not in skipped["metrics"]
    assert skipped["notes"] == [f"score_shift: skipped, {why}"]
