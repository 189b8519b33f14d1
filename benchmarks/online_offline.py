"""Offline vs online agreement: does ranking model versions by offline NDCG@10 rank them
the way their online CTR does?

On MovieLens-100K (the docs/design.md split: per-user tie-break, last item = test, second last =
validation), four model versions of different offline quality are fitted on the training
interactions: random, popularity, item-KNN and MF (the in-house baselines with their
default hyperparameters). Each version's offline NDCG@10 is the evaluation protocol's on
the **validation** item (full ranking, training items excluded).

Online is simulated on the **test** item, an event no offline number has seen: every user
asks each version for 10 items given the test-time history (training + validation item);
the answer goes into a real impression log (``lmrec.serving.impressions.ImpressionLog``)
and the user clicks (``FeedbackStore``, same SQLite file, with the answer's request_id) when
the list holds the user's next item. ``lmrec.stages.online.run`` then computes CTR per
version with its Wilson interval and the popularity-vs-MF test exactly as
``lmrec online-report`` does (popularity served as the champion, MF as the challenger, the
other two as replay arms), with the offline NDCG@10 in place of the registry's.

Every user sees every version (a replay, not a split of the users), so the versions are
compared on the same users; CTR = HR@10 / 10 on the test item. A few minutes on 2 cores.
Writes ``<out>/online_offline.md`` and ``.json``.

    .venv/bin/python benchmarks/online_offline.py
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import stats

from lmrec.config import OnlineParams
from lmrec.evaluation.protocol import evaluate
from lmrec.features.dataset import SplitData, load_split
from lmrec.models.base import Recommender
from lmrec.models.itemknn import ItemKNNRecommender
from lmrec.models.mf import MFRecommender
from lmrec.models.popularity import PopularityRecommender
from lmrec.models.random import RandomRecommender
from lmrec.serving.feedback import FeedbackEvent, FeedbackStore
from lmrec.serving.impressions import ImpressionLog
from lmrec.stages import online

BIN = Path(sys.executable).parent
RESULTS = Path(__file__).resolve().parent / "results"
K = 10
SALT = "benchmark-salt"
#: version -> (model, variant in the simulated service)
VERSIONS = {
    "1": ("random", "replay"),
    "2": ("popularity", "champion"),
    "3": ("itemknn", "replay"),
    "4": ("mf", "challenger"),
}
MODELS = {
    "random": RandomRecommender,
    "popularity": PopularityRecommender,
    "itemknn": ItemKNNRecommender,
    "mf": MFRecommender,
}
PARAMS = "ingest:\n  movielens:\n    try_grouplens: false\n"


def movielens_split(ws: Path) -> SplitData:
    """`lmrec ingest` (MovieLens-100K) and `lmrec preprocess` in ``ws``; the split."""
    (ws / "params.yaml").write_text(PARAMS)
    for args in (
        ["ingest", "--source", "movielens-100k", "--out", "data"],
        ["preprocess", "--interactions", "data/interactions.parquet",
         "--items", "data/items.parquet", "--out", "split"],
    ):  # fmt: skip
        subprocess.run([str(BIN / "lmrec"), *args, "--params", "params.yaml"], cwd=ws, check=True)
    return load_split(ws / "split")


def serve(model: Recommender, split: SplitData, version: str, variant: str, db: Path) -> int:
    """Every test user asks ``model`` for K items; a click when the list holds the user's
    next (test) item. Returns the clicks posted."""
    log, clicks = ImpressionLog(db, salt=SALT), []
    item_ids = split.items["item_id"].astype(str).to_numpy()
    for user in np.flatnonzero(split.test_items >= 0):
        top, _ = model.recommend(split.history_for(int(user), "test"), K)
        request, user_id = f"v{version}-{user}", str(split.user_ids[user])
        assert log.log(request, user_id, version, variant, item_ids[top].tolist())
        if split.test_items[user] in top:
            target = item_ids[split.test_items[user]]
            clicks.append(FeedbackEvent(user_id, target, "click", request_id=request))
    assert log.flush(60.0), "impression log did not drain"
    with FeedbackStore(db, salt=SALT) as store:
        store.append_many(clicks)
    return len(clicks)


def table(report: dict, fitted: dict[str, float]) -> list[str]:
    arms = {a["model_version"]: a for a in report["arms"]}
    lines = [
        "| version | model | variant | offline NDCG@10 (val) | impressions | clicks | "
        "online CTR (test) | 95% Wilson interval | fit s |",
        "|---|---|---|---:|---:|---:|---:|---|---:|",
    ]
    for version, (name, variant) in VERSIONS.items():
        a = arms[version]
        lines.append(
            f"| v{version} | {name} | {variant} | {a['offline_ndcg@10']:.4f} | "
            f"{a['impressions']:,} | {a['clicks']:,} | {a['ctr']:.4f} | "
            f"[{a['ci_low']:.4f}, {a['ci_high']:.4f}] | {fitted[version]:.1f} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="lmrec-online-") as tmp:
        ws = Path(tmp)
        split = movielens_split(ws)
        offline, fitted = {}, {}
        for version, (name, variant) in VERSIONS.items():
            t0 = time.perf_counter()
            model = MODELS[name]().fit(split)
            fitted[version] = time.perf_counter() - t0
            offline[version] = evaluate(model, split, "val")["ndcg@10"]
            serve(model, split, version, variant, ws / "feedback.db")
        cfg = OnlineParams(window_days=None)
        report = online.run(cfg, ws / "feedback.db", ws / "monitor", offline=offline)
    agree = report["agreement"]
    ctr = {x["model_version"]: x["ctr"] for x in agree["versions"]}
    tau = stats.kendalltau([offline[v] for v in VERSIONS], [ctr[v] for v in VERSIONS]).statistic
    test = report["test"]
    lines = [
        "# Offline NDCG@10 vs online CTR (benchmarks/online_offline.py)",
        "",
        f"MovieLens-100K, {split.n_users} users, {split.n_items} items. Offline: NDCG@10 on "
        "each user's validation item. Online (simulated): each user's test-time history "
        f"served by every version, top-{K}, a click when the list holds the user's next (test) "
        "item; impressions and clicks through the real impression and feedback logs, CTR and "
        "intervals by `lmrec.stages.online.run` (the `lmrec online-report` code).",
        "",
        *table(report, fitted),
        "",
        f"- order by offline NDCG@10: {', '.join('v' + v for v in agree['by_offline_ndcg@10'])}",
        f"- order by online CTR: {', '.join('v' + v for v in agree['by_ctr'])}",
        f"- same order: **{agree['same_order']}**; Kendall tau {tau:.2f}",
        f"- challenger (v{test['challenger']}, mf) vs champion (v{test['champion']}, "
        f"popularity): **{test['verdict']}** ({test['reason']})",
        f"- {time.perf_counter() - started:.0f} s wall",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "online_offline.md").write_text(text)
    result = {"report": report, "kendall_tau": tau, "fit_s": fitted}
    (args.out / "online_offline.json").write_text(json.dumps(result, indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
