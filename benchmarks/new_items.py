"""New items in front of users: the model's cold-start mechanism and the exposure trade-off.

On a split whose cold holdout plays the part of new arrivals (``preprocess.cold_item_share``
≥ 0.1: catalog rows with no training interactions), for each ID-dropout rate and seed the
LM-powered model is trained exactly as ``lmrec train`` trains it (early stopping on
validation), then judged the way users meet it, through the serving exposure policy
(``lmrec.serving.exposure``) at several settings, on the validation and/or test rows of
the same fit:

* warm NDCG@10: the protocol's test (or validation) rows, every list after the policy;
* new-item HR@10 / NDCG@10: the protocol's ``new_items`` rows (each user's cold interaction,
  history up to it), ranked against the whole catalog, after the policy.

``slots 0`` is the raw model. Rows go to ``<out>/new_items_<stage>.jsonl`` (one per model
and setting) and a table to ``<out>/new_items_<stage>.md``. The default is chosen on the
validation stage: the most new-item hits whose warm NDCG@10 stays ≥ 0.98× the raw model of
today's default (``--reference-dropout``) on the same split.

    python benchmarks/new_items.py --workspace /path/with/artifacts --stage val test \\
        --id-dropout 0 0.3 --seeds 0 1 2 --save-models /tmp/models
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lmrec.config import load_params  # noqa: E402
from lmrec.features.dataset import SplitData, load_split  # noqa: E402
from lmrec.serving.exposure import ExposurePolicy  # noqa: E402
from lmrec.serving.offline import served_metrics  # noqa: E402

K = 10
#: (reserved slots, min_score_quantile, text_weight) settings of the trade-off curve.
BASE_SETTINGS = (
    (0, 0.0, 0.0),
    (1, 0.0, 0.0),
    (1, 0.5, 0.0),
    (1, 0.6, 0.0),
    (1, 0.7, 0.0),
    (1, 0.0, 0.3),
    (1, 0.5, 0.2),
    (1, 0.5, 0.25),
    (1, 0.5, 0.3),
    (1, 0.55, 0.25),
    (1, 0.55, 0.3),
    (1, 0.6, 0.1),
    (1, 0.6, 0.2),
    (1, 0.6, 0.3),
    (1, 0.6, 0.4),
    (1, 0.6, 0.5),
    (1, 0.7, 0.3),
    (2, 0.0, 0.0),
    (2, 0.6, 0.0),
    (2, 0.6, 0.3),
    (3, 0.0, 0.0),
)
#: prior_weight values tried on the gates that keep warm NDCG@10 near 0.98x.
PRIOR_WEIGHTS = (0.5, 0.75, 1.0, 1.5, 2.0)
#: (slots, min_score_quantile, text_weight, prior_weight): every base setting without the
#: popularity prior, and the prior's weights on the default gate and its neighbours.
SETTINGS = tuple((*base, 0.0) for base in BASE_SETTINGS) + tuple(
    (1, q, w, g) for q, w in ((0.6, 0.3), (0.6, 0.2), (0.7, 0.3), (0.5, 0.3)) for g in PRIOR_WEIGHTS
)


def unit_text(embeddings: np.ndarray) -> np.ndarray:
    """Unit-length item text vectors (the exposure policy's text affinity)."""
    norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
    return (embeddings / np.maximum(norms, 1e-12)).astype(np.float32)


def tradeoff(
    model: Any,
    split: SplitData,
    stage: str,
    settings: Sequence[tuple[int, float, float, float]] = SETTINGS,
    max_interactions: int = 1,
    text: np.ndarray | None = None,
) -> list[dict[str, Any]]:
    """One flat row per (slots, min_score_quantile, text_weight, prior_weight): warm NDCG@10
    and new-item HR/NDCG@10 in the served lists. ``text``: unit item text vectors
    (``unit_text``), needed by settings with a text or prior weight."""
    policies = [
        ExposurePolicy(
            slots=n,
            max_interactions=max_interactions,
            max_age_days=None,
            min_score_quantile=q,
            text_weight=w,
            prior_weight=g,
        )
        for n, q, w, g in settings
    ]
    return [
        {
            "slots": r["slots"],
            "min_score_quantile": r["min_score_quantile"],
            "text_weight": r["text_weight"],
            "prior_weight": r["prior_weight"],
            "max_interactions": r["max_interactions"],
            "warm_ndcg@10": r["overall"]["ndcg@10"],
            "warm_hr@10": r["overall"]["hr@10"],
            "new_hr@10": r["new_items"]["hr@10"],
            "new_ndcg@10": r["new_items"]["ndcg@10"],
            "fresh_per_list": r["overall"]["fresh_per_list"],
            "n_warm": r["overall"]["n_users"],
            "n_new": r["new_items"]["n_users"],
        }
        for r in served_metrics(model, split, policies, stage, K, text)
    ]


def train_lmrec(split, embeddings, params, seed: int, recipe: dict[str, Any]):
    """lmrec's model trained as the train stage trains it, with this seed and recipe
    (``train.sequential`` overrides: the ID-dropout rate)."""
    from lmrec.train.trainer import train_sequential

    sequential = params.train.sequential.model_validate(
        {**params.train.sequential.model_dump(), **recipe}
    )
    cfg = params.train.model_copy(update={"seed": seed, "sequential": sequential})
    with tempfile.TemporaryDirectory(prefix="lmrec-newitems-") as tmp:
        return train_sequential(split, embeddings, cfg, Path(tmp), progress=False)


def markdown(rows: list[dict[str, Any]], stage: str, facts: dict[str, Any]) -> str:
    """Mean ± std over seeds per (recipe, slots, score quantile, text weight)."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        key = (
            row["id_dropout"],
            row["slots"],
            row.get("min_score_quantile", 0.0),
            row.get("text_weight", 0.0),
            row.get("prior_weight", 0.0),
        )
        groups.setdefault(key, []).append(row)
    lines = [
        f"# New items: training recipe × exposure ({stage} stage, MovieLens-100K new arrivals)",
        "",
        f"{facts['users']} users, {facts['items']} items, {facts['new_items']} items without "
        f"training interactions; {facts['n_new']} new-item rows, {facts['n_warm']} warm rows; "
        f"{facts['date']}. Lists of 10 after the serving policy; new items ranked against the "
        "whole catalog.",
        "",
        "| id_dropout | slots | score quantile | text weight | prior weight | seeds "
        "| warm NDCG@10 | new-item HR@10 | new-item NDCG@10 | fresh/list |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (dropout, slots, quantile, weight, prior), group in sorted(groups.items()):
        cells = [f"{dropout:g}", str(slots), f"{quantile:g}", f"{weight:g}", f"{prior:g}"]
        cells.append(str(len(group)))
        for key in ("warm_ndcg@10", "new_hr@10", "new_ndcg@10", "fresh_per_list"):
            values = np.array([r[key] for r in group])
            std = values.std(ddof=1) if len(values) > 1 else 0.0
            cells.append(
                f"{values.mean():.4f} ± {std:.4f}" if len(values) > 1 else f"{values.mean():.4f}"
            )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _models(args, split, embeddings, params):
    """(recipe, seed, model, fit facts) per model judged: trained, or ``--models``.

    A recipe is ``{"id_dropout": ...}``; with ``--save-models`` a trained model is saved
    under ``<dir>/drop<rate>-seed<seed>`` for ``--models`` later.
    """
    if args.models:
        from lmrec.models.registry import load_model

        for path in args.models:
            model = load_model(path)
            p = model.params
            recipe = {"id_dropout": p.id_dropout}
            yield recipe, p.seed, model, {"model_dir": str(path)}
        return
    for dropout in args.id_dropout:
        recipe = {"id_dropout": dropout}
        for seed in args.seeds:
            result = train_lmrec(split, embeddings, params, seed, recipe)
            fit = {"fit_seconds": result.seconds, "best_epoch": result.best_epoch + 1}
            if args.save_models:
                name = f"drop{dropout:g}-seed{seed}"
                result.model.save(args.save_models / name)
                fit["model_dir"] = str(args.save_models / name)
            yield recipe, seed, result.model, fit


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--workspace", type=Path, default=REPO, help="has artifacts/ and params.yaml"
    )
    parser.add_argument(
        "--stage",
        choices=("val", "test"),
        nargs="+",
        default=["val"],
        help="stages judged (one fit serves both: training only sees the train split)",
    )
    parser.add_argument("--id-dropout", type=float, nargs="+", default=[0.0])
    parser.add_argument("--save-models", type=Path, help="save every trained model here")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results")
    parser.add_argument(
        "--models",
        type=Path,
        nargs="+",
        help="judge these saved model directories (config.json + weights.safetensors, "
        "each with its own recipe and seed) instead of training one per seed",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from lmrec.artifacts import load_embeddings

    split = load_split(args.workspace / "artifacts/preprocess")
    embeddings, _ = load_embeddings(args.workspace / "artifacts/embed")
    params = load_params(args.workspace / "params.yaml")
    args.out.mkdir(parents=True, exist_ok=True)
    text = unit_text(embeddings)
    rows: dict[str, list[dict[str, Any]]] = {stage: [] for stage in args.stage}
    for recipe, seed, model, fit in _models(args, split, embeddings, params):
        for stage in args.stage:
            for row in tradeoff(model, split, stage, text=text):
                row.update(**recipe, seed=seed, **fit)
                rows[stage].append(row)
                with (args.out / f"new_items_{stage}.jsonl").open("a") as fh:
                    fh.write(json.dumps(row) + "\n")
            print(f"{stage} {recipe} seed {seed}: {rows[stage][-1]}", flush=True)
    for stage, stage_rows in rows.items():
        facts = {
            "users": split.n_users,
            "items": split.n_items,
            "new_items": int((split.items["n_train"] == 0).sum()),
            "n_new": stage_rows[0]["n_new"],
            "n_warm": stage_rows[0]["n_warm"],
            "date": time.strftime("%Y-%m-%d"),
        }
        table = markdown(stage_rows, stage, facts)
        (args.out / f"new_items_{stage}.md").write_text(table)
        print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
