"""The drift check: metrics on hand-made data, the verdict, and `lmrec drift` end to end.

The model-based ``score_shift`` metric is tested in test_score_shift.py; here it is off
(or its model is missing), so these tests do not depend on what the checkout has trained.
"""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from lmrec.cli import app
from lmrec.config import MonitorParams
from lmrec.data.contract import pseudonymise
from lmrec.exit_codes import ExitCode
from lmrec.features.dataset import load_split
from lmrec.io import DataError
from lmrec.monitoring.drift import (
    check_drift,
    drift_metrics,
    js_distance,
    model_age,
    recent_events,
)
from lmrec.serving.feedback import FeedbackEvent, FeedbackStore
from lmrec.stages import drift as stage

NOW = 1_700_000_000.0
CATALOG = pd.DataFrame({"item_id": ["a", "b", "c", "d"], "n_train": [6, 3, 1, 0]})


def _events(users, items, ts=NOW - 60):
    return pd.DataFrame({"user_id": users, "item_id": items, "timestamp": float(ts)})


def test_js_distance_bounds():
    assert js_distance([1, 2, 3], [2, 4, 6]) == pytest.approx(0.0)
    assert js_distance([1, 0], [0, 1]) == pytest.approx(1.0)
    assert 0 < js_distance([3, 1], [1, 3]) < 1
    assert js_distance([0, 0], [0, 0]) == 0.0
    assert js_distance([0, 0], [0, 1]) == 1.0
    # scipy's square root of a divergence rounded below zero is NaN: proportional is 0.
    assert js_distance(0.3 * np.array([1, 2, 3]), [1, 2, 3]) == 0.0


def hand_js_distance(p, q) -> float:
    """The formula js_distance computed by hand before scipy: base-2 KL to the midpoint."""
    p, q = np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)
    p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2

    def kl(a):
        nz = a > 0
        return float(np.sum(a[nz] * np.log2(a[nz] / m[nz])))

    return math.sqrt(max(0.0, (kl(p) + kl(q)) / 2))


@pytest.mark.parametrize("seed", range(5))
def test_js_distance_equals_the_hand_formula(seed):
    rng = np.random.default_rng(seed)
    for trial in range(200):
        n = int(rng.integers(1, 30))
        p = rng.integers(0, 50, n) * (rng.random(n) > 0.3)  # counts, some bins empty
        q = p * int(rng.integers(1, 9)) if trial % 4 == 0 else rng.integers(0, 50, n)
        if p.sum() and q.sum():
            assert abs(js_distance(p, q) - hand_js_distance(p, q)) <= 1e-12, (p, q)


def test_metrics_on_known_data():
    events = _events(["u1", "u1", "u2", "x9"], ["a", "d", "zz", "b"])
    m = drift_metrics({"u1", "u2", "u3"}, CATALOG, events)
    assert m["unseen_user_rate"] == pytest.approx(1 / 3)  # x9 of {u1, u2, x9}
    assert m["unseen_item_rate"] == pytest.approx(1 / 4)  # zz
    assert m["catalog_churn"] == pytest.approx(1 / 3)  # d has no training interaction
    assert 0 < m["popularity_shift"] < 1


def test_same_distribution_is_not_drift():
    items = ["a"] * 60 + ["b"] * 30 + ["c"] * 10
    events = _events([f"u{i % 3}" for i in range(100)], items)
    report = check_drift(MonitorParams(min_events=50), {"u0", "u1", "u2"}, CATALOG, events, NOW)
    assert report["judged"] and not report["drifted"]
    assert report["metrics"]["popularity_shift"] < 0.05
    assert report["thresholds"]["catalog_churn"] == MonitorParams().max_catalog_churn


def test_each_metric_can_trigger():
    events = _events([f"new{i}" for i in range(100)], ["d"] * 50 + ["zz"] * 50)
    report = check_drift(MonitorParams(min_events=10), {"u0"}, CATALOG, events, NOW)
    assert report["drifted"]
    named = " ".join(report["reasons"])
    for metric in ("unseen_user_rate", "unseen_item_rate", "popularity_shift", "catalog_churn"):
        assert metric in named


def test_window_and_min_events():
    old = _events(["u0"] * 100, ["d"] * 100, ts=NOW - 30 * 86_400)
    assert recent_events(old, 7, NOW).empty
    report = check_drift(MonitorParams(min_events=10), {"u0"}, CATALOG, old, NOW)
    assert not report["drifted"] and not report["judged"]
    assert "only 0 feedback event(s)" in report["reasons"][0]
    assert report["n_events_total"] == 100


def _feedback(db, users, items, ts):
    with FeedbackStore(db) as store:
        store.append_many(
            FeedbackEvent(u, i, "click", timestamp=t)
            for u, i, t in zip(users, items, ts, strict=True)
        )


def test_stage_pseudonymises_and_writes_json(tmp_path, tiny_split_dir):
    split = load_split(tiny_split_dir)
    # Raw ids, as the service receives them (the synthetic source's "user00042"); the
    # split holds their pseudonyms, and so does the log (the store pseudonymises on append).
    raw_users = [f"user{i:05d}" for i in range(split.n_users)]
    assert set(pseudonymise(pd.Series(raw_users))) == set(split.user_ids)
    rng = np.random.default_rng(0)
    weights = split.items["n_train"].to_numpy(dtype=float)
    items = rng.choice(split.items["item_id"].to_numpy(), 400, p=weights / weights.sum())
    db = tmp_path / "feedback.db"
    _feedback(db, rng.choice(raw_users, 400).tolist(), items.tolist(), [time.time() - 60] * 400)
    cfg = MonitorParams(min_events=50, score_model=None)  # score_shift: test_score_shift.py
    report = stage.run(cfg, tiny_split_dir, db, tmp_path / "out")
    assert report["metrics"]["unseen_user_rate"] == 0.0
    assert report["metrics"]["catalog_churn"] == 0.0
    assert not report["drifted"], report["reasons"]
    assert json.loads((tmp_path / "out" / "drift.json").read_text())["exit_code"] == 0


def test_cli_exit_codes(tmp_path, tiny_split_dir):
    runner = CliRunner()
    db = tmp_path / "feedback.db"
    cold = load_split(tiny_split_dir).items.query("n_train == 0")["item_id"].tolist()
    n = 200
    rng = np.random.default_rng(0)
    strangers = [f"stranger{i}" for i in range(n)]
    _feedback(db, strangers, rng.choice(cold, n).tolist(), [time.time() - 60] * n)
    args = ["drift", "--split", str(tiny_split_dir), "--feedback", str(db)]
    # No model there: score_shift is skipped (whatever this checkout has trained).
    no_model = ["--score-model", str(tmp_path / "no-model")]
    done = runner.invoke(app, [*args, *no_model, "--out", str(tmp_path / "m")])
    assert done.exit_code == ExitCode.DRIFTED, done.output
    assert "drift detected" in done.output and "catalog_churn" in done.output
    assert "score_shift: skipped, no model at" in done.output
    report = json.loads((tmp_path / "m" / "drift.json").read_text())
    assert report["drifted"] and report["exit_code"] == ExitCode.DRIFTED
    assert "score_shift" not in report["metrics"]
    none = tmp_path / "none.db"
    missing = runner.invoke(app, ["drift", "--split", str(tiny_split_dir), "--feedback", str(none)])
    assert missing.exit_code == DataError.exit_code
    assert not none.exists()
    nosplit = runner.invoke(app, [*args[:1], "--split", str(tmp_path), "--feedback", str(db)])
    assert nosplit.exit_code == DataError.exit_code


def test_empty_log_is_not_judged(tmp_path, tiny_split_dir):
    db = tmp_path / "feedback.db"
    FeedbackStore(db).close()  # the service created the log; nobody posted yet
    report = stage.run(MonitorParams(score_model=None), tiny_split_dir, db, tmp_path / "out")
    assert not report["drifted"] and not report["judged"] and report["exit_code"] == 0
    assert "only 0 feedback event(s)" in report["reasons"][0]


def test_model_age_and_the_stale_alarm():
    day = 86_400.0
    young = model_age(3, NOW - 2 * day, NOW, max_days=30.0)
    assert young["age_days"] == pytest.approx(2.0) and not young["stale"]
    assert young["reason"] == "champion v3 is 2.0 days old (monitor.max_model_age_days 30)"
    old = model_age(3, NOW - 45 * day, NOW, max_days=30.0)
    assert old["stale"] and "champion v3 is 45.0 days old" in old["reason"]
    assert "stale" in old["reason"]
    assert not model_age(3, NOW - 45 * day, NOW, max_days=None)["stale"]  # no limit
    assert model_age(None, None, NOW, 30.0) == {
        "version": None, "stale": False, "reason": "no champion: age not judged"
    }  # fmt: skip


def test_a_stale_champion_exits_6_unless_the_data_drifted(tmp_path, tiny_split_dir):
    """A champion older than max_model_age_days (e.g. the gate refused every candidate since)
    is an alarm of its own; drift, which triggers the retrain, takes precedence."""
    split = load_split(tiny_split_dir)
    db = tmp_path / "feedback.db"
    FeedbackStore(db).close()  # nothing to judge drift on: only the age decides
    cfg = MonitorParams(score_model=None, max_model_age_days=30.0)
    now = time.time()
    fresh = stage.run(cfg, tiny_split_dir, db, tmp_path / "a", champion=(2, now - 86_400))
    assert fresh["exit_code"] == 0 and not fresh["stale"]
    assert fresh["model_age"]["version"] == 2
    stale = stage.run(cfg, tiny_split_dir, db, tmp_path / "b", champion=(2, now - 31 * 86_400))
    assert stale["exit_code"] == ExitCode.STALE and stale["stale"]
    written = json.loads((tmp_path / "b" / "drift.json").read_text())
    assert written["model_age"]["age_days"] == pytest.approx(31.0, abs=0.01)
    # drifted as well: exit 5 (the monitor DAG retrains), still reported stale
    cold = split.items.query("n_train == 0")["item_id"].tolist()
    rng = np.random.default_rng(0)
    strangers = [f"stranger{i}" for i in range(200)]
    drifted_db = tmp_path / "drifted.db"
    _feedback(drifted_db, strangers, rng.choice(cold, 200).tolist(), [now - 60] * 200)
    both = stage.run(
        cfg, tiny_split_dir, drifted_db, tmp_path / "c", champion=(2, now - 31 * 86_400)
    )
    assert both["drifted"] and both["stale"] and both["exit_code"] == ExitCode.DRIFTED


def test_cli_reports_the_age_of_the_registry_champion(tmp_path, tiny_split_dir, monkeypatch):
    """`lmrec drift` reads the champion from the MLflow registry (an empty store here:
    no champion, not judged) and says so; an unreadable registry does not stop the check."""
    runner = CliRunner()
    db = tmp_path / "feedback.db"
    FeedbackStore(db).close()
    args = ["drift", "--split", str(tiny_split_dir), "--feedback", str(db), "--out"]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    done = runner.invoke(app, [*args, str(tmp_path / "m"), "--score-model", str(tmp_path)])
    assert done.exit_code == 0, done.output
    assert "no champion: age not judged" in done.output
    assert not (tmp_path / "mlflow.db").exists()  # a read leaves no empty store behind
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "postgresql://nobody@127.0.0.1:1/none")
    down = runner.invoke(app, [*args, str(tmp_path / "n"), "--score-model", str(tmp_path)])
    assert down.exit_code == 0, down.output
    assert "champion age not judged" in down.output
