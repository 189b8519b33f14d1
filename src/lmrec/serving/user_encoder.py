"""The sequential model's user tower for one history at a time, in numpy, for serving.

A serving request by posted history needs one user vector: a transformer pass over at most
``max_len + 1`` tokens at batch size 1. Through torch that is ~0.7 ms on a CPU core, nearly
all of it per-operator dispatch (dozens of tiny ops). This is the same computation as
``SequentialNet.encode`` in eval mode written out in numpy on weights copied once, with two
savings that change no result:

- item input vectors come from a table computed once (``SequentialNet.item_vectors()``;
  in eval mode it is fixed), not from the text projection per request;
- in the last layer only the last position is computed past the key/value projections:
  the user vector is the final state of the last token, and nothing reads the others.

Pre-LN ``nn.TransformerEncoderLayer`` (GELU, the network's only form) is what it
implements; ``tests/service/test_engine_fast_paths.py`` holds it to the torch path.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import erf

from lmrec.models.sequential_net import SequentialNet

_SQRT_HALF = np.float32(np.sqrt(0.5))


@dataclass(frozen=True)
class _Layer:
    """One pre-LN layer's weights, laid out for ``x @ w``, LayerNorm affines folded in."""

    eps1: float
    w_in: np.ndarray  # [dim, 3 * dim]: standardised x @ w_in + b_in = (q / sqrt(hd) | k | v)
    b_in: np.ndarray
    w_out: np.ndarray  # [dim, dim]
    b_out: np.ndarray
    eps2: float
    w1: np.ndarray  # [dim, 4 * dim]
    b1: np.ndarray
    w2: np.ndarray  # [4 * dim, dim]
    b2: np.ndarray


def _array(tensor) -> np.ndarray:
    return np.ascontiguousarray(tensor.detach().cpu().double().numpy())


def _f32(array: np.ndarray) -> np.ndarray:
    """float32, C-contiguous (BLAS is several times slower on other layouts at these sizes)."""
    return np.ascontiguousarray(array, dtype=np.float32)


def _folded(norm, weight, bias, scale: np.ndarray | None = None):
    """``LayerNorm(x) @ weight.T + bias`` as ``standardise(x) @ w + b``: (w, b, eps).

    Folding the norm's affine (and the attention's query scale) into the next linear map
    saves four array operations per norm; the arithmetic is done in float64 once.
    """
    w = _array(norm.weight)[:, None] * _array(weight).T
    b = _array(norm.bias) @ _array(weight).T + _array(bias)
    if scale is not None:
        w, b = w * scale, b * scale
    return _f32(w), _f32(b), float(norm.eps)


def _standardise(x: np.ndarray, mean_of: np.ndarray, eps: float) -> np.ndarray:
    """(x - mean) / sqrt(var + eps) per row; ``mean_of`` is a [dim, 1] column of 1/dim (a
    matrix product is cheaper than numpy's reductions on rows this short)."""
    centred = x - x @ mean_of
    variance = (centred * centred) @ mean_of
    variance += eps
    return centred / np.sqrt(variance, out=variance)


def _gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + erf(x * _SQRT_HALF))


class NumpyUserEncoder:
    """``user_vector(history)``: ``SequentialNet.encode``'s last state, one history at a time.

    Args:
        net: the trained network (read once; later changes to it are not seen).
        item_table: ``[n_items, dim]`` item input vectors (the model's ``item_matrix()``).
        max_len: most recent history items used (the model's ``max_len``).
    """

    def __init__(self, net: SequentialNet, item_table: np.ndarray, max_len: int) -> None:
        self.items = np.ascontiguousarray(item_table, dtype=np.float32)
        self.bos = _f32(_array(net.bos)[0])
        self.position = _f32(_array(net.position.weight))
        self.max_len = max_len
        self.layers = []
        for layer in net.encoder.layers:
            if not layer.norm_first or layer.activation_relu_or_gelu != 2:
                raise ValueError("NumpyUserEncoder implements pre-LN GELU layers only")
            attn = layer.self_attn
            self.heads = attn.num_heads
            dim = attn.embed_dim
            scale = np.ones(3 * dim)
            scale[:dim] = 1.0 / np.sqrt(dim // attn.num_heads)
            w_in, b_in, eps1 = _folded(layer.norm1, attn.in_proj_weight, attn.in_proj_bias, scale)
            w1, b1, eps2 = _folded(layer.norm2, layer.linear1.weight, layer.linear1.bias)
            self.layers.append(
                _Layer(
                    eps1=eps1,
                    w_in=w_in,
                    b_in=b_in,
                    w_out=_f32(_array(attn.out_proj.weight).T),
                    b_out=_f32(_array(attn.out_proj.bias)),
                    eps2=eps2,
                    w1=w1,
                    b1=b1,
                    w2=_f32(_array(layer.linear2.weight).T),
                    b2=_f32(_array(layer.linear2.bias)),
                )
            )
        norm = net.final_norm
        self.final = (
            _f32(_array(norm.weight)),
            _f32(_array(norm.bias)),
            float(norm.eps),
        )
        self.dim = self.items.shape[1]
        self.mean_of = np.full((self.dim, 1), 1.0 / self.dim, dtype=np.float32)

    def user_vector(self, history: np.ndarray) -> np.ndarray:
        """The user vector ``[dim]`` of one ordered history of item indices (oldest first)."""
        kept = history[-self.max_len :] if len(history) > self.max_len else history
        x = np.empty((len(kept) + 1, self.dim), dtype=np.float32)
        x[0] = self.bos
        x[1:] = self.items[kept]
        x += self.position[: len(x)]
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = self._layer(x, layer, only_last=i == last)
        weight, bias, eps = self.final
        return _standardise(x, self.mean_of, eps)[0] * weight + bias

    def _layer(self, x: np.ndarray, layer: _Layer, only_last: bool) -> np.ndarray:
        length, dim = x.shape
        heads, head_dim = self.heads, dim // self.heads
        qkv = _standardise(x, self.mean_of, layer.eps1) @ layer.w_in + layer.b_in
        q, k, v = qkv[:, :dim], qkv[:, dim : 2 * dim], qkv[:, 2 * dim :]
        if only_last:
            q, x = q[-1:], x[-1:]
        q = q.reshape(len(q), heads, head_dim).transpose(1, 0, 2)  # [h, t_q, hd]
        k = k.reshape(length, heads, head_dim).transpose(1, 2, 0)  # [h, hd, t]
        v = v.reshape(length, heads, head_dim).transpose(1, 0, 2)  # [h, t, hd]
        scores = q @ k  # [h, t_q, t] (q is pre-scaled by 1 / sqrt(head_dim))
        if not only_last:  # causal: row t sees 0..t (the last row sees everything)
            scores = scores + np.triu(np.full((length, length), -np.inf, np.float32), 1)
        scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
        scores /= scores.sum(axis=-1, keepdims=True)
        attended = (scores @ v).transpose(1, 0, 2).reshape(len(x), dim)
        x = x + attended @ layer.w_out + layer.b_out
        hidden = _gelu(_standardise(x, self.mean_of, layer.eps2) @ layer.w1 + layer.b1)
        return x + hidden @ layer.w2 + layer.b2
