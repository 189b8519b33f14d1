"""Online metrics per variant (``lmrec online-report``) on synthetic traffic written by the
service's own log classes: ``ImpressionLog`` for the served answers, ``FeedbackStore`` for
the clicks, into one real SQLite file. The statistics are checked against scipy's."""

from __future__ import annotations

import json
import math
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest
import typer
from scipy import stats
from typer.testing import CliRunner

from lmrec import artifacts
from lmrec.cli import app
from lmrec.config import OnlineParams
from lmrec.io import DataError
from lmrec.monitoring.online import two_proportion_test, wilson_interval
from lmrec.registry.store import Registry
from lmrec.serving.feedback import FeedbackEvent, FeedbackStore
from lmrec.serving.impressions import ImpressionLog
from lmrec.stages import online as stage

SALT = "test-salt"
K = 10  # items per answer
CFG = OnlineParams(min_impressions=100)


def traffic(db: Path, arms: dict[tuple[str, str], float], answers: int, seed: int = 0) -> dict:
    """Serve ``answers`` lists of K items per (version, variant) arm; each item is clicked
    with the arm's probability. Also: a dismiss on every answer's first item, a click on an
    item no answer held, and one without a request_id. Returns clicks per arm."""
    rng = np.random.default_rng(seed)
    log = ImpressionLog(db, salt=SALT)
    events, clicks = [], {}
    for (version, variant), rate in arms.items():
        clicks[version, variant] = 0
        for n in range(answers):
            request, user = f"{version}-{variant}-{n}", f"user{n}"
            items = [f"item{(n + i) % 97}" for i in range(K)]
            assert log.log(request, user, version, variant, items)
            events.append(FeedbackEvent(user, items[0], "dismiss", request_id=request))
            for item in items:
                if rng.random() < rate:
                    events.append(FeedbackEvent(user, item, "click", request_id=request))
                    clicks[version, variant] += 1
            events.append(FeedbackEvent(user, "not-served", "click", request_id=request))
        events.append(FeedbackEvent("someone", "item1", "click"))
    assert log.flush()
    with FeedbackStore(db, salt=SALT) as store:
        store.append_many(events)
    return clicks


def arm(report: dict, variant: str) -> dict:
    return next(a for a in report["arms"] if a["variant"] == variant)


def test_challenger_with_more_clicks_is_better(tmp_path):
    db = tmp_path / "feedback.db"
    arms = {("1", "champion"): 0.05, ("2", "challenger"): 0.09}
    clicks = traffic(db, arms, answers=400)
    report = stage.run(CFG, db, tmp_path / "out", offline={"1": 0.20, "2": 0.25})
    for (version, variant), n in clicks.items():
        row = arm(report, variant)
        assert row["model_version"] == version
        assert (row["impressions"], row["answers"], row["clicks"]) == (400 * K, 400, n)
        assert row["ctr"] == pytest.approx(n / (400 * K), abs=1e-6)
        assert row["ci_low"] < row["ctr"] < row["ci_high"]
    champion, challenger = arm(report, "champion"), arm(report, "challenger")
    assert challenger["ctr"] > champion["ctr"]
    test = report["test"]
    assert (test["champion"], test["challenger"], test["verdict"]) == ("1", "2", "better")
    assert test["p_value"] < CFG.alpha
    # dismisses are not clicks; clicks off the answer or without a request_id join nothing
    assert report["clicks"] == sum(clicks.values())
    assert report["feedback"]["unmatched_events"] == 800
    assert report["feedback"]["without_request_id"] == 2
    # offline next to online, and the two agree on the order
    assert champion["offline_ndcg@10"] == 0.20 and challenger["offline_ndcg@10"] == 0.25
    assert report["agreement"]["by_ctr"] == ["2", "1"]
    assert report["agreement"]["same_order"] is True
    written = json.loads((tmp_path / "out" / artifacts.ONLINE_FILE).read_text())
    assert written["test"]["verdict"] == "better"
    assert (tmp_path / "out" / artifacts.ONLINE_PLOT).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_challenger_with_fewer_clicks_is_worse(tmp_path):
    db = tmp_path / "feedback.db"
    traffic(db, {("3", "champion"): 0.10, ("4", "challenger"): 0.05}, answers=400)
    report = stage.run(CFG, db, tmp_path, offline={"3": 0.30, "4": 0.10})
    assert report["test"]["verdict"] == "worse"
    assert arm(report, "challenger")["ctr"] < arm(report, "champion")["ctr"]
    assert report["agreement"]["same_order"] is True


def test_a_significant_inversion_of_offline_and_online_order_is_an_alarm(tmp_path):
    """Offline NDCG@10 says v1 > v2 > v3; users click v3 most. v3 against v1 and v2 is
    significant; v2 against v1 (0.050 vs 0.055 CTR) is not, so it is no disagreement."""
    db = tmp_path / "feedback.db"
    arms = {("1", "champion"): 0.05, ("2", "champion"): 0.055, ("3", "challenger"): 0.10}
    traffic(db, arms, answers=400)
    report = stage.run(CFG, db, tmp_path, offline={"1": 0.30, "2": 0.25, "3": 0.20})
    agree = report["agreement"]
    assert agree["same_order"] is False and agree["alarm"] is True
    pairs = {(d["better_offline"], d["better_online"]): d for d in agree["disagreements"]}
    assert set(pairs) == {("1", "3"), ("2", "3")}  # ("1", "2") is within noise
    for (a, b), pair in pairs.items():
        assert pair["p_value"] < CFG.alpha and pair["z"] > 0
        ctr = {v["model_version"]: v["ctr"] for v in agree["versions"]}
        assert pair["ctr"] == [ctr[a], ctr[b]] and ctr[b] > ctr[a]
    written = json.loads((tmp_path / artifacts.ONLINE_FILE).read_text())
    assert written["agreement"]["alarm"] is True
    assert written["agreement"]["disagreements"][0]["p_value"] > 0  # not rounded to 0


def test_an_inversion_within_noise_or_below_min_impressions_is_no_alarm(tmp_path):
    db = tmp_path / "feedback.db"  # offline v1 > v2, CTR v2 a little higher: not significant
    traffic(db, {("1", "champion"): 0.07, ("2", "challenger"): 0.075}, answers=300, seed=3)
    report = stage.run(CFG, db, tmp_path, offline={"1": 0.30, "2": 0.20})
    assert report["agreement"]["same_order"] is False
    assert report["agreement"]["alarm"] is False and report["agreement"]["disagreements"] == []
    few = tmp_path / "few.db"  # a large inversion on 5 answers (50 impressions) per version
    traffic(few, {("1", "champion"): 0.02, ("2", "challenger"): 0.6}, answers=5)
    report = stage.run(CFG, few, tmp_path, offline={"1": 0.30, "2": 0.20})
    assert report["agreement"]["judged_versions"] == [] and report["agreement"]["alarm"] is False
    loose = OnlineParams(min_impressions=10)
    assert stage.run(loose, few, tmp_path, offline={"1": 0.30, "2": 0.20})["agreement"]["alarm"]


def test_equal_traffic_gives_no_verdict_either_way(tmp_path):
    db = tmp_path / "feedback.db"
    traffic(db, {("1", "champion"): 0.07, ("2", "challenger"): 0.07}, answers=300, seed=3)
    report = stage.run(CFG, db, tmp_path)
    assert report["test"]["verdict"] == "no difference"
    assert report["test"]["p_value"] >= CFG.alpha


def test_too_few_impressions_or_no_challenger_is_not_judged(tmp_path):
    db = tmp_path / "feedback.db"
    traffic(db, {("1", "champion"): 0.05, ("2", "challenger"): 0.5}, answers=5)
    report = stage.run(CFG, db, tmp_path)
    assert report["test"]["verdict"] is None
    assert "min_impressions 100" in report["test"]["reason"]
    alone = tmp_path / "alone.db"
    traffic(alone, {("1", "champion"): 0.05}, answers=50)
    assert stage.run(CFG, alone, tmp_path)["test"]["verdict"] is None


def test_several_positive_events_count_an_impression_once(tmp_path):
    db = tmp_path / "feedback.db"
    log = ImpressionLog(db, salt=SALT)
    log.log("r1", "u1", "1", "champion", ["a", "b", "c", "d"])
    assert log.flush()
    with FeedbackStore(db, salt=SALT) as store:
        store.append_many(
            FeedbackEvent("u1", item, event, request_id="r1")
            for item, event in [("a", "click"), ("a", "purchase"), ("b", "purchase"), ("c", "view")]
        )
    cfg = OnlineParams(positive_events=["click", "purchase"])
    report = stage.run(cfg, db, tmp_path)
    assert (report["impressions"], report["clicks"]) == (4, 2)
    assert stage.run(OnlineParams(), db, tmp_path)["clicks"] == 1


def test_impressions_outside_the_window_are_left_out(tmp_path):
    db = tmp_path / "feedback.db"
    traffic(db, {("1", "champion"): 0.1}, answers=20)
    later = time.time() + 8 * 86400
    report = stage.run(OnlineParams(window_days=7.0), db, tmp_path, now=later)
    assert report["impressions"] == 0 and report["arms"] == []
    assert report["test"]["verdict"] is None
    assert stage.run(OnlineParams(window_days=None), db, tmp_path, now=later)["impressions"] == 200


@pytest.mark.parametrize(("clicks", "trials"), [(0, 10), (3, 10), (50, 1000), (999, 1000)])
def test_wilson_interval_matches_scipy(clicks, trials):
    expected = stats.binomtest(clicks, trials).proportion_ci(0.95, method="wilson")
    assert wilson_interval(clicks, trials, 0.95) == pytest.approx(
        (expected.low, expected.high), abs=1e-12
    )
    assert all(math.isnan(v) for v in wilson_interval(0, 0))


@pytest.mark.parametrize(("x1", "n1", "x2", "n2"), [(90, 1000, 50, 1000), (5, 40, 9, 60)])
def test_two_proportion_test_matches_the_chi_square_test(x1, n1, x2, n2):
    z, p = two_proportion_test(x1, n1, x2, n2)
    table = [[x1, n1 - x1], [x2, n2 - x2]]
    chi2, expected_p, _, _ = stats.chi2_contingency(table, correction=False)
    assert z * z == pytest.approx(chi2) and p == pytest.approx(expected_p)
    assert (z > 0) == (x1 / n1 > x2 / n2)
    assert two_proportion_test(0, 10, 0, 20) == (0.0, 1.0)


# --- the command line: bad logs fail naming the file; the registry gives offline NDCG ---


@pytest.fixture()
def cli(tmp_path, monkeypatch):
    """``lmrec online-report`` with the params defaults (an empty params file), holding a
    pipeline lock of its own (not this checkout's, which a running stage may hold)."""
    monkeypatch.setenv("LMREC_PIPELINE_LOCK", str(tmp_path / ".pipeline.lock"))
    params = tmp_path / "params.yaml"
    params.write_text("{}\n")

    def invoke(*args: str):
        return CliRunner().invoke(app, ["online-report", "--params", str(params), *args])

    return invoke


def test_missing_log_is_a_clear_error(cli, tmp_path):
    missing = tmp_path / "nope.db"
    result = cli("--feedback", str(missing), "--out", str(tmp_path))
    assert result.exit_code == DataError.exit_code
    assert f"{missing}: feedback database not found" in result.output
    assert not (tmp_path / artifacts.ONLINE_FILE).exists()


def test_corrupt_log_is_a_clear_error(cli, tmp_path):
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not an SQLite file at all" * 100)
    result = cli("--feedback", str(garbage), "--out", str(tmp_path))
    assert result.exit_code == DataError.exit_code
    assert str(garbage) in result.output and "cannot be read as a feedback log" in result.output
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.close()
    result = cli("--feedback", str(other), "--out", str(tmp_path))
    assert result.exit_code == DataError.exit_code
    assert f"{other}: no impressions table" in result.output
    empty = tmp_path / "empty.db"
    empty.touch()
    assert "empty (0 bytes)" in cli("--feedback", str(empty), "--out", str(tmp_path)).output


@pytest.mark.slow  # MLflow's store migrations: ~30 s
def test_cli_puts_the_registry_offline_ndcg_beside_online_ctr(cli, tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    registry = Registry(uri, "lmrec")
    for number, ndcg in ((1, 0.21), (2, 0.27)):
        source = tmp_path / f"model-{number}"
        source.mkdir()
        tags = {"lmrec.model_digest": f"d{number}", "metric.test.overall.ndcg_at_10": str(ndcg)}
        registry.register(str(source), None, tags)
    db = tmp_path / "feedback.db"
    traffic(db, {("1", "champion"): 0.04, ("2", "challenger"): 0.08}, answers=300)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    result = cli("--feedback", str(db), "--out", str(tmp_path / "out"))
    assert result.exit_code == 0, result.output
    assert "better:" in result.output and "NDCG@10 0.2700" in result.output
    report = json.loads((tmp_path / "out" / artifacts.ONLINE_FILE).read_text())
    assert {a["model_version"]: a["offline_ndcg@10"] for a in report["arms"]} == {
        "1": 0.21,
        "2": 0.27,
    }
    assert report["agreement"]["same_order"] is True and report["registry"] == uri
    assert report["agreement"]["alarm"] is False
    # Users now prefer version 1, which the registry scores lower: exit 7, report written.
    inverted = tmp_path / "inverted.db"
    traffic(inverted, {("1", "champion"): 0.09, ("2", "challenger"): 0.04}, answers=300)
    result = cli("--feedback", str(inverted), "--out", str(tmp_path / "inv"))
    assert result.exit_code == 7, result.output
    assert "offline and online disagree: v2 NDCG@10 0.2700 > v1 0.2100" in result.output
    report = json.loads((tmp_path / "inv" / artifacts.ONLINE_FILE).read_text())
    assert report["agreement"]["alarm"] is True and report["test"]["verdict"] == "worse"
    off = tmp_path / "off.yaml"
    off.write_text("monitor: {online: {alarm_on_disagreement: false}}\n")
    result = CliRunner().invoke(
        app,
        [
            "online-report",
            "--params",
            str(off),
            "--feedback",
            str(inverted),
            "--out",
            str(tmp_path / "inv"),
        ],
    )
    assert result.exit_code == 0 and "offline and online disagree" in result.output


def test_help_says_what_it_does(cli):
    command = typer.main.get_command(app).commands["online-report"]
    assert all(getattr(param, "help", None) for param in command.params)
    assert "request_id" in cli("--help").output


def test_no_registry_is_a_note_and_none_is_created(cli, tmp_path, monkeypatch):
    db = tmp_path / "feedback.db"
    traffic(db, {("1", "champion"): 0.1}, answers=20)
    absent = tmp_path / "absent" / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{absent}")
    result = cli("--feedback", str(db), "--out", str(tmp_path / "out"))
    assert result.exit_code == 0, result.output
    assert "no registry at" in result.output and "NDCG@10 ?" in result.output
    assert not absent.exists()
