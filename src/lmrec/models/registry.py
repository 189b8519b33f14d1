"""Model names -> classes, and loading a saved model whatever its type.

To add a model, import its class and add one ``MODELS`` entry; the key must equal the
class's ``name`` (the value ``save`` writes to config.json), which the contract tests check.
"""

from __future__ import annotations

from pathlib import Path

from lmrec.models.base import ModelLoadError, Recommender, read_config
from lmrec.models.itemknn import ItemKNNRecommender
from lmrec.models.mf import MFRecommender
from lmrec.models.popularity import PopularityRecommender
from lmrec.models.random import RandomRecommender
from lmrec.models.sequential import SequentialRecommender

MODELS: dict[str, type[Recommender]] = {
    "popularity": PopularityRecommender,
    "random": RandomRecommender,
    "itemknn": ItemKNNRecommender,
    "mf": MFRecommender,
    "sequential": SequentialRecommender,
}


def get_model_class(name: str) -> type[Recommender]:
    """The class registered as ``name``.

    Raises:
        ModelLoadError: naming the known models when ``name`` is not one of them.
    """
    try:
        return MODELS[name]
    except KeyError:
        raise ModelLoadError(
            f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}"
        ) from None


def load_model(directory: str | Path) -> Recommender:
    """Load any saved model, dispatching on the "model" field of its config.json.

    Raises:
        ModelLoadError: if the directory is not a saved model or names an unknown model.
    """
    config = read_config(directory)
    try:
        cls = get_model_class(config["model"])
    except ModelLoadError as err:
        raise ModelLoadError(f"{directory}: {err}") from None
    return cls.load(directory)
