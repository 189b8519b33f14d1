"""The training windows of the sequential recommender, streamed batch by batch.

``training_windows`` (in ``sequential_loss``) materialises every window as two padded
``[n_windows, max_len + 1]`` int64 matrices: 816 bytes per window at ``max_len`` 50, every
epoch when ``window_jitter`` is on. ``StreamedWindows`` keeps only where each window lies
(its first item's offset and its length and first target: 16 bytes) over one flat copy of the
training items, and builds a batch's padded tokens and targets when the batch is trained.
The windows, their order and each batch's rows are exactly ``training_windows``'s
(``tests/train/test_streamed_windows.py``), so a fit draws and learns the same.
"""

from __future__ import annotations

import numpy as np
import torch

from lmrec.models.sequential_net import BOS, N_SPECIAL, PAD


class StreamedWindows:
    """Next-item training windows of ``train``, laid out as ``training_windows`` lays them.

    Args:
        train: per user, the ordered training item indices.
        max_len: most items of input per window (windows hold ``max_len + 1`` items).
        stride: items between window ends counted back from a sequence's end; 0 means
            ``max_len + 1`` (no overlap).
        rng: shifts the windows before each sequence's most recent one by a random
            0..stride-1 items (one draw per sequence, in order, as ``training_windows``).

    Raises:
        ValueError: ``stride`` outside 1..max_len + 1.
    """

    def __init__(
        self,
        train: list[np.ndarray],
        max_len: int,
        stride: int = 0,
        rng: np.random.Generator | None = None,
    ) -> None:
        self.width = max_len + 1
        stride = stride or self.width
        if not 1 <= stride <= self.width:
            raise ValueError(f"sequential: window stride must be in 1..{self.width}, got {stride}")
        lengths = np.fromiter((len(s) for s in train), dtype=np.int64, count=len(train))
        flat = np.concatenate(train) if train else np.zeros(0, dtype=np.int64)
        self.items = flat.astype(np.int64, copy=False)
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        shift = np.zeros(len(train), dtype=np.int64)
        if rng is not None:  # the same stream as one scalar draw per sequence
            shift = rng.integers(0, stride, size=len(train)) if len(train) else shift
        # Window ends: the sequence's end, then ``n - stride + shift`` and every ``stride``
        # items before it while above 0 (the earlier windows only when ``n > stride``).
        first_end = lengths - stride + shift
        extra = np.where(lengths > stride, (first_end + stride - 1) // stride, 0)
        per_seq = np.where(lengths > 0, 1 + extra, 0)  # an empty sequence: no window
        seq = np.repeat(np.arange(len(train), dtype=np.int64), per_seq)
        rank = np.arange(len(seq)) - np.repeat(np.cumsum(per_seq) - per_seq, per_seq)
        end = np.where(rank == 0, lengths[seq], first_end[seq] - (rank - 1) * stride)
        # A window's targets start where the next earlier window ends (0 for the earliest).
        earlier = np.where(rank + 1 < per_seq[seq], first_end[seq] - rank * stride, 0)
        start = np.maximum(0, end - self.width)
        self._base = (offsets[seq] + start).astype(np.int64)
        self._length = (end - start).astype(np.int32)
        self._first = (earlier - start).astype(np.int32)

    def __len__(self) -> int:
        return len(self._length)

    def batch(self, rows: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens and targets of windows ``rows``: int64 ``[len(rows), max_len + 1]`` each,
        right-padded with ``PAD`` and -1, as ``training_windows`` gives those rows."""
        rows = np.asarray(rows, dtype=np.int64)
        base, length = self._base[rows, None], self._length[rows, None]
        column = np.arange(self.width)[None, :]
        inside = column < length
        window = np.where(inside, self.items[np.where(inside, base + column, 0)], 0)
        tokens = np.full((len(rows), self.width), PAD, dtype=np.int64)
        tokens[:, 0] = BOS
        tokens[:, 1:] = np.where(column[:, 1:] < length, window[:, :-1] + N_SPECIAL, PAD)
        targets = np.where(inside & (column >= self._first[rows, None]), window, -1)
        return torch.from_numpy(tokens), torch.from_numpy(targets.astype(np.int64))
