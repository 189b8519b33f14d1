"""The model contract every recommender in lmrec implements (like implicit's RecommenderBase).

A model is fitted on a ``SplitData``, scores whole catalogs for ordered item histories, and
is saved as a directory holding ``weights.safetensors`` and ``config.json`` (never pickle).
Public methods are implemented once here on top of four small hooks a model provides:
``_fit``, ``_score``, ``_state`` and ``_restore``. Keeping ``fit``/``score`` concrete means
the input and output checks (index range, shape, finiteness) hold for every model, including
ones added later.
"""

from __future__ import annotations

import dataclasses
import json
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
from pydantic import BaseModel
from safetensors.numpy import load_file, save_file

from lmrec.artifacts import MODEL_CONFIG_FILE as CONFIG_FILE
from lmrec.features.dataset import SplitData
from lmrec.io import LmrecError, atomic_dir

FORMAT_VERSION = 1
WEIGHTS_FILE = "weights.safetensors"


class ModelLoadError(LmrecError):
    """A saved model directory is missing, unreadable, or not what the caller expected."""


@dataclasses.dataclass(frozen=True)
class Params:
    """Base of every model's hyperparameters; subclasses add fields with defaults.

    A model whose hyperparameters are a params.yaml block uses that frozen pydantic block
    instead (``SequentialRecommender``: ``lmrec.config.SequentialParams``).
    """


#: What a model's ``params`` may be: a ``Params`` dataclass or a frozen pydantic block.
ModelParams = Params | BaseModel


def params_to_dict(params: ModelParams) -> dict[str, Any]:
    """The fields of a params object by name, in declaration order (config.json's
    ``params``)."""
    if isinstance(params, BaseModel):
        return params.model_dump()
    return dataclasses.asdict(params)


def params_from_dict(params_cls: type[ModelParams], values: Mapping[str, Any]) -> ModelParams:
    """Build a frozen params object (dataclass or pydantic block) from a mapping, rejecting
    unknown keys.

    Raises:
        ValueError: if ``values`` holds a key that ``params_cls`` does not define, or a
            value it refuses (a pydantic ``ValidationError`` is a ``ValueError``).
    """
    if issubclass(params_cls, BaseModel):
        known = set(params_cls.model_fields)
    else:
        known = {f.name for f in dataclasses.fields(params_cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(
            f"unknown {params_cls.__name__} keys {unknown}; expected a subset of {sorted(known)}"
        )
    return params_cls(**dict(values))


def read_config(directory: str | Path) -> dict[str, Any]:
    """Read and check a saved model's ``config.json``.

    Raises:
        ModelLoadError: if the file is missing, is not JSON, lacks "model", or was written
            by a newer format version than this code reads.
    """
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise ModelLoadError(f"{path}: not found; is {directory} a saved lmrec model?")
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ModelLoadError(f"{path}: unreadable model config ({err})") from err
    if not isinstance(config, dict) or "model" not in config:
        raise ModelLoadError(f"{path}: has no 'model' field")
    version = config.get("format_version")
    if version != FORMAT_VERSION:
        raise ModelLoadError(
            f"{path}: format_version {version!r}, this lmrec reads {FORMAT_VERSION}"
        )
    return config


class Recommender(ABC):
    """A top-K recommender over a fixed catalog of ``n_items`` dense item indices.

    Subclasses set ``name`` (the registry key written to config.json), ``params_cls`` (a
    frozen dataclass or pydantic block of hyperparameters) and implement the four hooks.
    """

    name: ClassVar[str]
    params_cls: ClassVar[type[ModelParams]]
    #: False for models whose scores ignore the history (e.g. popularity).
    uses_history: ClassVar[bool] = True

    def __init__(self, params: ModelParams | None = None) -> None:
        params = self.params_cls() if params is None else params
        if not isinstance(params, self.params_cls):
            raise TypeError(f"{self.name}: expected {self.params_cls.__name__}, got {params!r}")
        self.params = params
        self.n_items: int | None = None

    @classmethod
    def from_config(cls, values: Mapping[str, Any]) -> Self:
        """Build an unfitted model from a hyperparameter mapping (e.g. a params.yaml block)."""
        return cls(params_from_dict(cls.params_cls, values))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.params!r}, n_items={self.n_items})"

    # ----------------------------------------------------------------- hooks
    @abstractmethod
    def _fit(self, split: SplitData) -> None:
        """Learn from ``split``; ``self.n_items`` is already set."""

    @abstractmethod
    def _score(self, histories: list[np.ndarray]) -> np.ndarray:
        """Raw scores [len(histories), n_items] for validated int64 histories."""

    @abstractmethod
    def _state(self) -> dict[str, np.ndarray]:
        """The arrays that reloading needs, by name."""

    @abstractmethod
    def _restore(self, state: Mapping[str, np.ndarray], config: Mapping[str, Any]) -> None:
        """Set the fitted state from arrays saved by ``_state`` (and the saved config)."""

    def _extra_config(self) -> dict[str, Any]:
        """JSON-able facts beyond the hyperparameters that reloading needs (none by default)."""
        return {}

    # ------------------------------------------------------------ public API
    def fit(self, split: SplitData) -> Self:
        """Fit on the training sequences of ``split``; returns ``self``."""
        if split.n_items < 1:
            raise ValueError(f"{self.name}: the split has no items")
        _, items = split.train_pairs()
        if items.size and (items.min() < 0 or items.max() >= split.n_items):
            raise ValueError(f"{self.name}: training item index outside [0, {split.n_items})")
        self.n_items = int(split.n_items)
        self._fit(split)
        return self

    def score(
        self, histories: Sequence[np.ndarray], *, allow_nonfinite: bool = False
    ) -> np.ndarray:
        """Score every catalog item for each ordered history (oldest first).

        Args:
            histories: item-index arrays; an empty array means an unknown user.
            allow_nonfinite: return NaN/inf scores instead of raising (the evaluation
                protocol counts them as misses and reports them).

        Returns:
            float32 array [len(histories), n_items]; higher is better.

        Raises:
            ValueError: if a history holds an index outside the catalog, or the model
                produced scores of the wrong shape or non-finite scores.
        """
        n_items = self._require_fitted()
        checked = [self._check_history(h, n_items) for h in histories]
        if not checked:
            return np.zeros((0, n_items), dtype=np.float32)
        return self._check_scores(self._score(checked), len(checked), allow_nonfinite)

    def recommend(
        self, history: np.ndarray, k: int, exclude: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The top-``k`` items for one history, best first.

        Args:
            history: ordered item indices (may be empty).
            k: how many items, 1..n_items.
            exclude: item indices never to return; ``None`` means the history's items.

        Returns:
            (item indices int64, scores float32). Fewer than ``k`` when fewer items remain
            after exclusion. Equal scores are ordered by item index.
        """
        n_items = self._require_fitted()
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or not 1 <= k <= n_items:
            raise ValueError(f"{self.name}: k must be an int in [1, {n_items}], got {k!r}")
        history = self._check_history(history, n_items)
        drop = history if exclude is None else self._check_history(exclude, n_items)
        scores = self.score([history])[0]
        keep = np.ones(n_items, dtype=bool)
        keep[drop] = False
        candidates = np.flatnonzero(keep)
        order = np.argsort(-scores[candidates], kind="stable")[:k]
        top = candidates[order]
        return top, scores[top]

    def save(self, directory: str | Path) -> None:
        """Write ``weights.safetensors`` + ``config.json`` to ``directory`` atomically."""
        n_items = self._require_fitted()
        config = {
            "model": self.name,
            "format_version": FORMAT_VERSION,
            "n_items": n_items,
            "params": params_to_dict(self.params),
            **self._extra_config(),
        }
        state = {key: np.ascontiguousarray(value) for key, value in self._state().items()}
        with atomic_dir(directory) as tmp:
            save_file(state, str(tmp / WEIGHTS_FILE))
            (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, directory: str | Path) -> Self:
        """Load a model saved by ``save``; use ``registry.load_model`` when the type is unknown.

        Raises:
            ModelLoadError: if the directory holds another model type or is incomplete.
        """
        config = read_config(directory)
        if config["model"] != cls.name:
            raise ModelLoadError(
                f"{directory}: holds model {config['model']!r}, not {cls.name!r}"
                " (use lmrec.models.registry.load_model to dispatch on the saved name)"
            )
        weights = Path(directory) / WEIGHTS_FILE
        if not weights.is_file():
            raise ModelLoadError(f"{weights}: not found")
        try:
            model = cls.from_config(config.get("params", {}))
        except (TypeError, ValueError) as err:
            raise ModelLoadError(f"{directory}: bad params in {CONFIG_FILE}: {err}") from err
        model.n_items = int(config["n_items"])
        model._restore(load_file(str(weights)), config)
        return model

    # --------------------------------------------------------------- helpers
    def _require_fitted(self) -> int:
        if self.n_items is None:
            raise RuntimeError(f"{self.name}: model is not fitted; call fit() or load() first")
        return self.n_items

    def _check_history(self, history: np.ndarray, n_items: int) -> np.ndarray:
        arr = np.asarray(history)
        if arr.size == 0:
            return np.zeros(0, dtype=np.int64)
        if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"{self.name}: a history must be a 1-d integer array, got {arr!r}")
        if arr.min() < 0 or arr.max() >= n_items:
            raise ValueError(f"{self.name}: history item index outside [0, {n_items}): {arr}")
        return arr.astype(np.int64, copy=False)

    def _check_scores(
        self, scores: np.ndarray, n_rows: int, allow_nonfinite: bool = False
    ) -> np.ndarray:
        """Validate raw scores from ``_score``: right shape, all finite; return float32."""
        scores = np.asarray(scores)
        expected = (n_rows, self.n_items)
        if scores.shape != expected:
            raise ValueError(f"{self.name}: scores have shape {scores.shape}, expected {expected}")
        with np.errstate(over="ignore"):  # an overflow to inf is reported just below
            scores = scores.astype(np.float32, copy=False)
        bad = ~np.isfinite(scores)
        if bad.any() and not allow_nonfinite:
            rows, cols = np.nonzero(bad)
            raise ValueError(
                f"{self.name}: produced {int(bad.sum())} non-finite scores "
                f"(first at history {rows[0]}, item {cols[0]}: {scores[rows[0], cols[0]]})"
            )
        return scores
