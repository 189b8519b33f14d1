"""The LM-powered sequential recommender: text-embedded items, causal-transformer users.

An item's vector is a learned projection of its (precomputed, frozen) text embedding, plus
an ID embedding when enabled. ID embeddings are dropped per item during training
(``id_dropout``) so that text alone must carry an item, and items without training
interactions never use theirs: a cold item is scored from its text alone. A user's vector is
the output of a causal transformer (SASRec-style, pre-LN) at the last of their most recent
``max_len`` items; a history is scored against every item by dot product.

Training is next-item prediction at every position of every training sequence. The loss is a
full softmax over the items seen in training while the catalog has at most
``full_softmax_max_items`` items, and beyond that a sampled softmax whose negatives are drawn
by training popularity and corrected by logQ (Yi et al., 2019). Items without training
interactions are left out of the training softmax: they play the part of items that did not
exist yet, as new items will in production.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Self

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from lmrec.features.dataset import SplitData
from lmrec.io import LmrecError
from lmrec.models.base import ModelLoadError, Params, Recommender, params_from_dict
from lmrec.models.sequential_net import BOS, N_SPECIAL, PAD, SequentialNet
from lmrec.text.encoder import TextEncoder
from lmrec.text.tuning import FINETUNE_MODES, LoraSettings, TextTower

#: Called after each epoch with (epoch index from 0, the model); returning True stops training.
EpochCallback = Callable[[int, "SequentialRecommender"], bool]

PRECISIONS = ("auto", "fp32", "bf16")
LR_SCHEDULES = ("constant", "cosine")

# Histories scored per forward pass (bounds memory for [chunk, n_items] scores).
_SCORE_CHUNK = 256


@dataclasses.dataclass(frozen=True)
class SequentialParams(Params):
    """Hyperparameters of ``SequentialRecommender``.

    Attributes:
        max_len: most recent history items a user vector is computed from.
        dim: width of item and user vectors and of the transformer.
        heads: attention heads (must divide ``dim``).
        layers: transformer layers.
        dropout: dropout on input embeddings and inside the transformer.
        id_embeddings: learn an ID embedding per item on top of the text projection.
        id_dropout: probability that an item's ID embedding is zeroed in a training step.
        epochs: training epochs (a callback may stop earlier).
        batch_size: training sequences per step.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        full_softmax_max_items: largest catalog trained with a full softmax; larger ones
            use a sampled softmax.
        n_negatives: negatives per step in the sampled softmax (shared across the batch).
        lr_schedule: "constant", or "cosine" (decay to 0 over ``epochs``, set per step).
        grad_accum_steps: batches whose gradients are summed before one optimizer step.
        precision: "auto" (bf16 autocast on CUDA with bf16 support, else fp32), "fp32"
            or "bf16" (autocast on any device).
        encoder_finetune: "frozen" (train on the precomputed text embeddings), "lora"
            (train LoRA adapters on the encoder) or "full" (train the whole encoder).
        encoder_lr: AdamW learning rate of the encoder's trained weights.
        text_max_length: tokens per item text when the encoder is fine-tuned.
        lora_r: LoRA rank.
        lora_alpha: LoRA scaling numerator.
        lora_dropout: dropout inside the LoRA adapters.
        window_stride: items between the ends of a sequence's training windows; 0 means
            ``max_len + 1`` (no overlap). Smaller strides give every predicted item at
            least ``max_len + 1 - window_stride`` items of context, at proportional cost.
        window_jitter: move the training windows before a sequence's most recent one back
            by a random offset each epoch, so items are predicted from varying contexts
            instead of always after the same fixed boundary.
        label_smoothing: label smoothing of the next-item cross-entropy (0 = none).
        seed: seeds initialisation, shuffling, dropout and sampling.
        device: "auto" (CUDA when available, else CPU), "cpu", "cuda" or "cuda:N".
    """

    max_len: int = 50
    dim: int = 64
    heads: int = 2
    layers: int = 2
    dropout: float = 0.2
    id_embeddings: bool = True
    id_dropout: float = 0.3
    epochs: int = 30
    batch_size: int = 128
    lr: float = 1.0e-3
    weight_decay: float = 0.0
    full_softmax_max_items: int = 20_000
    n_negatives: int = 1024
    lr_schedule: str = "constant"
    grad_accum_steps: int = 1
    precision: str = "auto"
    encoder_finetune: str = "frozen"
    encoder_lr: float = 5.0e-5
    text_max_length: int = 64
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.1
    window_stride: int = 0
    window_jitter: bool = False
    label_smoothing: float = 0.0
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        counts = (self.max_len, self.dim, self.heads, self.layers, self.epochs, self.batch_size)
        if min(counts) < 1 or self.full_softmax_max_items < 1 or self.n_negatives < 1:
            raise ValueError(f"sequential: sizes and counts must be >= 1, got {self}")
        if self.dim % self.heads:
            raise ValueError(f"sequential: heads ({self.heads}) must divide dim ({self.dim})")
        if not (0.0 <= self.dropout < 1.0 and 0.0 <= self.id_dropout < 1.0):
            raise ValueError(f"sequential: dropout and id_dropout must be in [0, 1), got {self}")
        if self.lr <= 0 or self.weight_decay < 0:
            raise ValueError(f"sequential: need lr > 0 and weight_decay >= 0, got {self}")
        if min(self.grad_accum_steps, self.text_max_length, self.lora_r, self.lora_alpha) < 1:
            raise ValueError(f"sequential: accumulation and encoder sizes must be >= 1: {self}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"sequential: lr_schedule must be one of {LR_SCHEDULES}: {self}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"sequential: precision must be one of {PRECISIONS}: {self}")
        if self.encoder_finetune not in FINETUNE_MODES:
            raise ValueError(f"sequential: encoder_finetune must be one of {FINETUNE_MODES}")
        if not 0 <= self.window_stride <= self.max_len + 1:
            raise ValueError(f"sequential: window_stride must be in 0..max_len + 1: {self}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"sequential: label_smoothing must be in [0, 1), got {self}")
        if self.encoder_lr <= 0 or not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"sequential: need encoder_lr > 0, lora_dropout in [0, 1): {self}")
        if self.device != "auto" and _device_type(self.device) not in ("cpu", "cuda"):
            raise ValueError(f"sequential: device must be auto, cpu or cuda[:N], got {self}")


def _device_type(name: str) -> str | None:
    try:
        return torch.device(name).type
    except RuntimeError:
        return None


def resolve_device(name: str) -> torch.device:
    """The torch device for a ``device`` param ("auto" picks CUDA when available)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def history_tokens(histories: list[np.ndarray], max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """``[BOS] + last max_len items`` per history, right-padded: (tokens [n, T], lengths [n])."""
    kept = [h[-max_len:] if max_len < len(h) else h for h in histories]
    lengths = np.array([len(h) + 1 for h in kept], dtype=np.int64)
    tokens = np.full((len(kept), int(lengths.max(initial=1))), PAD, dtype=np.int64)
    tokens[:, 0] = BOS
    for row, h in enumerate(kept):
        tokens[row, 1 : len(h) + 1] = h + N_SPECIAL
    return tokens, lengths


def training_windows(
    train: list[np.ndarray],
    max_len: int,
    stride: int = 0,
    rng: np.random.Generator | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Cut sequences into next-item training windows, every interaction a target once.

    Windows of at most ``max_len + 1`` items end every ``stride`` items counted back from a
    sequence's end (``stride`` 0 means ``max_len + 1``: windows that do not overlap). A
    window's input is ``[BOS] + window[:-1]``, so the longest input is exactly what
    ``history_tokens`` builds for a ``max_len``-item history, and its targets are the items
    the next later window does not already predict. A smaller stride gives every target at
    least ``max_len + 1 - stride`` items of context (at the cost of overlapping inputs).
    With ``rng`` the most recent window stays where it is and the ends before it move
    (shifted by a random 0..stride-1 items per sequence), so contexts differ every epoch.

    Returns:
        (tokens, targets), both int64 [n_windows, max_len + 1], right-padded with ``PAD``
        and -1 respectively (-1 also marks inputs predicted by a later window).
    """
    width = max_len + 1
    stride = stride or width
    if not 1 <= stride <= width:
        raise ValueError(f"sequential: window stride must be in 1..{width}, got {stride}")
    rows: list[tuple[np.ndarray, int]] = []  # (window items, index of its first target)
    for seq in train:
        n = len(seq)
        ends = [n]
        shift = int(rng.integers(0, stride)) if rng is not None else 0
        ends += list(range(n - stride + shift, 0, -stride)) if n > stride else []
        for end, earlier in zip(ends, ends[1:] + [0], strict=True):
            start = max(0, end - width)
            rows.append((seq[start:end], earlier - start))
    tokens = np.full((len(rows), width), PAD, dtype=np.int64)
    targets = np.full((len(rows), width), -1, dtype=np.int64)
    for row, (window, first) in enumerate(rows):
        tokens[row, 0] = BOS
        tokens[row, 1 : len(window)] = window[:-1] + N_SPECIAL
        targets[row, first : len(window)] = window[first:]
    return tokens, targets


@dataclasses.dataclass(frozen=True)
class DataParallel:
    """This process's part in data-parallel training (``torchrun`` + DDP).

    Every process walks the same shuffled global batches; process ``rank`` trains on rows
    ``rank::world_size`` of each, and ``wrap`` (e.g. ``DistributedDataParallel``) averages
    the gradients, so a step matches a single process's step on the whole global batch.
    """

    rank: int = 0
    world_size: int = 1
    wrap: Callable[[nn.Module], nn.Module] | None = None


@dataclasses.dataclass
class TrainState:
    """Everything needed to continue a fit exactly where an epoch ended.

    Attributes:
        epochs_done: completed epochs.
        module: the training module's tensors (network, and encoder when fine-tuned).
        optimizer: the optimizer's ``state_dict()``.
        epoch_losses: mean training loss of each completed epoch.
    """

    epochs_done: int
    module: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    epoch_losses: list[float]


class _Objective(nn.Module):
    """The training loss as a module, so DDP can wrap it: network (+ encoder) → loss."""

    def __init__(
        self, net: SequentialNet, tower: nn.Module | None, popularity: torch.Tensor, p: Any
    ) -> None:
        super().__init__()
        self.net, self.tower, self.p = net, tower, p
        self.register_buffer("popularity", popularity, persistent=False)
        # The full softmax runs over the items with training interactions only (the others,
        # e.g. cold items, play the part of items that did not exist): their indices, and
        # each item's column among them (-1: not trainable).
        trainable = (popularity > 0).nonzero().squeeze(1)
        column = torch.full_like(popularity, -1, dtype=torch.long)
        column[trainable] = torch.arange(len(trainable))
        self.register_buffer("trainable", trainable, persistent=False)
        self.register_buffer("column", column, persistent=False)

    def forward(
        self, tokens: torch.Tensor, targets: torch.Tensor, scale: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Next-item cross-entropy over every non-padded position of a batch.

        Returns:
            (the summed loss times ``scale``, for backward; the mean loss, for logging).
            With ``scale = world_size / positions in the global batch`` the gradients DDP
            averages equal a single process's mean-loss gradients on the whole batch.
        """
        p, net, popularity = self.p, self.net, self.popularity
        text = self.tower() if self.tower is not None else None
        id_keep = None
        if net.item_id is not None and p.id_dropout > 0:
            id_keep = (torch.rand(net.n_items, device=tokens.device) >= p.id_dropout).float()
        valid = targets >= 0
        hidden, target = net.encode(tokens, id_keep, text)[valid], targets[valid]
        if net.n_items <= p.full_softmax_max_items:
            logits = (hidden @ net.item_vectors(self.trainable, id_keep, text).T).float()
            total = F.cross_entropy(
                logits, self.column[target], reduction="sum", label_smoothing=p.label_smoothing
            )
        else:
            negatives = torch.multinomial(popularity, p.n_negatives, replacement=True)
            log_q = popularity.log()
            positive = (hidden * net.item_vectors(target, id_keep, text)).sum(-1).float()
            negative = (hidden @ net.item_vectors(negatives, id_keep, text).T).float()
            positive, negative = positive - log_q[target], negative - log_q[negatives]
            same = negatives.unsqueeze(0) == target.unsqueeze(1)
            logits = torch.cat([positive.unsqueeze(1), negative.masked_fill(same, -math.inf)], 1)
            total = _cross_entropy(logits, torch.zeros_like(target), p.label_smoothing)
        return total * scale, total.detach() / max(len(target), 1)


def _cross_entropy(logits: torch.Tensor, target: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Summed cross-entropy, label-smoothed over the classes whose logit is finite.

    Masked classes (-inf: in the sampled softmax, negatives equal to the target) get no
    smoothing mass, so the loss stays finite. (The full softmax needs no mask: it runs over
    the trainable items only and uses ``F.cross_entropy``'s own smoothing.)
    """
    if smoothing == 0.0:
        return F.cross_entropy(logits, target, reduction="sum")
    log_p = logits.log_softmax(-1)
    allowed = torch.isfinite(logits)
    nll = -log_p.gather(1, target.unsqueeze(1)).squeeze(1)
    uniform = -log_p.masked_fill(~allowed, 0.0).sum(-1) / allowed.sum(-1)
    return ((1.0 - smoothing) * nll + smoothing * uniform).sum()


def lr_factor(schedule: str, progress: float) -> float:
    """Learning-rate multiplier at ``progress`` (0..1 of all planned epochs).

    A pure function of the position in training, so a resumed fit follows the same
    schedule with no scheduler state to checkpoint.
    """
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))
    return 1.0


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for a ``precision`` param on ``device`` (None: plain fp32)."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    bf16_ok = device.type == "cuda" and torch.cuda.is_bf16_supported()
    return torch.bfloat16 if bf16_ok else None


class SequentialRecommender(Recommender):
    """Causal-transformer sequential recommender over text-embedded items.

    Args:
        params: hyperparameters.
        item_embeddings: [n_items, d_text] float32 item text embeddings, row = item index;
            None trains on ID embeddings only (then cold items all score alike).
        on_epoch_end: default per-epoch callback for ``fit`` (see ``EpochCallback``).
        item_texts: item text per item index; needed when ``encoder_finetune`` is not
            ``frozen`` (the encoder is then trained on them).
        encoder: the encoder to fine-tune (packaged name or local path).
    """

    name = "sequential"
    params_cls = SequentialParams

    def __init__(
        self,
        params: SequentialParams | None = None,
        item_embeddings: np.ndarray | None = None,
        on_epoch_end: EpochCallback | None = None,
        item_texts: Sequence[str] | None = None,
        encoder: str | None = None,
    ) -> None:
        super().__init__(params)
        self.item_embeddings = None
        if item_embeddings is not None:
            self.item_embeddings = np.asarray(item_embeddings, dtype=np.float32)
            if self.item_embeddings.ndim != 2 or not np.isfinite(self.item_embeddings).all():
                raise ValueError("sequential: item_embeddings must be a finite 2-d array")
        self.item_texts = None if item_texts is None else list(item_texts)
        self.encoder = encoder
        self.on_epoch_end = on_epoch_end
        #: Show a per-epoch progress bar while fitting.
        self.progress = False
        self.net: SequentialNet | None = None
        #: The fine-tuned encoder tower after a ``lora``/``full`` fit (None otherwise).
        self.text_tower: TextTower | None = None
        #: Mean training loss of each epoch run by the last ``fit``.
        self.epoch_losses: list[float] = []
        self.epochs_trained = 0
        self._callback: EpochCallback | None = None
        self._item_cache: torch.Tensor | None = None
        self._objective: _Objective | None = None
        self._optimizer: torch.optim.Optimizer | None = None
        self._resume: TrainState | None = None
        self._parallel = DataParallel()

    @classmethod
    def from_config(
        cls, values: Mapping[str, Any], item_embeddings: np.ndarray | None = None
    ) -> Self:
        """Build an unfitted model from a hyperparameter mapping and optional text embeddings."""
        return cls(params_from_dict(cls.params_cls, values), item_embeddings)

    def fit(
        self,
        split: SplitData,
        *,
        on_epoch_end: EpochCallback | None = None,
        resume: TrainState | None = None,
        parallel: DataParallel | None = None,
    ) -> Self:
        """Fit on ``split``'s training sequences.

        Args:
            split: the data.
            on_epoch_end: per-epoch callback for this call (overrides the constructor's);
                the model can score inside it (e.g. early stopping on validation) and
                ``train_state()`` gives a checkpoint.
            resume: a ``TrainState`` from an earlier fit of the same model on the same
                data; training continues after its last epoch and ends as the
                uninterrupted fit would.
            parallel: this process's part in data-parallel training.
        """
        self._callback = on_epoch_end or self.on_epoch_end
        self._resume, self._parallel = resume, parallel or DataParallel()
        try:
            return super().fit(split)
        finally:
            self._callback, self._resume, self._parallel = None, None, DataParallel()
            self._objective, self._optimizer = None, None

    def train_state(self) -> TrainState:
        """A checkpoint of the fit in progress (valid inside ``on_epoch_end``)."""
        if self._objective is None or self._optimizer is None:
            raise RuntimeError("sequential: train_state() is only available during fit()")
        module = {k: v.detach().clone() for k, v in self._objective.state_dict().items()}
        optimizer = copy.deepcopy(self._optimizer.state_dict())  # detach from live tensors
        return TrainState(self.epochs_trained, module, optimizer, list(self.epoch_losses))

    # ----------------------------------------------------------------- hooks
    def _fit(self, split: SplitData) -> None:
        p = self.params
        if self.item_embeddings is None and not p.id_embeddings:
            raise ValueError("sequential: id_embeddings=False needs item_embeddings")
        if self.item_embeddings is not None and len(self.item_embeddings) != self.n_items:
            raise ValueError(
                f"sequential: item_embeddings has {len(self.item_embeddings)} rows, "
                f"the split has {self.n_items} items"
            )
        device = resolve_device(p.device)
        _, items = split.train_pairs()
        counts = np.bincount(items, minlength=self.n_items)
        forked = [device.index or 0] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=forked):  # seed locally, leave the caller's RNG be
            torch.manual_seed(p.seed)
            self.net = self._build_net(torch.from_numpy(counts > 0))
            self.text_tower = self._build_tower(device)
            self._train(split.train, counts, device)

    def _build_net(self, id_known: torch.Tensor) -> SequentialNet:
        p = self.params
        text = None if self.item_embeddings is None else torch.from_numpy(self.item_embeddings)
        sizes = {"dim": p.dim, "heads": p.heads, "layers": p.layers, "max_len": p.max_len}
        return SequentialNet(
            self.n_items,
            **sizes,
            dropout=p.dropout,
            item_text=text,
            id_known=id_known,
            id_embeddings=p.id_embeddings,
        )

    def _build_tower(self, device: torch.device) -> TextTower | None:
        p = self.params
        if p.encoder_finetune == "frozen":
            return None
        if self.item_texts is None or self.encoder is None or self.item_embeddings is None:
            raise ValueError(
                f"sequential: encoder_finetune={p.encoder_finetune!r} needs "
                "item_embeddings, item_texts and encoder"
            )
        if len(self.item_texts) != self.n_items:
            raise ValueError(
                f"sequential: {len(self.item_texts)} item texts for {self.n_items} items"
            )
        encoder = TextEncoder(self.encoder, device=str(device), seed=p.seed)
        if encoder.dim != self.item_embeddings.shape[1]:
            raise ValueError(
                f"sequential: encoder {self.encoder!r} gives {encoder.dim}-d embeddings, "
                f"item_embeddings are {self.item_embeddings.shape[1]}-d"
            )
        lora = LoraSettings(r=p.lora_r, alpha=p.lora_alpha, dropout=p.lora_dropout)
        return TextTower(encoder, self.item_texts, p.encoder_finetune, p.text_max_length, lora=lora)

    def _train(self, train: list[np.ndarray], counts: np.ndarray, device: torch.device) -> None:
        p, net, parallel = self.params, self.net, self._parallel
        windows = training_windows(train, p.max_len, p.window_stride)
        popularity = torch.from_numpy(counts / max(counts.sum(), 1)).to(torch.float32)
        objective = _Objective(net, self.text_tower, popularity, p).to(device)
        groups = [{"params": [q for q in net.parameters() if q.requires_grad], "lr": p.lr}]
        if self.text_tower is not None:
            tuned = [q for q in self.text_tower.parameters() if q.requires_grad]
            groups.append({"params": tuned, "lr": p.encoder_lr})
        optimizer = torch.optim.AdamW(groups, lr=p.lr, weight_decay=p.weight_decay)
        base_lrs = [group["lr"] for group in groups]
        self.epoch_losses, self.epochs_trained = [], 0
        if self._resume is not None:
            self._load_state(objective, optimizer, self._resume)
        self._objective, self._optimizer = objective, optimizer
        model = parallel.wrap(objective) if parallel.wrap is not None else objective
        autocast_dtype = resolve_precision(p.precision, device)
        for epoch in range(self.epochs_trained, p.epochs):
            # Per-epoch seeds: a resumed fit draws exactly what the uninterrupted one did.
            torch.manual_seed(p.seed * 1_000_003 + epoch * 7_919 + parallel.rank)
            if p.window_jitter:
                rng = np.random.default_rng([p.seed, epoch, 1])
                windows = training_windows(train, p.max_len, p.window_stride, rng)
            tokens_all, targets_all = (torch.from_numpy(a) for a in windows)
            order = torch.from_numpy(
                np.random.default_rng([p.seed, epoch]).permutation(len(tokens_all))
            )
            batches = [b for b in order.split(p.batch_size) if len(b) >= parallel.world_size]
            objective.train()
            total = 0.0
            with tqdm(
                total=len(batches),
                desc=f"epoch {epoch + 1}/{p.epochs}",
                unit="batch",
                disable=not self.progress or parallel.rank != 0,
                leave=False,
            ) as bar:
                for step, batch in enumerate(batches):
                    local = batch[parallel.rank :: parallel.world_size]
                    tokens, targets = tokens_all[local], targets_all[local]
                    width = int((tokens != PAD).sum(1).max())  # trim the common right padding
                    positions = int((targets_all[batch] >= 0).sum())
                    scale = parallel.world_size / (positions * p.grad_accum_steps)
                    with torch.autocast(
                        device.type,
                        dtype=autocast_dtype or torch.bfloat16,
                        enabled=autocast_dtype is not None,
                    ):
                        objective_value, loss = model(
                            tokens[:, :width].to(device), targets[:, :width].to(device), scale
                        )
                    if not torch.isfinite(loss):
                        raise LmrecError(
                            f"sequential: non-finite training loss at epoch {epoch + 1}, "
                            f"batch {step + 1}; lower lr/encoder_lr or use precision fp32"
                        )
                    objective_value.backward()
                    if (step + 1) % p.grad_accum_steps == 0 or step + 1 == len(batches):
                        progress_done = (epoch + (step + 1) / len(batches)) / p.epochs
                        for group, base in zip(optimizer.param_groups, base_lrs, strict=True):
                            group["lr"] = base * lr_factor(p.lr_schedule, progress_done)
                        if self.text_tower is not None:  # encoder fine-tuning: clip
                            nn.utils.clip_grad_norm_(optimizer.param_groups[1]["params"], 1.0)
                        optimizer.step()
                        optimizer.zero_grad(set_to_none=True)
                    total += loss.item()
                    bar.update(1)
            mean_loss = total / max(len(batches), 1)
            if parallel.world_size > 1:  # report the mean over every process's share
                shared = torch.tensor([mean_loss], dtype=torch.float64, device=device)
                torch.distributed.all_reduce(shared)
                mean_loss = float(shared.item()) / parallel.world_size
            self.epoch_losses.append(mean_loss)
            self.epochs_trained = epoch + 1
            objective.eval()
            self._sync_text()
            if self._callback is not None and self._callback(epoch, self):
                break

    def _load_state(
        self, objective: _Objective, optimizer: torch.optim.Optimizer, state: TrainState
    ) -> None:
        try:
            objective.load_state_dict(state.module, strict=True)
            optimizer.load_state_dict(state.optimizer)
        except (KeyError, RuntimeError, ValueError) as err:
            raise ModelLoadError(f"sequential: checkpoint does not fit this model: {err}") from err
        self.epoch_losses = list(state.epoch_losses)
        self.epochs_trained = state.epochs_done
        self._sync_text()

    def _sync_text(self) -> None:
        """Store the fine-tuned encoder's current item embeddings for scoring and saving."""
        self._item_cache = None
        if self.text_tower is not None:
            embedded = self.text_tower.embed_all()
            self.net.item_text.copy_(embedded)
            self.item_embeddings = embedded.cpu().numpy()

    @torch.no_grad()
    def item_matrix(self) -> np.ndarray:
        """Every item's output vector ``[n_items, dim]``: score = user vector · item vector."""
        self._require_fitted()
        if self._item_cache is None:
            self.net.eval()
            self._item_cache = self.net.item_vectors()
        return self._item_cache.float().cpu().numpy()

    @torch.no_grad()
    def user_vectors(self, histories: Sequence[np.ndarray]) -> np.ndarray:
        """The user vector ``[len(histories), dim]`` of each ordered history (serving's
        two-tower path: an inner-product index over ``item_matrix``)."""
        n_items = self._require_fitted()
        checked = [self._check_history(h, n_items) for h in histories]
        return self._user_vectors(checked).float().cpu().numpy()

    def _user_vectors(self, histories: list[np.ndarray]) -> torch.Tensor:
        net = self.net
        if net.training:  # eval() walks every submodule: a cost per serving request
            net.eval()
        device = net.bos.device
        out = []
        for start in range(0, len(histories), _SCORE_CHUNK):
            chunk = histories[start : start + _SCORE_CHUNK]
            tokens, lengths = history_tokens(chunk, self.params.max_len)
            hidden = net.encode(torch.from_numpy(tokens).to(device))
            last = torch.from_numpy(lengths - 1).to(device)
            out.append(hidden[torch.arange(len(chunk), device=device), last])
        return torch.cat(out)

    @torch.no_grad()
    def _score(self, histories: list[np.ndarray]) -> np.ndarray:
        if self._item_cache is None:
            self.net.eval()
            self._item_cache = self.net.item_vectors()
        out = np.empty((len(histories), self.n_items), dtype=np.float32)
        for start in range(0, len(histories), _SCORE_CHUNK):
            chunk = histories[start : start + _SCORE_CHUNK]
            users = self._user_vectors(chunk)
            out[start : start + len(chunk)] = (users @ self._item_cache.T).cpu().numpy()
        return out

    def _state(self) -> dict[str, np.ndarray]:
        return {key: value.detach().cpu().numpy() for key, value in self.net.state_dict().items()}

    def _restore(self, state: Mapping[str, np.ndarray], config: Mapping[str, Any]) -> None:
        if "item_text" in state:
            self.item_embeddings = np.array(state["item_text"], dtype=np.float32)
        tensors = {key: torch.from_numpy(np.array(value)) for key, value in state.items()}
        try:
            self.net = self._build_net(tensors["id_known"])
            self.net.load_state_dict(tensors, strict=True)
        except (KeyError, RuntimeError, ValueError) as err:
            raise ModelLoadError(f"sequential: saved weights do not fit the config: {err}") from err
        self.net.to(resolve_device(self.params.device)).eval()
        self.epochs_trained = int(config.get("epochs_trained", 0))
        self._item_cache = None

    def _extra_config(self) -> dict[str, Any]:
        text_dim = None if self.item_embeddings is None else int(self.item_embeddings.shape[1])
        return {"text_dim": text_dim, "epochs_trained": self.epochs_trained}
