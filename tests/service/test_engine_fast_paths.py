"""The serving engine's fast paths (numpy user tower, lists prepared for known users) answer
exactly as the slow ones do."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lmrec.config import ServeParams
from lmrec.models.sequential import history_tokens
from lmrec.models.sequential_net import SequentialNet
from lmrec.serving.engine import Engine
from lmrec.serving.user_encoder import NumpyUserEncoder

N_ITEMS, DIM, MAX_LEN = 40, 32, 8


def make_net(layers: int, seed: int = 0) -> SequentialNet:
    torch.manual_seed(seed)
    net = SequentialNet(
        n_items=N_ITEMS,
        dim=DIM,
        heads=4,
        layers=layers,
        dropout=0.3,  # eval mode: no dropout may reach the numpy path
        max_len=MAX_LEN,
        item_text=torch.randn(N_ITEMS, 12),
        id_known=torch.arange(N_ITEMS) % 3 != 0,  # some cold items: text only
        id_embeddings=True,
    )
    with torch.no_grad():  # layer norms away from their (1, 0) start, so folding is tested
        for name, param in net.named_parameters():
            if "norm" in name:
                param.add_(torch.randn_like(param) * 0.3)
    return net.eval()


def torch_user_vector(net: SequentialNet, history: np.ndarray) -> np.ndarray:
    tokens, lengths = history_tokens([history], MAX_LEN)
    with torch.no_grad():
        hidden = net.encode(torch.from_numpy(tokens))
    return hidden[0, lengths[0] - 1].numpy()


@pytest.mark.parametrize("layers", [1, 2, 3])
@pytest.mark.parametrize("length", [0, 1, 2, 7, 8, 9, 30])
def test_numpy_user_vector_matches_torch(layers, length):
    net = make_net(layers, seed=layers)
    with torch.no_grad():
        table = net.item_vectors().numpy()
    encoder = NumpyUserEncoder(net, table, MAX_LEN)
    history = np.random.default_rng(length).integers(0, N_ITEMS, length)
    expected = torch_user_vector(net, history)
    got = encoder.user_vector(history)
    assert got.shape == (DIM,) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_numpy_encoder_refuses_layers_it_does_not_implement():
    net = make_net(1)
    net.encoder.layers[0].norm_first = False  # a post-LN layer computes something else
    with pytest.raises(ValueError, match="pre-LN GELU"):
        NumpyUserEncoder(net, np.zeros((N_ITEMS, DIM), np.float32), MAX_LEN)


def test_engine_answers_the_same_through_numpy_and_torch(bundles):
    """Session (posted history) requests: the numpy path is the default; its answers equal
    the torch path's, item for item, on a trained bundle."""
    fast = Engine.load(bundles.champion, ServeParams())
    slow = Engine.load(bundles.champion, ServeParams())
    slow.user_encoder = None
    assert isinstance(fast.user_encoder, NumpyUserEncoder)
    rng = np.random.default_rng(0)
    for length in (1, 3, 12, 60):
        history = [bundles.item_ids[i] for i in rng.integers(0, len(bundles.item_ids), length)]
        a = fast.recommend(None, history, k=10)
        b = slow.recommend(None, history, k=10)
        assert [x["item_id"] for x in a["items"]] == [x["item_id"] for x in b["items"]]
        np.testing.assert_allclose(
            [x["score"] for x in a["items"]], [x["score"] for x in b["items"]], atol=1e-4
        )


def test_int8_engine_keeps_the_torch_path(bundles):
    engine = Engine.load(bundles.champion, ServeParams(quantize_int8=True))
    assert engine.user_encoder is None
    assert engine.recommend(None, bundles.item_ids[:3], k=5)["path"] == "model"


@pytest.mark.parametrize("faiss_min_items", [10**9, 1])  # exact scoring, then faiss HNSW
def test_known_user_lists_are_what_live_scoring_returns(bundles, faiss_min_items):
    """Lists prepared at load (known_users) answer exactly like live scoring: same items,
    same order, same scores; requests they cannot answer are scored live."""
    params = ServeParams(faiss_min_items=faiss_min_items, precompute_top_k=5)
    prepared = Engine.load(bundles.champion, params)
    live = Engine.load(bundles.champion, params.model_copy(update={"precompute_top_k": 0}))
    assert all(
        len(u.top) == min(5, prepared.n_items - len(u.seen)) for u in prepared.user_cache.values()
    )
    assert all(len(u.top) == 0 for u in live.user_cache.values())
    for user_id in list(bundles.histories)[:40]:
        for k in (1, 5, 6, 12):  # 6 and 12: more than prepared, scored live
            a = prepared.recommend(user_id, None, k=k)
            b = live.recommend(user_id, None, k=k)
            assert a["items"] == b["items"], (user_id, k)
        a = prepared.recommend(user_id, None, k=3, exclude_seen=False)
        assert a["items"] == live.recommend(user_id, None, k=3, exclude_seen=False)["items"]
