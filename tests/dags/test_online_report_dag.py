"""The monitor DAG's online_report task under a real `airflow dags test` on the tiny
profile. Its workspace holds only what the monitor reads (the tiny profile as params.yaml,
the synthetic snapshot's split for the drift check): the online report needs no trained
model, so this test does not wait for the retrain DAG's end-to-end run."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lmrec.serving.feedback import FeedbackEvent, FeedbackStore
from lmrec.serving.impressions import ImpressionLog

from .conftest import REPO
from .test_dags import _dags_test

LMREC = Path(sys.executable).parent / "lmrec"


@pytest.fixture(scope="module")
def monitor_ws(tmp_path_factory) -> Path:
    """The tiny profile as params.yaml and the split its synthetic snapshot gives."""
    ws = tmp_path_factory.mktemp("monitor-ws")
    shutil.copy(REPO / "profiles" / "tiny.yaml", ws / "params.yaml")
    for args in (
        ["ingest", "--out", "data"],
        ["preprocess", "--interactions", "data/interactions.parquet",
         "--items", "data/items.parquet", "--out", "artifacts/preprocess"],
    ):  # fmt: skip
        done = subprocess.run([str(LMREC), *args], cwd=ws, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr
    return ws


def served(db: Path) -> None:
    """20 answers of 10 items per arm; 8 champion clicks, 30 challenger clicks: fewer than
    the tiny profile's monitor.min_events, so the drift check does not judge."""
    log, clicks = ImpressionLog(db), []
    for variant, version, clicked in (("champion", "1", 8), ("challenger", "2", 30)):
        for n in range(20):
            request, items = f"{variant}-{n}", [f"item{(n + i) % 80:05d}" for i in range(10)]
            log.log(request, f"user{n:05d}", version, variant, items)
            first = clicked // 20 + (n < clicked % 20)  # `clicked` clicks over the 20 answers
            clicks += [FeedbackEvent(f"user{n:05d}", item, "click", request_id=request)
                       for item in items[:first]]  # fmt: skip
    assert log.flush()
    with FeedbackStore(db) as store:
        store.append_many(clicks)


@pytest.mark.slow
def test_monitor_dag_writes_the_online_report(airflow_db, monitor_ws, tmp_path):
    db = tmp_path / "feedback.db"
    served(db)
    env = {**airflow_db, "MLFLOW_TRACKING_URI": f"sqlite:///{monitor_ws}/mlflow.db"}
    run = _dags_test(env, "lmrec_monitor", {"workspace": str(monitor_ws), "feedback": str(db)})
    assert run["state"] == "success", run["output"]
    assert run["tasks"]["online_report"] == "success", run["output"]
    assert run["tasks"]["trigger_retrain"] == "skipped"
    report = json.loads((monitor_ws / "artifacts/monitor/online.json").read_text())
    arms = {a["variant"]: a for a in report["arms"]}
    assert (arms["champion"]["clicks"], arms["challenger"]["clicks"]) == (8, 30)
    assert arms["champion"]["impressions"] == arms["challenger"]["impressions"] == 200
    assert (report["test"]["champion"], report["test"]["challenger"]) == ("1", "2")
    assert report["test"]["verdict"] == "better"
    assert report["positive_events"] == ["click"]  # the tiny profile's monitor.online
    # no version registered in this workspace: no offline NDCG@10 beside the CTRs
    assert report["registry"] == env["MLFLOW_TRACKING_URI"]
    assert arms["champion"]["offline_ndcg@10"] is arms["challenger"]["offline_ndcg@10"] is None
    assert (monitor_ws / "artifacts/monitor/online.png").stat().st_size > 0
