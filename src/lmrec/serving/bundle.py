"""The serving bundle: everything a service needs to answer requests, in one directory.

Built by ``lmrec package`` (or ``lmrec bundle``) from a saved model, the split it is served
against and the item text embeddings; imported into the BentoML model store as one
versioned model. Layout (no pickle anywhere):

    model/                    the lmrec model (weights.safetensors, config.json, item_ids.json...)
    catalog.parquet           item_idx (the model's index), item_id, title, categories, popularity
                              (training interactions), text (what the text encoder read)
    users.parquet             user_id (pseudonymised), history (item_idx list, oldest first)
    item_vectors.safetensors  "text": L2-normalised text embeddings [n_items, dim]
                              (similar items, explanations, diversity)
    encoder.json              the embed stage's record: text encoder, its weights' digest and
                              settings (``POST /items`` encodes new items the same way)
    bundle.json               format_version, model version/alias/digest, sizes

The catalog is the model's own item list (``item_ids.json``): a champion trained on an older
snapshot serves exactly the items it knows; titles and histories come from the current split.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from safetensors.numpy import load_file, save_file

from lmrec.artifacts import ENCODER_FILE, item_index, load_embeddings, read_item_ids
from lmrec.features.dataset import load_split
from lmrec.io import DataError, atomic_dir, write_json

FORMAT_VERSION = 1
BUNDLE_FILE = "bundle.json"


def build_bundle(
    model_dir: Path, split_dir: Path, embed_dir: Path, out_dir: Path, meta: dict[str, Any]
) -> dict[str, Any]:
    """Write a bundle for ``model_dir`` to ``out_dir`` atomically; return its bundle.json."""
    import shutil

    model_ids = read_item_ids(model_dir)
    index = item_index(model_ids)
    split = load_split(split_dir)
    embeddings, encoder = load_embeddings(embed_dir)
    items = split.items.sort_values("item_idx")
    if len(embeddings) != len(items):
        raise DataError(f"{embed_dir}: {len(embeddings)} embeddings for {len(items)} items")
    by_id = items.assign(item_id=items["item_id"].astype(str)).set_index("item_id")
    catalog = pd.DataFrame({"item_idx": np.arange(len(model_ids)), "item_id": model_ids})
    known = catalog["item_id"].isin(by_id.index)
    catalog["title"] = catalog["item_id"].map(by_id["title"]).fillna("").astype(str)
    categories = by_id["categories"] if "categories" in by_id else pd.Series(dtype=str)
    catalog["categories"] = catalog["item_id"].map(categories).fillna("").astype(str)
    catalog["popularity"] = catalog["item_id"].map(by_id["n_train"]).fillna(0).astype(np.int64)
    texts = by_id["text"] if "text" in by_id else pd.Series(dtype=str)
    catalog["text"] = catalog["item_id"].map(texts).fillna("").astype(str)
    vectors = np.zeros((len(model_ids), embeddings.shape[1]), dtype=np.float32)
    split_idx = catalog.loc[known, "item_id"].map(by_id["item_idx"]).to_numpy(dtype=np.int64)
    vectors[known.to_numpy()] = embeddings[split_idx]
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors = np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)
    split_to_model = np.array([index.get(str(i), -1) for i in items["item_id"]], dtype=np.int64)
    histories = []
    for user in range(split.n_users):
        full = split.history_for(user, "test")
        if split.test_items[user] >= 0:
            full = np.append(full, split.test_items[user])
        mapped = split_to_model[full]
        histories.append(mapped[mapped >= 0].tolist())
    users = pd.DataFrame({"user_id": split.user_ids.astype(str), "history": histories})
    info = {
        "format_version": FORMAT_VERSION,
        "n_items": len(model_ids),
        "n_users": len(users),
        "items_missing_from_split": int((~known).sum()),
        **meta,
    }
    with atomic_dir(out_dir) as tmp:
        shutil.copytree(model_dir, tmp / "model")
        catalog.to_parquet(tmp / "catalog.parquet", index=False)
        users.to_parquet(tmp / "users.parquet", index=False)
        save_file({"text": vectors}, str(tmp / "item_vectors.safetensors"))
        write_json(tmp / ENCODER_FILE, encoder)
        write_json(tmp / BUNDLE_FILE, info)
    return info


@dataclass
class Bundle:
    """A loaded bundle (the model itself is loaded by the engine)."""

    root: Path
    info: dict[str, Any]
    catalog: pd.DataFrame
    users: dict[str, np.ndarray]
    text_vectors: np.ndarray
    #: the text encoder record (``encoder.json``); None in bundles built before it was kept
    encoder: dict[str, Any] | None = None

    @classmethod
    def read(cls, root: str | Path) -> Bundle:
        root = Path(root)
        path = root / BUNDLE_FILE
        if not path.is_file():
            raise DataError(f"{root}: not a serving bundle ({BUNDLE_FILE} missing)")
        info = json.loads(path.read_text())
        if info.get("format_version") != FORMAT_VERSION:
            raise DataError(f"{path}: bundle format {info.get('format_version')} is not supported")
        catalog = pd.read_parquet(root / "catalog.parquet")
        users_df = pd.read_parquet(root / "users.parquet")
        users = {
            str(u): np.asarray(h, dtype=np.int64)
            for u, h in zip(users_df["user_id"], users_df["history"], strict=True)
        }
        vectors = load_file(str(root / "item_vectors.safetensors"))["text"]
        encoder = None
        # older bundles: the model's copy
        for record in (root / ENCODER_FILE, root / "model" / ENCODER_FILE):
            if record.is_file():
                encoder = json.loads(record.read_text())
                break
        return cls(root, info, catalog, users, vectors, encoder)
