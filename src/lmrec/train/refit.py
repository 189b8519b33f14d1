"""The production refit: the gated recipe trained on every event for a fixed epoch count.

The gate judges a candidate fitted on the split (validation and test events held out, the
cold items held out entirely). What is served is the same recipe refit on everything:
``refit_sequential`` builds the model from the same ``train`` block (seed, hyperparameters,
device) and runs exactly the epoch count early stopping chose for the candidate. There is
nothing to validate on, so there is no early stopping, no checkpoint and no resume.

The learning-rate schedule is the candidate's: planned over ``train.sequential.epochs`` and
cut after the chosen epoch, so the refit takes the very steps the candidate took up to its
best epoch, only over more data (fitted on the candidate's own data it reproduces the
candidate's weights exactly).

One process (one GPU is plenty for a single fit of a known length); the stage refuses to
run under ``torchrun``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from lmrec.config import TrainParams
from lmrec.features.dataset import SplitData
from lmrec.io import LmrecError
from lmrec.models.sequential import SequentialRecommender
from lmrec.train.tracking import Tracker
from lmrec.train.trainer import sequential_params


@dataclass
class RefitResult:
    """What a refit produced."""

    model: SequentialRecommender
    epochs: int
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0


def check_epochs(epochs: int, planned: int) -> None:
    """Refuse an epoch count the candidate's schedule cannot have chosen.

    Raises:
        LmrecError: ``epochs`` is not in 1..``planned`` (``train.sequential.epochs``).
    """
    if not 1 <= epochs <= planned:
        raise LmrecError(
            f"refit: {epochs} epochs chosen, but train.sequential.epochs is {planned}; "
            "the candidate was trained with other params: re-run train"
        )


def refit_sequential(
    data: SplitData,
    embeddings: np.ndarray | None,
    cfg: TrainParams,
    epochs: int,
    *,
    tracker: Tracker | None = None,
    item_texts: list[str] | None = None,
    encoder: str | None = None,
    progress: bool = False,
) -> RefitResult:
    """Fit the sequential model on all of ``data``'s training sequences for ``epochs`` epochs.

    Args:
        data: every event as training data (``features.dataset.write_all_events``).
        embeddings: item text embeddings from the embed stage (same item index as ``data``).
        cfg: the ``train`` block the candidate was trained with.
        epochs: the epoch count early stopping chose for the candidate.
        tracker: MLflow run to log the per-epoch loss into.
        item_texts, encoder: for encoder fine-tuning (``encoder_finetune`` lora/full).
        progress: show per-epoch progress bars.

    Raises:
        LmrecError: ``epochs`` is outside 1..``train.sequential.epochs``.
    """
    params = sequential_params(cfg)
    check_epochs(epochs, params.epochs)
    started = time.perf_counter()
    epoch_started = [started]

    def on_epoch_end(epoch: int, model: SequentialRecommender) -> bool:
        seconds = time.perf_counter() - epoch_started[0]
        loss = model.epoch_losses[-1]
        if tracker is not None:
            tracker.log_metrics({"loss": loss, "epoch_seconds": seconds}, step=epoch)
        print(f"refit epoch {epoch + 1}/{epochs}  loss {loss:.4f}  ({seconds:.1f} s)", flush=True)
        epoch_started[0] = time.perf_counter()
        return epoch + 1 >= epochs

    model = SequentialRecommender(params, embeddings, item_texts=item_texts, encoder=encoder)
    model.progress = progress
    model.fit(data, on_epoch_end=on_epoch_end)
    if model.epochs_trained != epochs:
        raise LmrecError(f"refit: trained {model.epochs_trained} epochs, expected {epochs}")
    return RefitResult(
        model=model,
        epochs=model.epochs_trained,
        losses=list(model.epoch_losses),
        seconds=time.perf_counter() - started,
    )
