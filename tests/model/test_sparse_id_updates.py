"""The sampled softmax's sparse ID gradient: densified for AdamW, or lazy updates.

With the sampled softmax the ID table's gradient is sparse. By default it is densified once
before AdamW's step, which must update exactly as the dense gradient did; with
``lazy_id_updates`` ``SparseAdam`` moves only the rows a step looked up
(benchmarks/results/scale_training.md section 6). These tests pin what that must keep: the
model still learns, fits are deterministic, untouched rows stay put under lazy updates, and
a lazy fit resumed from a checkpoint written to disk ends like the uninterrupted one.
"""

from __future__ import annotations

import numpy as np
import torch

from lmrec.models.sequential import SequentialRecommender
from lmrec.models.sequential_fit import DataParallel, TrainingLoop
from lmrec.models.sequential_net import BOS, N_SPECIAL, PAD, SequentialNet
from lmrec.train.checkpoint import load_checkpoint, save_checkpoint

from .conftest import Planted, hit_rate, tiny_sequential

LAZY = {"full_softmax_max_items": 10, "n_negatives": 32, "lazy_id_updates": True}


def test_lazy_updates_learn_and_are_deterministic(planted: Planted) -> None:
    model = tiny_sequential(planted, **LAZY).fit(planted.split)
    hr, chance = hit_rate(model, planted.split)
    assert hr >= 3 * chance, f"lazy ID updates: HR@10 {hr:.3f}, chance {chance:.3f}"
    histories = [planted.split.history_for(u, "test") for u in range(20)]
    again = tiny_sequential(planted, **LAZY).fit(planted.split)
    np.testing.assert_array_equal(again.score(histories), model.score(histories))
    dense = tiny_sequential(planted, **{**LAZY, "lazy_id_updates": False}).fit(planted.split)
    assert not np.array_equal(dense.score(histories), model.score(histories))


def test_a_lazy_step_moves_only_the_rows_it_used(planted: Planted) -> None:
    p, n_items = tiny_sequential(planted, **LAZY).params, planted.split.n_items
    net = SequentialNet(
        n_items, p.dim, p.heads, p.layers, p.dropout, p.max_len,
        item_text=None, id_known=torch.ones(n_items, dtype=torch.bool), id_embeddings=True,
    )  # fmt: skip
    loop = TrainingLoop(net, None, np.ones(n_items), p, torch.device("cpu"), DataParallel())
    assert loop.id_optimizer is not None and net.item_id is not None
    assert all(
        q is not net.item_id.weight for g in loop.optimizer.param_groups for q in g["params"]
    )
    before = net.item_id.weight.detach().clone()
    torch.manual_seed(0)
    targets = torch.tensor([[3, 4, 5, -1]])
    tokens = torch.tensor([[BOS, 3 + N_SPECIAL, 4 + N_SPECIAL, 0]])
    value, _ = loop.objective(tokens, targets, 1.0)
    assert net.item_id.weight.grad is None
    value.backward()
    assert net.item_id.weight.grad.is_sparse
    used = set(net.item_id.weight.grad.coalesce().indices()[0].tolist())
    loop._optimizer_step(0.0)
    moved = set((net.item_id.weight.detach() != before).any(1).nonzero()[:, 0].tolist())
    assert moved and moved <= used
    assert len(moved) < planted.split.n_items  # the point: most rows are not touched


def test_a_lazy_fit_resumed_from_disk_ends_like_the_uninterrupted_one(
    planted: Planted, tmp_path
) -> None:
    histories = [planted.split.history_for(u, "test") for u in range(20)]
    whole = tiny_sequential(planted, **LAZY, epochs=4).fit(planted.split)

    saved = {}

    def stop_after_two(epoch: int, model: SequentialRecommender) -> bool:
        if epoch == 1:
            save_checkpoint(tmp_path / "ckpt", model.train_state(), {"epoch": epoch})
            saved["done"] = True
        return epoch == 1

    tiny_sequential(planted, **LAZY, epochs=4).fit(planted.split, on_epoch_end=stop_after_two)
    assert saved
    state, _ = load_checkpoint(tmp_path / "ckpt")
    assert any(g.get("lazy_ids") for g in state.optimizer["param_groups"])
    resumed = tiny_sequential(planted, **LAZY, epochs=4).fit(planted.split, resume=state)
    np.testing.assert_allclose(
        resumed.score(histories), whole.score(histories), rtol=1e-5, atol=1e-6
    )


def _loop(planted: Planted, **changes) -> TrainingLoop:
    p, n_items = tiny_sequential(planted, **{**LAZY, **changes}).params, planted.split.n_items
    torch.manual_seed(0)
    net = SequentialNet(
        n_items, p.dim, p.heads, p.layers, p.dropout, p.max_len,
        item_text=None, id_known=torch.ones(n_items, dtype=torch.bool), id_embeddings=True,
    )  # fmt: skip
    return TrainingLoop(net, None, np.ones(n_items), p, torch.device("cpu"), DataParallel())


def test_the_sampled_softmax_sparse_id_gradient_gives_adamws_dense_update(planted) -> None:
    """Densified once before AdamW, the sparse gradient updates like the dense one did."""
    dense_params = {"lazy_id_updates": False, "weight_decay": 0.1}
    sparse, dense = _loop(planted, **dense_params), _loop(planted, **dense_params)
    assert sparse.sparse_ids is not None and sparse.id_optimizer is None
    dense.objective.net.item_id.sparse, dense.sparse_ids = False, None  # the old path
    # Different rows each step: the kept dense gradient must clear the previous step's rows.
    # (items seen after BOS, -1 = padding; the targets are the next items)
    batches = [
        ([[3, 4, -1], [7, -1, -1]], [[3, 4, 5, -1], [7, 8, -1, -1]]),
        ([[1, 2, 6], [9, -1, -1]], [[1, 2, 6, 0], [9, 10, -1, -1]]),
        ([[3, -1, -1], [11, 12, -1]], [[3, 2, -1, -1], [11, 12, 13, -1]]),
    ]
    for loop in (sparse, dense):
        for step, (seen, targets) in enumerate(batches):
            items = torch.tensor(seen)
            body = torch.where(items >= 0, items + N_SPECIAL, PAD)
            tokens = torch.cat([torch.full((2, 1), BOS), body], 1)
            torch.manual_seed(step)
            loop.objective(tokens, torch.tensor(targets), 1.0)[0].backward()
            loop._optimizer_step(0.1)
    for (name, a), b in zip(
        sparse.objective.net.named_parameters(), dense.objective.net.parameters(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    table = sparse.objective.net.item_id.weight
    assert (table != _loop(planted).objective.net.item_id.weight).any(1).all()  # decay: all rows
