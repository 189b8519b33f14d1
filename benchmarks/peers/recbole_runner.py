"""Train a RecBole sequential model on an exported lmrec split and write score matrices.

Runs inside ``.venv-recbole`` (RecBole 1.2.1 needs numpy<2), launched by
``recbole_peers.py`` as ``.venv-recbole/bin/python recbole_runner.py JOBDIR``; it imports
nothing from lmrec. ``JOBDIR`` holds what the lmrec side exported:

* ``job.json``: ``model`` (RecBole class name), ``seed``, ``threads``, ``stages`` and
  ``config`` (RecBole config overrides: epochs, stopping_step, model hyperparameters...).
* ``split.npz``: ``n_users``, ``n_items``; ``seq_flat``/``seq_offsets``: per user, the
  sequence RecBole trains on (train items, then the validation item, then the test item);
  ``hist_<stage>_flat``/``hist_<stage>_offsets``: per user, the history lmrec's protocol
  scores from at that stage.

The runner writes the RecBole atomic file (timestamp = position in the sequence), splits it
leave-one-out (``{'LS': 'valid_and_test'}``, order TO, no filtering), trains with early
stopping on validation NDCG@10, reloads the best checkpoint and scores every user's lmrec
history with ``full_sort_predict``. Outputs in ``JOBDIR``: ``scores-<stage>.npy`` (float32
``[n_users, n_items]`` in lmrec's item index space; items RecBole never saw score
``UNSEEN_SCORE``), ``result.json`` (timings, epochs, RecBole's own metrics as a sanity check
only) and ``progress.log`` (one line per epoch).
"""

from __future__ import annotations

import json
import os
import sys
import time
from logging import getLogger
from pathlib import Path
from typing import Any

import numpy as np
import torch
from recbole.config import Config
from recbole.data import create_dataset, data_preparation
from recbole.data.interaction import Interaction
from recbole.utils import get_model, get_trainer, init_logger, init_seed

#: Score of items that RecBole never saw (absent from every training sequence).
UNSEEN_SCORE = -1.0e9
DATASET = "lmrec"
SCORE_BATCH = 256


class Progress:
    """Appends timestamped lines to ``progress.log`` (and echoes them to stdout)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.start = time.perf_counter()

    def __call__(self, message: str) -> None:
        line = f"[{time.perf_counter() - self.start:8.1f}s] {message}"
        print(line, flush=True)
        with self.path.open("a") as f:
            f.write(line + "\n")


def ragged(data: Any, name: str) -> list[np.ndarray]:
    """Split ``<name>_flat`` by ``<name>_offsets`` (length n+1) into n arrays."""
    flat, offsets = data[f"{name}_flat"], data[f"{name}_offsets"]
    return [flat[offsets[i] : offsets[i + 1]] for i in range(len(offsets) - 1)]


def write_atomic_file(sequences: list[np.ndarray], data_dir: Path) -> int:
    """Write ``<data_dir>/lmrec/lmrec.inter``; timestamps are positions. Returns rows."""
    out = data_dir / DATASET
    out.mkdir(parents=True, exist_ok=True)
    rows = 0
    with (out / f"{DATASET}.inter").open("w") as f:
        f.write("user_id:token\titem_id:token\ttimestamp:float\n")
        for user, seq in enumerate(sequences):
            for position, item in enumerate(seq):
                f.write(f"{user}\t{int(item)}\t{position}\n")
            rows += len(seq)
    return rows


def build_config(job: dict[str, Any], jobdir: Path) -> Config:
    """RecBole ``Config`` for the job: our split protocol plus the job's overrides."""
    settings: dict[str, Any] = {
        "data_path": str(jobdir / "dataset"),
        "checkpoint_dir": str(jobdir / "saved"),
        "gpu_id": "",
        "use_gpu": False,
        "worker": 0,
        "seed": int(job["seed"]),
        "reproducibility": True,
        "show_progress": False,
        "save_dataset": False,
        "save_dataloaders": False,
        "log_wandb": False,
        "USER_ID_FIELD": "user_id",
        "ITEM_ID_FIELD": "item_id",
        "TIME_FIELD": "timestamp",
        "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        "user_inter_num_interval": "[0,inf)",
        "item_inter_num_interval": "[0,inf)",
        "eval_args": {
            "split": {"LS": "valid_and_test"},
            "order": "TO",
            "group_by": "user",
            "mode": "full",
        },
        "loss_type": "CE",
        "train_neg_sample_args": None,
        "metrics": ["Hit", "NDCG", "MRR", "Recall"],
        "topk": [10],
        "valid_metric": "NDCG@10",
        "valid_metric_bigger": True,
    }
    settings.update(job.get("config", {}))
    return Config(model=job["model"], dataset=DATASET, config_dict=settings)


def timed_trainer(config: Config, model: torch.nn.Module, progress: Progress) -> Any:
    """The model's RecBole trainer, subclassed to time and report every epoch."""
    base = get_trainer(config["MODEL_TYPE"], config["model"])

    class TimedTrainer(base):  # type: ignore[misc, valid-type]
        epoch_seconds: list[float]
        valid_seconds: list[float]

        def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
            start = time.perf_counter()
            loss = super()._train_epoch(train_data, epoch_idx, loss_func, show_progress)
            self.epoch_seconds.append(time.perf_counter() - start)
            progress(f"epoch {epoch_idx}: train {self.epoch_seconds[-1]:.1f}s, loss {loss}")
            return loss

        def _valid_epoch(self, valid_data, show_progress=False):
            start = time.perf_counter()
            score, result = super()._valid_epoch(valid_data, show_progress)
            self.valid_seconds.append(time.perf_counter() - start)
            progress(f"  valid {self.valid_seconds[-1]:.1f}s, ndcg@10 {score:.4f}")
            return score, result

    trainer = TimedTrainer(config, model)
    trainer.epoch_seconds, trainer.valid_seconds = [], []
    return trainer


def item_maps(dataset: Any, n_items: int) -> tuple[np.ndarray, np.ndarray]:
    """(lmrec index -> RecBole id or -1, RecBole id -> lmrec index or -1; id 0 is padding)."""
    tokens = dataset.field2id_token[dataset.iid_field]
    ours_to_rb = np.full(n_items, -1, dtype=np.int64)
    rb_to_ours = np.full(len(tokens), -1, dtype=np.int64)
    for rb_id, token in enumerate(tokens):
        if rb_id == 0 or token == "[PAD]":
            continue
        ours_to_rb[int(token)] = rb_id
        rb_to_ours[rb_id] = int(token)
    return ours_to_rb, rb_to_ours


@torch.no_grad()
def score_histories(
    model: Any,
    histories: list[np.ndarray],
    ours_to_rb: np.ndarray,
    rb_to_ours: np.ndarray,
    n_items: int,
    max_len: int,
) -> np.ndarray:
    """Full-catalog scores ``[len(histories), n_items]`` for lmrec histories.

    Each history is mapped to RecBole ids (items it never saw are dropped), truncated to the
    last ``max_len`` items and laid out as RecBole's own sequences are (left-aligned, zero
    padded, with a length). An empty history scores every item 0.
    """
    model.eval()
    known = rb_to_ours >= 0
    out = np.full((len(histories), n_items), UNSEEN_SCORE, dtype=np.float32)
    for start in range(0, len(histories), SCORE_BATCH):
        batch = histories[start : start + SCORE_BATCH]
        seq = np.zeros((len(batch), max_len), dtype=np.int64)
        lengths = np.zeros(len(batch), dtype=np.int64)
        for row, hist in enumerate(batch):
            ids = ours_to_rb[np.asarray(hist, dtype=np.int64)]
            ids = ids[ids > 0][-max_len:]
            seq[row, : len(ids)] = ids
            lengths[row] = len(ids)
        interaction = Interaction(
            {
                model.ITEM_SEQ: torch.from_numpy(seq),
                model.ITEM_SEQ_LEN: torch.from_numpy(np.maximum(lengths, 1)),
            }
        )
        scores = model.full_sort_predict(interaction).reshape(len(batch), -1).numpy()
        rows = out[start : start + len(batch)]
        rows[:, rb_to_ours[known]] = scores[:, known]
        rows[lengths == 0] = 0.0
    return out


def main(jobdir: Path) -> None:
    """Run the job in ``jobdir`` (see the module docstring)."""
    # RecBole's checkpoints hold more than tensors; torch reads this at load time.
    os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    job = json.loads((jobdir / "job.json").read_text())
    data = np.load(jobdir / "split.npz")
    n_users, n_items = int(data["n_users"]), int(data["n_items"])
    progress = Progress(jobdir / "progress.log")
    threads = int(job.get("threads", 2))
    torch.set_num_threads(threads)

    rows = write_atomic_file(ragged(data, "seq"), jobdir / "dataset")
    progress(f"{job['model']}: {n_users} users, {n_items} items, {rows} interactions")
    config = build_config(job, jobdir)
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    logger = getLogger()
    logger.info(config)
    torch.set_num_threads(threads)

    dataset = create_dataset(config)
    logger.info(dataset)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    init_seed(config["seed"], config["reproducibility"])
    model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    trainer = timed_trainer(config, model, progress)

    start = time.perf_counter()
    best_score, best_valid = trainer.fit(train_data, valid_data, saved=True, show_progress=False)
    fit_seconds = time.perf_counter() - start
    # load_best_model=True restores the best checkpoint into trainer.model.
    test_result = trainer.evaluate(test_data, load_best_model=True, show_progress=False)
    progress(f"fit {fit_seconds:.1f}s; best valid {dict(best_valid)}; test {dict(test_result)}")

    ours_to_rb, rb_to_ours = item_maps(dataset, n_items)
    max_len = int(config["MAX_ITEM_LIST_LENGTH"])
    score_start = time.perf_counter()
    for stage in job["stages"]:
        histories = ragged(data, f"hist_{stage}")
        scores = score_histories(trainer.model, histories, ours_to_rb, rb_to_ours, n_items, max_len)
        np.save(jobdir / f"scores-{stage}.npy", scores)
    score_seconds = time.perf_counter() - score_start

    result = {
        "model": job["model"],
        "fit_seconds": fit_seconds,
        "score_seconds": score_seconds,
        "epochs_run": len(trainer.epoch_seconds),
        "epoch_seconds": trainer.epoch_seconds,
        "valid_seconds": trainer.valid_seconds,
        "best_valid_ndcg@10": float(best_score),
        "recbole_best_valid": {k: float(v) for k, v in best_valid.items()},
        "recbole_test": {k: float(v) for k, v in test_result.items()},
        "recbole_items": int(len(rb_to_ours) - 1),
        "unseen_items": int((ours_to_rb < 0).sum()),
        "config": {
            key: config[key]
            for key in sorted(config.final_config_dict)
            if isinstance(config[key], int | float | str | bool | list | dict | type(None))
        },
        "versions": {
            "recbole": __import__("recbole").__version__,
            "torch": torch.__version__,
            "numpy": np.__version__,
        },
    }
    (jobdir / "result.json").write_text(json.dumps(result, indent=2, sort_keys=True, default=str))
    progress("done")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(f"usage: {sys.argv[0]} JOBDIR")
    main(Path(sys.argv[1]).resolve())
