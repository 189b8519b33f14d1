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

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any, Self

import numpy as np
import torch
import torch.nn.functional as F

from lmrec.features.dataset import SplitData
from lmrec.models.base import ModelLoadError, Params, Recommender, params_from_dict
from lmrec.models.sequential_net import BOS, N_SPECIAL, PAD, SequentialNet

#: Called after each epoch with (epoch index from 0, the model); returning True stops training.
EpochCallback = Callable[[int, "SequentialRecommender"], bool]

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


def training_windows(train: list[np.ndarray], max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Cut sequences into next-item training windows, every interaction a target once.

    Each sequence is cut from its end into chunks of at most ``max_len + 1`` items; a
    chunk's input is ``[BOS] + chunk[:-1]`` and its targets are ``chunk``, so the longest
    input is exactly what ``history_tokens`` builds for a ``max_len``-item history.

    Returns:
        (tokens, targets), both int64 [n_windows, max_len + 1], right-padded with ``PAD``
        and -1 respectively.
    """
    chunks = []
    for seq in train:
        for end in range(len(seq), 0, -(max_len + 1)):
            chunks.append(seq[max(0, end - max_len - 1) : end])
    tokens = np.full((len(chunks), max_len + 1), PAD, dtype=np.int64)
    targets = np.full((len(chunks), max_len + 1), -1, dtype=np.int64)
    for row, chunk in enumerate(chunks):
        tokens[row, 0] = BOS
        tokens[row, 1 : len(chunk)] = chunk[:-1] + N_SPECIAL
        targets[row, : len(chunk)] = chunk
    return tokens, targets


class SequentialRecommender(Recommender):
    """Causal-transformer sequential recommender over text-embedded items.

    Args:
        params: hyperparameters.
        item_embeddings: [n_items, d_text] float32 item text embeddings, row = item index;
            None trains on ID embeddings only (then cold items all score alike).
        on_epoch_end: default per-epoch callback for ``fit`` (see ``EpochCallback``).
    """

    name = "sequential"
    params_cls = SequentialParams

    def __init__(
        self,
        params: SequentialParams | None = None,
        item_embeddings: np.ndarray | None = None,
        on_epoch_end: EpochCallback | None = None,
    ) -> None:
        super().__init__(params)
        self.item_embeddings = None
        if item_embeddings is not None:
            self.item_embeddings = np.asarray(item_embeddings, dtype=np.float32)
            if self.item_embeddings.ndim != 2 or not np.isfinite(self.item_embeddings).all():
                raise ValueError("sequential: item_embeddings must be a finite 2-d array")
        self.on_epoch_end = on_epoch_end
        self.net: SequentialNet | None = None
        #: Mean training loss of each epoch run by the last ``fit``.
        self.epoch_losses: list[float] = []
        self.epochs_trained = 0
        self._callback: EpochCallback | None = None
        self._item_cache: torch.Tensor | None = None

    @classmethod
    def from_config(
        cls, values: Mapping[str, Any], item_embeddings: np.ndarray | None = None
    ) -> Self:
        """Build an unfitted model from a hyperparameter mapping and optional text embeddings."""
        return cls(params_from_dict(cls.params_cls, values), item_embeddings)

    def fit(self, split: SplitData, *, on_epoch_end: EpochCallback | None = None) -> Self:
        """Fit on ``split``'s training sequences.

        Args:
            split: the data.
            on_epoch_end: per-epoch callback for this call (overrides the constructor's);
                the model can score inside it, e.g. for early stopping on validation.
        """
        self._callback = on_epoch_end or self.on_epoch_end
        try:
            return super().fit(split)
        finally:
            self._callback = None

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
            self.net = self._build_net(torch.from_numpy(counts > 0)).to(device)
            self._train(training_windows(split.train, p.max_len), counts, device)

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

    def _train(
        self, windows: tuple[np.ndarray, np.ndarray], counts: np.ndarray, device: torch.device
    ) -> None:
        p, net = self.params, self.net
        tokens_all, targets_all = (torch.from_numpy(a) for a in windows)
        popularity = torch.from_numpy(counts / max(counts.sum(), 1)).to(device, torch.float32)
        optimizer = torch.optim.AdamW(net.parameters(), lr=p.lr, weight_decay=p.weight_decay)
        rng = np.random.default_rng(p.seed)
        self.epoch_losses, self.epochs_trained = [], 0
        for epoch in range(p.epochs):
            net.train()
            self._item_cache = None
            total, steps = 0.0, 0
            order = torch.from_numpy(rng.permutation(len(tokens_all)))
            for batch in order.split(p.batch_size):
                tokens, targets = tokens_all[batch], targets_all[batch]
                width = int((targets >= 0).sum(1).max())  # trim the common right padding
                loss = self._loss(
                    tokens[:, :width].to(device), targets[:, :width].to(device), popularity
                )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total, steps = total + loss.item(), steps + 1
            self.epoch_losses.append(total / max(steps, 1))
            self.epochs_trained = epoch + 1
            net.eval()
            if self._callback is not None and self._callback(epoch, self):
                break

    def _loss(
        self, tokens: torch.Tensor, targets: torch.Tensor, popularity: torch.Tensor
    ) -> torch.Tensor:
        """Mean next-item cross-entropy over every non-padded position of a batch."""
        p, net = self.params, self.net
        id_keep = None
        if net.item_id is not None and p.id_dropout > 0:
            id_keep = (torch.rand(self.n_items, device=tokens.device) >= p.id_dropout).float()
        valid = targets >= 0
        hidden, target = net.encode(tokens, id_keep)[valid], targets[valid]
        seen = popularity > 0
        if self.n_items <= p.full_softmax_max_items:
            logits = hidden @ net.item_vectors(None, id_keep).T
            return F.cross_entropy(logits.masked_fill(~seen, -math.inf), target)
        negatives = torch.multinomial(popularity, p.n_negatives, replacement=True)
        log_q = popularity.log()
        positive = (hidden * net.item_vectors(target, id_keep)).sum(-1) - log_q[target]
        negative = hidden @ net.item_vectors(negatives, id_keep).T - log_q[negatives]
        negative = negative.masked_fill(negatives.unsqueeze(0) == target.unsqueeze(1), -math.inf)
        logits = torch.cat([positive.unsqueeze(1), negative], dim=1)
        return F.cross_entropy(logits, torch.zeros_like(target))

    @torch.no_grad()
    def _score(self, histories: list[np.ndarray]) -> np.ndarray:
        net = self.net
        net.eval()
        device = net.bos.device
        if self._item_cache is None:
            self._item_cache = net.item_vectors()
        out = np.empty((len(histories), self.n_items), dtype=np.float32)
        for start in range(0, len(histories), _SCORE_CHUNK):
            chunk = histories[start : start + _SCORE_CHUNK]
            tokens, lengths = history_tokens(chunk, self.params.max_len)
            hidden = net.encode(torch.from_numpy(tokens).to(device))
            last = torch.from_numpy(lengths - 1).to(device)
            users = hidden[torch.arange(len(chunk), device=device), last]
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
