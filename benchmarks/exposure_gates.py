"""Which lists get a reserved new-item slot: the score-quantile gate against margin gates.

``serve.exposure`` gives a list its reserved slot when the best fresh item's pick score
reaches a quantile of the users' best pick scores (``min_score_quantile``). A slot costs the
list its 10th warm item, so a gate could also weigh how strong that item is: the margin
gates give the slot where ``z(pick) - m * z(10th warm score)`` is largest (``m`` 0.5, 1, 2;
``weak10``: the weakest 10th items alone), z over the calibration (warm) rows. Each gate is
cut to give the same share of lists a slot, so at each share the gates differ only in
*which* lists get it. Saved models (``new_items.py --save-models``) on a new-arrivals split:

    python benchmarks/exposure_gates.py --workspace /path/na --models /tmp/models/drop0-seed0
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lmrec.evaluation.metrics import top_k  # noqa: E402
from lmrec.evaluation.protocol import new_item_rows  # noqa: E402
from lmrec.evaluation.ranking import exclusion_mask  # noqa: E402
from lmrec.features.dataset import load_split  # noqa: E402
from lmrec.serving.exposure import PickScale, text_profiles  # noqa: E402

K = 10
TEXT_WEIGHT = 0.3
SHARES = (0.3, 0.4, 0.5, 0.6)
GATES = {
    "quantile": 0.0,  # today's: the pick score alone
    "margin 0.5": 0.5,
    "margin 1": 1.0,
    "margin 2": 2.0,
    "weak10": None,  # the 10th warm score alone (weakest first)
}


def lists_of(model, split, text, fresh, histories, targets, scale=None) -> dict:
    """Raw top-k lists, each row's best fresh pick and its score, the 10th warm score."""
    scores = model.score(histories).astype(np.float64)
    excluded = exclusion_mask(histories, scores.shape[1], keep=targets)
    affinity = text_profiles(text, histories) @ text.T
    top = top_k(scores, K, excluded)
    scale = scale or PickScale.fit([(scores[:, fresh], affinity[:, fresh])])
    pick = scale.blend(scores, affinity, TEXT_WEIGHT)
    pick[:, ~fresh] = -np.inf
    pick[excluded] = -np.inf
    best = pick.argmax(axis=1)
    rows = np.arange(len(scores))
    return {
        "top": top, "best": best, "pick": pick[rows, best], "tenth": scores[rows, top[:, -1]],
        "listed": fresh[top].any(axis=1), "targets": np.asarray(targets), "scale": scale,
    }  # fmt: skip


def served(rows: dict, give: np.ndarray) -> tuple[float, float]:
    """(NDCG@k, HR@k) of the lists with the slot given where ``give`` (and not listed)."""
    lists = rows["top"].copy()
    slot = give & ~rows["listed"]
    lists[slot, -1] = rows["best"][slot]
    hit = lists == rows["targets"][:, None]
    rank = np.where(hit.any(axis=1), hit.argmax(axis=1), K)
    ndcg = np.where(rank < K, 1.0 / np.log2(rank + 2.0), 0.0).mean()
    return float(ndcg), float((rank < K).mean())


def gate_scores(rows: dict, warm: dict, margin: float | None) -> np.ndarray:
    """A gate's score per row, z-scored over the warm (calibration) rows."""

    def z(key: str) -> np.ndarray:
        return (rows[key] - warm[key].mean()) / warm[key].std()

    return -z("tenth") if margin is None else z("pick") - margin * z("tenth")


def stage_lines(name: str, stage: str, warm: dict, new: dict) -> list[str]:
    """One table line per share of lists: warm NDCG (÷ raw) and new-item HR per gate."""
    raw = served(warm, np.zeros(len(warm["top"]), dtype=bool))[0]
    lines = []
    for share in SHARES:
        cells = []
        for margin in GATES.values():
            warm_gate, new_gate = gate_scores(warm, warm, margin), gate_scores(new, warm, margin)
            cut = np.quantile(warm_gate, 1.0 - share)
            warm_ndcg = served(warm, warm_gate >= cut)[0]
            new_hr = served(new, new_gate >= cut)[1]
            cells.append(f"{warm_ndcg / raw:.3f}×, {new_hr:.4f}")
        lines.append(f"| {name} | {stage} | {share:g} | " + " | ".join(cells) + " |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workspace", type=Path, required=True, help="has artifacts/")
    parser.add_argument("--models", type=Path, nargs="+", required=True)
    args = parser.parse_args(argv)
    from lmrec.artifacts import load_embeddings
    from lmrec.models.registry import load_model

    torch.set_num_threads(2)
    split = load_split(args.workspace / "artifacts/preprocess")
    emb, _ = load_embeddings(args.workspace / "artifacts/embed")
    text = (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float32)
    fresh = split.items["n_train"].to_numpy() == 0
    print("| model | stage | share of lists | " + " | ".join(GATES) + " |")
    print("|---|---|---|" + "---|" * len(GATES))
    for path in args.models:
        model = load_model(path)
        for stage in ("val", "test"):
            targets = split.test_items if stage == "test" else split.val_items
            users = np.flatnonzero(targets >= 0)
            hist = [split.history_for(int(u), stage) for u in users]
            warm = lists_of(model, split, text, fresh, hist, targets[users])
            _, new_targets, new_hist = new_item_rows(split, stage)
            new = lists_of(model, split, text, fresh, new_hist, new_targets, warm["scale"])
            print("\n".join(stage_lines(path.name, stage, warm, new)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
