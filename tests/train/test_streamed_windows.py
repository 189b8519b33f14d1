"""The streamed training windows are exactly the materialised ones, at a fraction of the memory.

``training_windows`` (sequential_loss) is the reference: the loader the training loop used
before it streamed. Every batch of an epoch's shuffled order must come out the same.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from lmrec.features.dataset import load_split
from lmrec.models.sequential_loss import training_windows
from lmrec.models.sequential_windows import StreamedWindows


def _assert_same_batches(train, max_len, stride, seed, batch_size=64) -> None:
    """Both loaders, the same generator state, every batch of the epoch's order."""
    rng = None if seed is None else (lambda: np.random.default_rng([seed, 3, 1]))
    tokens, targets = training_windows(train, max_len, stride, rng and rng())
    streamed = StreamedWindows(train, max_len, stride, rng and rng())
    assert len(streamed) == len(tokens)
    order = np.random.default_rng([0, 3]).permutation(len(tokens))
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        got_tokens, got_targets = streamed.batch(batch)
        np.testing.assert_array_equal(got_tokens.numpy(), tokens[batch])
        np.testing.assert_array_equal(got_targets.numpy(), targets[batch])
    whole_tokens, whole_targets = streamed.batch(np.arange(len(streamed)))
    np.testing.assert_array_equal(whole_tokens.numpy(), tokens)
    np.testing.assert_array_equal(whole_targets.numpy(), targets)


@pytest.mark.parametrize("stride", [0, 1, 7, 51])
@pytest.mark.parametrize("seed", [None, 0, 5])
def test_tiny_profile_windows_are_the_materialised_ones(tiny_split_dir, stride, seed) -> None:
    train = load_split(tiny_split_dir).train  # the tiny profile's split, max_len 50
    _assert_same_batches(train, 50, stride, seed)


@pytest.mark.parametrize("stride", [0, 1, 2, 3, 4])
@pytest.mark.parametrize("seed", [None, 1])
def test_edge_lengths_match(stride, seed) -> None:
    # Empty, single-item, exactly one window, one past it, many windows; max_len 3.
    lengths = [0, 1, 3, 4, 5, 9, 17, 0, 2]
    train = [100 * s + np.arange(n) for s, n in enumerate(lengths)]
    _assert_same_batches(train, 3, stride, seed, batch_size=4)


def test_every_window_has_a_target_and_empty_sequences_have_none() -> None:
    """A mostly emptied split (``train.data_fraction`` 0.02 leaves 98% of users without a
    training sequence) gives windows for the other users only: a batch without a single
    target would have nothing to average the loss over."""
    train = [np.zeros(0, dtype=np.int64)] * 98 + [np.arange(5), np.arange(12)]
    assert len(StreamedWindows(train, 3)) == 2 + 3  # 5 items: 2 windows of 4; 12 items: 3
    streamed = StreamedWindows(train, 3, 0, np.random.default_rng(0))
    tokens, targets = training_windows(train, 3, 0, np.random.default_rng(0))
    assert len(streamed) == len(tokens)
    got = streamed.batch(np.arange(len(streamed)))[1].numpy()
    assert ((got >= 0).sum(axis=1) >= 1).all() and ((targets >= 0).sum(axis=1) >= 1).all()
    assert len(StreamedWindows([np.zeros(0, dtype=np.int64)] * 3, 3)) == 0


def test_bad_stride_is_refused() -> None:
    with pytest.raises(ValueError, match="window stride must be in 1..6, got 7"):
        StreamedWindows([np.arange(10)], 5, 7)


def _peak_bytes(build) -> int:
    tracemalloc.start()
    try:
        built = build()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    del built
    return peak


def test_memory_per_window_is_a_few_bytes_not_the_padded_matrix() -> None:
    rng = np.random.default_rng(0)
    train = [rng.integers(0, 1000, n) for n in rng.integers(5, 80, 20_000)]
    n_items = sum(len(s) for s in train)
    n_windows = len(StreamedWindows(train, 50))
    streamed = _peak_bytes(lambda: StreamedWindows(train, 50))
    materialised = _peak_bytes(lambda: training_windows(train, 50))
    # The flat item copy (8 bytes an item) plus a few int64 temporaries per sequence and per
    # window while building; what stays is 16 bytes a window.
    assert streamed < 8 * n_items + 80 * (len(train) + n_windows)
    assert materialised > 2 * 8 * 51 * n_windows  # two padded int64 matrices
    print(f"{n_windows} windows: streamed {streamed / 2**20:.1f} MiB, "
          f"materialised {materialised / 2**20:.1f} MiB")  # fmt: skip
