"""Behaviour specific to the LM-powered sequential model (the contract suite covers the rest).

Every fit here uses the tiny seeded config from ``conftest.tiny_sequential`` on the planted
data, with stand-in text embeddings that cluster each group's items.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lmrec.config import SequentialParams
from lmrec.models.base import CONFIG_FILE, ModelLoadError
from lmrec.models.popularity import PopularityRecommender
from lmrec.models.sequential import SequentialRecommender, history_tokens, training_windows
from lmrec.models.sequential_loss import smoothed_cross_entropy as _cross_entropy
from lmrec.models.sequential_net import BOS, PAD

from .conftest import TEST_RECIPE, Planted, hit_rate, make_cold_planted, tiny_sequential

COLD_PER_GROUP = 3


@pytest.fixture(scope="module")
def model(planted: Planted) -> SequentialRecommender:
    return tiny_sequential(planted).fit(planted.split)


@pytest.fixture(scope="module")
def cold_planted() -> Planted:
    """The planted walks plus ``COLD_PER_GROUP`` never-seen items per group, text-wise in it."""
    return make_cold_planted(COLD_PER_GROUP)


def test_beats_popularity(model: SequentialRecommender, planted: Planted) -> None:
    hr, chance = hit_rate(model, planted.split)
    hr_pop, _ = hit_rate(PopularityRecommender().fit(planted.split), planted.split)
    assert hr >= 3 * chance and hr >= hr_pop + 0.3, (hr, hr_pop, chance)


def test_uses_order(model: SequentialRecommender, planted: Planted) -> None:
    """Same items, two orders: the successor of whichever run comes last must win.

    A model that ignores order gives both histories the same scores, so it can satisfy at
    most half of these comparisons.
    """
    right = total = 0
    for group in planted.groups:
        for start in range(len(group)):
            early, late = (start + np.arange(3)) % 16, (start + 7 + np.arange(3)) % 16
            after_early, after_late = group[(early[-1] + 1) % 16], group[(late[-1] + 1) % 16]
            scores = model.score([group[np.r_[early, late]], group[np.r_[late, early]]])
            right += scores[0, after_late] > scores[0, after_early]
            right += scores[1, after_early] > scores[1, after_late]
            total += 2
    assert right / total >= 0.9, f"order respected in {right}/{total} comparisons"


def test_cold_items_are_ranked_from_text(cold_planted: Planted) -> None:
    """Among never-seen items, those whose text sits in the user's group come first."""
    split, cold = cold_planted.split, cold_planted.cold_items
    model = tiny_sequential(cold_planted).fit(split)
    histories = [split.history_for(user, "test") for user in range(split.n_users)]
    scores = model.score(histories)[:, cold]
    k = COLD_PER_GROUP
    top = cold[np.argsort(-scores, axis=1, kind="stable")[:, :k]]
    own = [set(cold_planted.groups[u % len(cold_planted.groups)][-k:]) for u in range(len(top))]
    precision = np.mean([len(own[u] & set(top[u])) / k for u in range(len(top))])
    chance = k / len(cold)
    assert precision >= 5 * chance, f"cold precision@{k} {precision:.2f}, chance {chance:.3f}"


def test_cold_items_ignore_their_id_embeddings(model: SequentialRecommender) -> None:
    """A cold item's vector is its text projection alone, whatever its ID row holds."""
    net = model.net
    cold = torch.from_numpy(np.flatnonzero(~net.id_known.numpy()))
    assert len(cold) > 0
    with torch.no_grad():
        expected = net.text_proj(net.item_text[cold])
        saved = net.item_id.weight[cold].clone()
        net.item_id.weight[cold] = 100.0
        try:
            torch.testing.assert_close(net.item_vectors(cold), expected, rtol=0, atol=0)
            torch.testing.assert_close(net.item_vectors()[cold], expected)
        finally:
            net.item_id.weight[cold] = saved


def test_text_item_vectors_are_the_cold_items_vectors(
    model: SequentialRecommender, planted: Planted
) -> None:
    """An item given by its text alone gets the vector ``item_matrix`` gives a cold item."""
    cold = np.flatnonzero(~model.net.id_known.numpy())
    assert len(cold) > 0
    vectors = model.text_item_vectors(model.item_embeddings[cold])
    assert vectors.shape == (len(cold), model.params.dim) and vectors.dtype == np.float32
    np.testing.assert_allclose(vectors, model.item_matrix()[cold], rtol=0, atol=1e-6)
    # Warm items' vectors also carry their ID embedding: text alone differs from them.
    warm = np.flatnonzero(model.net.id_known.numpy())[:5]
    assert not np.allclose(
        model.text_item_vectors(model.item_embeddings[warm]), model.item_matrix()[warm]
    )
    with pytest.raises(ValueError, match="text embeddings"):
        model.text_item_vectors(np.zeros((2, model.item_embeddings.shape[1] + 1), np.float32))
    id_only = SequentialRecommender(SequentialParams(epochs=1, dim=16, device="cpu"))
    with pytest.raises(ValueError, match="no text"):
        id_only.fit(planted.split).text_item_vectors(model.item_embeddings[cold])


def test_sampled_softmax_learns_and_is_deterministic(planted: Planted, monkeypatch) -> None:
    draws = []
    multinomial = torch.multinomial

    def counting_multinomial(*args, **kwargs):
        draws.append(1)
        return multinomial(*args, **kwargs)

    monkeypatch.setattr(torch, "multinomial", counting_multinomial)
    model = tiny_sequential(planted, full_softmax_max_items=10, n_negatives=32)
    model.fit(planted.split)
    assert draws, "the sampled-softmax path did not run"
    hr, chance = hit_rate(model, planted.split)
    assert hr >= 3 * chance, f"sampled softmax: HR@10 {hr:.3f}, chance {chance:.3f}"
    again = tiny_sequential(planted, full_softmax_max_items=10, n_negatives=32)
    histories = [planted.split.history_for(u, "test") for u in range(20)]
    np.testing.assert_array_equal(again.fit(planted.split).score(histories), model.score(histories))


def test_seed_changes_the_model(model: SequentialRecommender, planted: Planted) -> None:
    other = tiny_sequential(planted, seed=1, epochs=2).fit(planted.split)
    histories = [planted.split.train[0]]
    assert not np.array_equal(other.score(histories), model.score(histories))


def test_fit_leaves_the_global_torch_rng_alone(planted: Planted) -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    tiny_sequential(planted, epochs=1).fit(planted.split)
    torch.testing.assert_close(torch.rand(3), expected)


def test_on_epoch_end_can_stop_training(planted: Planted) -> None:
    seen = []

    def callback(epoch: int, model: SequentialRecommender) -> bool:
        scores = model.score([planted.split.train[0]])  # the model is usable mid-training
        seen.append((epoch, bool(np.isfinite(scores).all())))
        return epoch == 1

    model = tiny_sequential(planted, epochs=5).fit(planted.split, on_epoch_end=callback)
    assert seen == [(0, True), (1, True)]
    assert model.epochs_trained == 2 and len(model.epoch_losses) == 2
    assert model.epoch_losses[1] < model.epoch_losses[0]
    # Also as an attribute (how a generic trainer can pass it without a fit kwarg).
    model.on_epoch_end = lambda epoch, m: True
    assert model.fit(planted.split).epochs_trained == 1


def test_id_only_model_learns(planted: Planted) -> None:
    tiny = {"dim": 32, "layers": 1, "max_len": 20, "epochs": 15, "batch_size": 64, "lr": 1.0e-3}
    model = SequentialRecommender(SequentialParams(**tiny, **TEST_RECIPE, device="cpu")).fit(
        planted.split
    )
    hr, chance = hit_rate(model, planted.split)
    assert hr >= 3 * chance
    cold_scores = model.score([planted.split.train[0]])[0, planted.cold_items]
    np.testing.assert_array_equal(cold_scores, cold_scores[0])  # no text: cold items tie


def test_long_histories_use_the_last_max_len_items(model: SequentialRecommender) -> None:
    rng = np.random.default_rng(0)
    history = rng.integers(0, model.n_items, size=model.params.max_len + 15)
    long, short = model.score([history, history[-model.params.max_len :]])
    np.testing.assert_array_equal(long, short)


def test_save_keeps_text_embeddings(model: SequentialRecommender, tmp_path) -> None:
    model.save(tmp_path / "m")
    config = json.loads((tmp_path / "m" / CONFIG_FILE).read_text())
    assert config["text_dim"] == model.item_embeddings.shape[1]
    assert config["epochs_trained"] == model.params.epochs
    loaded = SequentialRecommender.load(tmp_path / "m")
    np.testing.assert_array_equal(loaded.item_embeddings, model.item_embeddings)

    config["params"]["dim"] = 16  # weights no longer fit the architecture
    (tmp_path / "m" / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="do not fit"):
        SequentialRecommender.load(tmp_path / "m")


def test_training_windows_cut_from_the_end() -> None:
    tokens, targets = training_windows([np.arange(10, 17), np.array([5])], max_len=2)
    # 7 items in chunks of 3 from the end: [14 15 16], [11 12 13], [10]; then [5].
    np.testing.assert_array_equal(targets, [[14, 15, 16], [11, 12, 13], [10, -1, -1], [5, -1, -1]])
    offset = 2  # item i is token i + 2
    np.testing.assert_array_equal(
        tokens,
        [
            [BOS, 14 + offset, 15 + offset],
            [BOS, 11 + offset, 12 + offset],
            [BOS, PAD, PAD],
            [BOS, PAD, PAD],
        ],
    )


def _targets_with_context(tokens: np.ndarray, targets: np.ndarray) -> list[tuple[int, int]]:
    """(target item, items of context before it) for every target of every window."""
    out = []
    for row_tokens, row_targets in zip(tokens, targets, strict=True):
        for position, item in enumerate(row_targets):
            if item >= 0:  # context: the items among tokens 1..position (token 0 is BOS)
                out.append((int(item), int((row_tokens[1 : position + 1] != PAD).sum())))
    return out


@pytest.mark.parametrize("stride", [0, 1, 3, 5, 6])
@pytest.mark.parametrize("jitter_seed", [None, 0, 1, 2])
def test_training_windows_predict_every_item_once_with_enough_context(
    stride: int, jitter_seed: int | None
) -> None:
    max_len = 5
    # Sequence s holds items 1000 s + 0..n-1: an item's value tells its position.
    sequences = [1000 * s + np.arange(n) for s, n in enumerate((1, 2, 6, 7, 13, 30), 1)]
    rng = None if jitter_seed is None else np.random.default_rng(jitter_seed)
    tokens, targets = training_windows(sequences, max_len, stride, rng)
    found = _targets_with_context(tokens, targets)
    assert sorted(item for item, _ in found) == sorted(np.concatenate(sequences).tolist())
    step = stride or max_len + 1
    for item, context in found:
        position = item % 1000
        # Context is whatever precedes the item, capped by the window; the stride
        # guarantees at least max_len + 1 - stride items (fewer only near the start).
        assert context <= min(position, max_len)
        if rng is None or stride:
            assert context >= min(position, max_len + 1 - step)
    # The most recent window is always whole: the last item sees max_len items.
    last_items = {int(seq[-1]) for seq in sequences}
    for item, context in found:
        if item in last_items:
            assert context == min(item % 1000, max_len)


def test_window_jitter_moves_the_earlier_windows_and_is_seeded() -> None:
    sequences = [np.arange(40)]
    cuts = {
        seed: training_windows(sequences, 5, 0, np.random.default_rng(seed))[0].tolist()
        for seed in range(6)
    }
    assert len({json.dumps(c) for c in cuts.values()}) > 1  # the offset changes the cuts
    again = training_windows(sequences, 5, 0, np.random.default_rng(3))[0].tolist()
    assert again == cuts[3]  # same generator state, same windows (resume-safe)
    with pytest.raises(ValueError, match="stride"):
        training_windows(sequences, 5, 7)


def test_label_smoothing_skips_masked_classes() -> None:
    torch.manual_seed(0)
    logits, target = torch.randn(4, 6), torch.tensor([0, 2, 3, 5])
    plain = torch.nn.functional.cross_entropy(logits, target, reduction="sum")
    assert torch.allclose(_cross_entropy(logits, target, 0.0), plain)
    smoothed = torch.nn.functional.cross_entropy(
        logits, target, reduction="sum", label_smoothing=0.1
    )
    assert torch.allclose(_cross_entropy(logits, target, 0.1), smoothed)
    masked = logits.clone()
    masked[:, 1] = -torch.inf  # e.g. an item never trained on
    loss = _cross_entropy(masked, target, 0.1)
    assert torch.isfinite(loss)
    # Equal to smoothing over the five allowed classes only.
    reference = torch.nn.functional.cross_entropy(
        logits[:, [0, 2, 3, 4, 5]],
        torch.tensor([0, 1, 2, 4]),
        reduction="sum",
        label_smoothing=0.1,
    )
    assert torch.allclose(loss, reference, atol=1e-5)


def test_jittered_strided_training_fits_and_reproduces(planted: Planted) -> None:
    extra = {"window_jitter": True, "window_stride": 3, "label_smoothing": 0.1}
    first = tiny_sequential(planted, **extra).fit(planted.split)
    second = tiny_sequential(planted, **extra).fit(planted.split)
    histories = [planted.split.history_for(user, "test") for user in range(20)]
    np.testing.assert_array_equal(first.score(histories), second.score(histories))
    hr, chance = hit_rate(first, planted.split)
    assert hr > 5 * chance


def test_history_tokens_match_the_longest_training_window() -> None:
    tokens, lengths = history_tokens([np.arange(10, 17), np.zeros(0, dtype=np.int64)], max_len=2)
    np.testing.assert_array_equal(tokens, [[BOS, 15 + 2, 16 + 2], [BOS, PAD, PAD]])
    np.testing.assert_array_equal(lengths, [3, 1])


BAD_PARAMS = [{"heads": 3}, {"dropout": 1.0}, {"id_dropout": -0.1}, {"lr": 0.0}, {"device": "tpu"}]


@pytest.mark.parametrize("changes", BAD_PARAMS)
def test_params_are_validated(changes: dict) -> None:
    with pytest.raises(ValueError):
        SequentialParams(**changes)


def test_fit_rejects_bad_item_embeddings(planted: Planted) -> None:
    with pytest.raises(ValueError, match="rows"):
        SequentialRecommender(item_embeddings=np.zeros((3, 4), np.float32)).fit(planted.split)
    with pytest.raises(ValueError, match="finite 2-d"):
        SequentialRecommender(item_embeddings=np.full((3, 4), np.nan, np.float32))
    with pytest.raises(ValueError, match="needs item_embeddings"):
        SequentialRecommender(SequentialParams(id_embeddings=False)).fit(planted.split)
