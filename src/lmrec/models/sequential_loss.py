"""What the sequential recommender is trained on and the loss it minimises.

``history_tokens`` and ``training_windows`` lay histories out as the network's tokens (the
first for scoring, the second for next-item training); ``NextItemObjective`` is the loss as
a module (network, and the encoder tower when fine-tuned, in; loss out), so that DDP can
wrap it. The loop that minimises it is in ``sequential_fit``; the layout of the
``sequential*`` modules is in ``sequential``'s docstring.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lmrec.config import SequentialParams
from lmrec.models.sequential_net import BOS, N_SPECIAL, PAD, SequentialNet


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
    An empty sequence has no window.

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
        if n == 0:  # nothing to predict (a user whose events all went to val/test, or one
            continue  # a data_fraction left out): no window, but the same draws
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


class NextItemObjective(nn.Module):
    """Next-item cross-entropy as a module, so DDP can wrap it: network (+ encoder) → loss.

    A full softmax over the items with training interactions while the catalog has at most
    ``full_softmax_max_items`` items, beyond that a sampled softmax with popularity-drawn,
    logQ-corrected negatives (Yi et al., 2019).

    Args:
        net: the network being trained.
        tower: the encoder tower being fine-tuned (its output replaces the stored item
            text embeddings), or None.
        popularity: [n_items] float32 training-interaction share of each item.
        p: hyperparameters (ID dropout, softmax choice, negatives, label smoothing).
    """

    def __init__(
        self,
        net: SequentialNet,
        tower: nn.Module | None,
        popularity: torch.Tensor,
        p: SequentialParams,
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
        p, net = self.p, self.net
        text = self.tower() if self.tower is not None else None
        id_keep = None
        if net.item_id is not None and p.id_dropout > 0:
            id_keep = (torch.rand(net.n_items, device=tokens.device) >= p.id_dropout).float()
        valid = targets >= 0
        hidden, target = net.encode(tokens, id_keep, text)[valid], targets[valid]
        full = net.n_items <= p.full_softmax_max_items
        softmax = self._full_softmax if full else self._sampled_softmax
        total = softmax(hidden, target, id_keep, text)
        return total * scale, total.detach() / max(len(target), 1)

    def _full_softmax(
        self,
        hidden: torch.Tensor,
        target: torch.Tensor,
        id_keep: torch.Tensor | None,
        text: torch.Tensor | None,
    ) -> torch.Tensor:
        """Summed cross-entropy of ``hidden`` [n, dim] against every trainable item."""
        logits = (hidden @ self.net.item_vectors(self.trainable, id_keep, text).T).float()
        return F.cross_entropy(
            logits, self.column[target], reduction="sum", label_smoothing=self.p.label_smoothing
        )

    def _sampled_softmax(
        self,
        hidden: torch.Tensor,
        target: torch.Tensor,
        id_keep: torch.Tensor | None,
        text: torch.Tensor | None,
    ) -> torch.Tensor:
        """Summed logQ-corrected cross-entropy against ``n_negatives`` shared negatives."""
        p, net, popularity = self.p, self.net, self.popularity
        negatives = torch.multinomial(popularity, p.n_negatives, replacement=True)
        log_q = popularity.log()
        positive = (hidden * net.item_vectors(target, id_keep, text)).sum(-1).float()
        negative = (hidden @ net.item_vectors(negatives, id_keep, text).T).float()
        positive, negative = positive - log_q[target], negative - log_q[negatives]
        same = negatives.unsqueeze(0) == target.unsqueeze(1)
        logits = torch.cat([positive.unsqueeze(1), negative.masked_fill(same, -math.inf)], 1)
        return smoothed_cross_entropy(logits, torch.zeros_like(target), p.label_smoothing)


def smoothed_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, smoothing: float
) -> torch.Tensor:
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
