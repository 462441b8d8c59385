"""Configuration: YAML files composed through `defaults:`, dotted command-line overrides, strict validation.

Every key of a run lives in `Config` below, with its default: this file is the one source of defaults, and the
YAML files under configs/ hold only competition facts and what differs from them (`python src/train.py
--print-config` prints every key of a resolved config). Validation happens before any data is read or any model
is built, so a typo stops the run in a second with a message that names the key and what is allowed.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from string import Formatter
from typing import TYPE_CHECKING, Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from textreg.errors import UserError
from textreg.members import Task
from textreg.metrics import METRICS, Scorer

if TYPE_CHECKING:  # artifacts reads configs: imported for the annotation alone
    from textreg.artifacts import RunFolder

# Keys that name a run or steer one launch of it, not what it computes: runs that differ only in them share results.
RUN_KEYS = ("experiment", "folds", "overwrite", "tracking", "train.checkpoint_every")


def is_run_key(key: str) -> bool:
    return any(key == run_key or key.startswith(run_key + ".") for run_key in RUN_KEYS)


MINUTES = re.compile(r"(\d+(?:\.\d+)?)min")

# `auto`, or a precision. YAML reads an unquoted `no` as false.
Precision = Annotated[Literal["auto", "no", "fp16", "bf16"], BeforeValidator(lambda v: "no" if v is False else v)]


def registered(what: str, name: str, registry: dict | str) -> str:
    """`name`, if the registry has it: a dict, or "module:NAME", imported only now (the loss and truncation
    registries import torch, which a config that is only read does without)."""
    if isinstance(registry, str):
        module, _, attribute = registry.partition(":")
        registry = getattr(importlib.import_module(module), attribute)
    if name not in registry:
        raise ValueError(f"unknown {what} {name!r}; registered: {', '.join(registry)}")
    return name


class _Section(BaseModel):
    # A description too long for its field's line is the docstring under the field.
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class JoinConfig(_Section):
    """An extra table joined on a key before the model input is built (a prompt table, say)."""

    file: str
    test_file: str | None = Field(default=None, description="the table for the test rows, if it differs")
    key: str = Field(description="the column both tables share")


class PseudoLabelConfig(_Section):
    """Unlabeled rows scored by a teacher run, added to every fold's training rows, never to its validation rows
    (docs/distillation.md)."""

    teacher: Path = Field(description="the teacher's run folder, trained on the same folds")
    texts: Path = Field(description="a CSV of the unlabeled rows, with the id and text columns of the test file")
    weight: float = Field(default=0.5, gt=0, le=1)
    """a pseudo-labelled row's weight in the loss (1: a labelled row's)"""


class DataConfig(_Section):
    competition: str
    dir: Path
    train_file: str
    test_file: str
    sample_submission_file: str
    id_column: str
    text_column: str | None = Field(default=None, description="the model input, when it is one column")
    text_template: str | None = None
    """the model input built from columns: '{question}{sep}{answer}'"""
    joins: list[JoinConfig] = Field(default_factory=list)
    target_columns: list[str] = Field(min_length=1)
    standardize_targets: bool = Field(default=True, description="train on z-scores, predict in target units")
    score_range: tuple[float, float] | None = None
    """the lowest and the highest score a row can have: QWK's labels are the integers between them"""
    subset: int | None = Field(default=None, gt=0, description="random sample of N training rows (debug)")
    pseudo_label: PseudoLabelConfig | None = Field(default=None, description="learn from unlabeled rows too")
    extra_train_files: list[str] = Field(default_factory=list)
    """labelled files in data.dir (the train file's columns) added to every fold's training rows, never validated:
    outside data for a first stage (then train.init_from)"""

    def segment_of(self, column: str) -> int:
        """The `{sep}`-separated part of text_template that is `column` alone (0: before the first {sep})."""
        parts: list[list[str]] = [[]]
        for _, field, _, _ in Formatter().parse(self.text_template or ""):
            if field == "sep":
                parts.append([])
            elif field:
                parts[-1].append(field)
        found = [k for k, fields in enumerate(parts) if column in fields]
        if not found or parts[found[0]] != [column]:
            raise ValueError(f"model.pool_column={column}: data.text_template must hold {{{column}}} between {{sep}}s")
        return found[0]

    @model_validator(mode="after")
    def _one_text_source(self) -> DataConfig:
        if (self.text_column is None) == (self.text_template is None):
            raise ValueError("set exactly one of data.text_column and data.text_template")
        if self.score_range is not None and not self.score_range[0] < self.score_range[1]:
            raise ValueError(f"data.score_range={list(self.score_range)}: give [lowest, highest]")
        return self


class CVConfig(_Section):
    scheme: Literal["stratified", "kfold", "group", "stratified_group"] = "stratified"
    n_folds: int = Field(default=5, ge=2)
    n_bins: int = Field(default=10, ge=2, description="bins of the stratification column")
    stratify_column: str | None = Field(default=None, description="default: the first target")
    group_column: str | None = None
    seed: int = 42

    @model_validator(mode="after")
    def _group_needs_column(self) -> CVConfig:
        if "group" in self.scheme and not self.group_column:
            raise ValueError(f"scheme '{self.scheme}' needs cv.group_column")
        return self


class DropoutConfig(_Section):
    disable: bool = Field(default=True, description="switch off every dropout in the backbone")
    config: dict[str, float] = Field(default_factory=dict, description="backbone config attribute -> value")

    @model_validator(mode="after")
    def _consistent(self) -> DropoutConfig:
        for name, value in self.config.items():
            if not 0.0 <= value < 1.0:
                raise ValueError(f"dropout.config.{name}={value}: a dropout probability must be in [0, 1)")
            if self.disable and value > 0:
                raise ValueError(f"dropout.config.{name}={value} contradicts dropout.disable=true")
        return self


class LoraConfig(_Section):
    """Low-rank adapters on the backbone's linear layers (Hu et al., 2021), through peft; without dropout, as the
    backbone."""

    rank: int = Field(default=16, ge=1)
    alpha: float = Field(default=32.0, gt=0, description="the adapters' output is scaled by alpha / rank")
    target_modules: list[str] | Literal["all-linear"] = "all-linear"
    """the linear layers that get adapters, by name (q_proj, v_proj), or all-linear"""
    merge: bool = False
    """prediction adds each fold's adapters into the backbone's weights: a plain backbone, no adapter products"""


class GBMConfig(_Section):
    """features_gbm: LightGBM on the readability features, a fixed number of rounds (no early stopping on the
    validation fold, which would leak it into the CV score)."""

    rounds: int = Field(default=400, ge=1)
    learning_rate: float = Field(default=0.03, gt=0)
    num_leaves: int = Field(default=15, ge=2)
    min_child_samples: int = Field(default=20, ge=1)


class ModelConfig(_Section):
    kind: str = "transformer"
    """a fine-tuned backbone (transformer), or a classical member for ensembles (tfidf_ridge, embedding_ridge,
    features_gbm); the registry is textreg.members"""
    ridge_alpha: float = Field(default=1.0, gt=0, description="tfidf_ridge, embedding_ridge: the ridge penalty")
    gbm: GBMConfig = Field(default_factory=GBMConfig)
    backbone: str = Field(description="hub id, local folder, or package:<name> of an installed model package")
    pooling: str = "mean"
    """cls, mean, attention, weighted_layers, last_token (a decoder's); the registry is textreg.pooling.POOLINGS"""
    reinit_layers: int = Field(default=0, ge=0, description="re-initialise the top k layers of the backbone")
    max_len: int = Field(default=256, ge=8, description="the tokens of a window in training, special ones included")
    predict_max_len: int | None = Field(default=None, ge=8)
    """the tokens of a window in validation and prediction; null: max_len (longer: more of a long text at once)"""
    truncation: str = "head"
    """a text longer than a window: head (its first tokens), head_tail (its first quarter and last three quarters),
    windows (all of it, in windows `stride` apart, predicted as their mean); the registry is batching.TRUNCATIONS"""
    stride: int | None = Field(default=None, ge=1, description="windows: tokens between starts; null: half a window")
    pool_column: str | None = None
    """pool only the tokens of this column of data.text_template (the summary, not the prompt before it); the
    template must put it between {sep}s"""
    dropout: DropoutConfig = Field(default_factory=DropoutConfig)
    lora: LoraConfig | None = None
    """train low-rank adapters (peft's LoRA) and the head instead of the backbone's weights; null: fine-tune them all"""
    freeze_embeddings: bool = False
    """leave the token embeddings as pretrained: no gradient or optimizer state for a large vocabulary's rows"""

    @field_validator("kind", "truncation", "pooling")
    @classmethod
    def _registered(cls, value: str, info: ValidationInfo) -> str:
        if info.field_name == "kind":  # the registry imports no member: this stays cheap
            return registered("member kind", value, "textreg.members:KINDS")
        if info.field_name == "pooling":
            return registered("pooling", value, "textreg.pooling:POOLINGS")
        return registered("truncation", value, "textreg.batching:TRUNCATIONS")

    @model_validator(mode="after")
    def _lora_trains_no_new_layer(self) -> ModelConfig:
        if self.lora is not None and self.reinit_layers:
            raise ValueError("model.reinit_layers with model.lora: re-initialised layers would stay frozen, random")
        return self

    @property
    def freezes_weights(self) -> bool:
        """Whether some backbone weights stay as pretrained: a fold then saves only the others, and prediction
        takes the pretrained ones from the run's backbone/ folder."""
        return self.lora is not None or self.freeze_embeddings


class DistillConfig(_Section):
    """A student trained on a blend of the true targets and a teacher's predictions (docs/distillation.md)."""

    teacher: Path = Field(description="the teacher's run folder, trained with train.save_fitted=true on the same folds")
    weight: float = Field(default=0.5, gt=0, le=1, description="the teacher's share of each training target")


class TrainConfig(_Section):
    epochs: int = Field(default=3, ge=1)
    max_steps: int | None = Field(default=None, gt=0, description="stop after this many optimizer steps")
    batch_size: int = Field(default=16, ge=1)
    eval_batch_size: int = Field(default=64, ge=1)
    lr: float = Field(default=1e-4, gt=0)
    head_lr: float | None = Field(default=None, gt=0, description="learning rate of pooling + head")
    layerwise_lr_decay: float = Field(default=1.0, gt=0, le=1)
    """each layer's lr is this times the lr of the layer above it"""
    weight_decay: float = Field(default=0.01, ge=0)
    scheduler: Literal["linear", "cosine", "constant"] = "linear"
    warmup_ratio: float = Field(default=0.06, ge=0, lt=1)
    grad_clip: float | None = Field(default=1.0, gt=0)
    loss: str = Field(default="mse", description="mse, smooth_l1 or pearson; the registry is textreg.losses.LOSSES")
    target_weights: list[float] | None = None
    """each target's weight in the loss, in data.target_columns' order; null: equal"""
    grad_accum: int = Field(default=1, ge=1)
    eval_every: int = Field(default=40, ge=1, description="optimizer steps between validations")
    eval_start: float = Field(default=0.5, ge=0, lt=1)
    """share of the training steps before the first validation (no measured run was best earlier)"""
    mixed_precision: Precision = "auto"
    length_bucketing: bool = Field(default=True, description="batches of similar lengths: less padding")
    pad_to_multiple_of: int | None = Field(default=None, ge=1)
    """pad each batch to a multiple of this length; null: 64 on a GPU (fewer shapes, measured faster), 1 on a CPU"""
    fused_optimizer: bool = Field(default=True, description="fused AdamW kernel; false: foreach")
    checkpoint_every: int | str | None = "15min"
    """save the fold's training state every N optimizer steps or 'Nmin' minutes; a rerun resumes from it; null: never"""
    compile: bool = Field(default=False, description="torch.compile the backbone (dynamic shapes)")
    ema_decay: float | None = Field(default=None, gt=0, lt=1)
    """validate and keep an exponential moving average of the weights with this decay (e.g. 0.99)"""
    cudnn_attention: bool | None = False
    """CUDA: allow cuDNN's fused attention, which plans each new shape (false: measured faster); null: torch's choice"""
    gradient_checkpointing: bool = False
    """keep fewer activations and recompute them in the backward pass: less memory, slower"""
    threads: int | None = Field(default=None, ge=1)
    """torch threads per process; null: the cores it may use, shared among this machine's processes"""
    save_fitted: bool = False
    """also save each fold's predictions of its own training rows (fold<k>/fitted.csv): a teacher for train.distill"""
    distill: DistillConfig | None = Field(default=None, description="learn from a teacher run's fold models")
    init_from: Path | None = None
    """staged training: each fold starts from this run folder's same fold (its weights and head); its folds must be
    this run's, or a fold would start from a model that saw its validation rows"""

    @field_validator("loss")
    @classmethod
    def _registered_loss(cls, value: str) -> str:
        return registered("loss", value, "textreg.losses:LOSSES")

    @field_validator("target_weights")
    @classmethod
    def _weights(cls, value: list[float] | None) -> list[float] | None:
        if value is not None and (min(value) < 0 or sum(value) <= 0):
            raise ValueError("give each target a weight >= 0, not all 0")
        return value

    @field_validator("checkpoint_every")
    @classmethod
    def _steps_or_minutes(cls, value: int | str | None) -> int | str | None:
        if isinstance(value, int) and value < 1 or isinstance(value, str) and not MINUTES.fullmatch(value):
            raise ValueError("give a number of optimizer steps (>= 1), a duration such as '15min', or null")
        return value


class PostprocessConfig(_Section):
    """What is submitted, from raw predictions (textreg.postprocess); clip and thresholds need data.score_range."""

    clip: bool = Field(default=False, description="clip each prediction to data.score_range")
    round_to: float | None = Field(default=None, gt=0, description="round to a multiple of this step (0.5, 1)")
    thresholds: bool = False
    """cut at ordinal thresholds fitted on OOF predictions for the best metric: the scores of data.score_range in
    steps of round_to (1 if not set); reported by nested CV, saved with the run or ensemble"""


class TrackingConfig(_Section):
    mode: Literal["auto", "online", "offline", "disabled"] = "auto"
    """auto: online when logged in to W&B, else offline"""
    project: str = "textreg"
    entity: str | None = None


class Config(_Section):
    experiment: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    seed: int = 42
    output_dir: Path = Path("outputs")
    submission_dir: Path = Path("submissions")
    folds: list[int] | None = Field(default=None, description="folds to train; null = all")
    overwrite: bool = Field(default=False, description="delete an existing run folder with another config")
    metric: str = Field(default="rmse", description="the registry, each with its direction: textreg.metrics.METRICS")
    data: DataConfig
    cv: CVConfig = Field(default_factory=CVConfig)
    model: ModelConfig
    train: TrainConfig = Field(default_factory=TrainConfig)
    postprocess: PostprocessConfig = Field(default_factory=PostprocessConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    @field_validator("metric")
    @classmethod
    def _registered_metric(cls, value: str) -> str:
        return registered("metric", value, METRICS)

    @model_validator(mode="after")
    def _consistent(self) -> Config:
        """Pseudo-labels only for a kind that learns them; folds in range; a score range for a metric that needs one."""
        from textreg.members import KINDS

        extra = [key for key in ("pseudo_label", "extra_train_files") if getattr(self.data, key)]
        if extra and not KINDS[self.model.kind].extra_rows:
            learners = " or ".join(f"model.kind={name}" for name, kind in KINDS.items() if kind.extra_rows)
            raise ValueError(f"data.{extra[0]} trains {learners} only")
        if self.folds is not None:
            bad = [f for f in self.folds if not 0 <= f < self.cv.n_folds]
            if bad or not self.folds or len(set(self.folds)) != len(self.folds):
                raise ValueError(f"folds={self.folds}: give distinct fold numbers from 0 to {self.cv.n_folds - 1}")
        if self.model.pool_column is not None:
            self.data.segment_of(self.model.pool_column)
        weights, targets = self.train.target_weights, self.data.target_columns
        if weights is not None and len(weights) != len(targets):
            raise ValueError(f"train.target_weights={weights}: give one weight for each of {targets}")
        if METRICS[self.metric].needs_score_range and self.data.score_range is None:
            raise ValueError(f"metric={self.metric} needs data.score_range: [lowest, highest]")
        if (self.postprocess.clip or self.postprocess.thresholds) and self.data.score_range is None:
            raise ValueError("postprocess.clip and postprocess.thresholds need data.score_range: [lowest, highest]")
        return self

    @property
    def pool_segment(self) -> int | None:
        """The `{sep}`-separated part of the input that model.pool_column names."""
        return None if self.model.pool_column is None else self.data.segment_of(self.model.pool_column)

    def task(self, run: RunFolder) -> Task:
        """What a member learns and predicts for this config, in `run`: training and prediction build it here."""
        data = self.data
        return Task(data.target_columns, self.scorer, self.seed, data.standardize_targets, run, self.pool_segment)

    @property
    def scorer(self) -> Scorer:
        return Scorer(self.metric, self.data.score_range)

    @property
    def run_dir(self) -> Path:
        return self.output_dir / self.experiment

    @property
    def folds_dir(self) -> Path:
        """Fold assignments, shared by every experiment of the same rows and fold scheme."""
        return self.output_dir / "folds"


class PretrainModelConfig(_Section):
    backbone: str = Field(description="hub id, local folder, or package:<name> of an installed model package")


class PretrainSection(_Section):
    output: Path = Field(description="the backbone folder written, e.g. input/backbones/minilm-commonlit-mlm")
    extra_texts: list[Path] = Field(default_factory=list)
    """unlabeled text files: .txt one text a non-empty line, .csv a text column"""
    epochs: int = Field(default=5, ge=1)
    lr: float = Field(default=5e-5, gt=0)
    batch_size: int = Field(default=32, ge=1)
    max_len: int = Field(default=256, ge=8)
    mask_probability: float = Field(default=0.15, gt=0, lt=1)
    weight_decay: float = Field(default=0.01, ge=0)
    warmup_ratio: float = Field(default=0.06, ge=0, lt=1)
    grad_clip: float | None = Field(default=1.0, gt=0)
    valid_share: float = Field(default=0.05, ge=0, lt=1)
    """texts held out (fixed by seed) for a masked-LM loss each epoch"""
    seed: int = 42
    mixed_precision: Precision = "auto"
    threads: int | None = Field(default=None, ge=1, description="torch threads per process; null: see train.threads")
    checkpoint_every: int | None = Field(default=500, ge=1)
    """save the training state every N optimizer steps; a rerun resumes; null: never"""


class PretrainConfig(_Section):
    """src/pretrain_mlm.py: continued masked-LM pretraining of a backbone on the competition's texts."""

    output_dir: Path = Field(default=Path("outputs"), description="where W&B keeps its local files")
    data: DataConfig
    model: PretrainModelConfig
    pretrain: PretrainSection
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)


def _deep_merge(base: dict, update: dict) -> dict:
    merged = dict(base)
    for key, value in update.items():
        nested = isinstance(value, dict) and isinstance(merged.get(key), dict)
        merged[key] = _deep_merge(merged[key], value) if nested else value
    return merged


def compose(path: Path) -> dict:
    """Read a YAML file; files named in its `defaults:` list (relative to it) are merged first, in order."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise UserError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(raw, dict):
        raise UserError(f"{path}: a config file must be a mapping of keys to values")
    merged: dict = {}
    for parent in raw.pop("defaults", []):
        merged = _deep_merge(merged, compose(path.parent / parent))
    return _deep_merge(merged, raw)


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply `a.b.c=value` overrides; the value is parsed as YAML (`3e-5`, `[2]`, `null`, `true`)."""
    result = dict(raw)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise UserError(f"override '{item}' is not of the form key.sub=value")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise UserError(f"override '{item}': value is not valid YAML: {err}") from err
        for part in reversed(key.split(".")):
            value = {part: value}
        result = _deep_merge(result, value)
    return result


def changed_keys(a: dict, b: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two config dicts."""
    changed = []
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) and isinstance(y, dict):
            changed += changed_keys(x, y, f"{prefix}{key}.")
        elif x != y:
            changed.append(prefix + key)
    return changed


def _allowed_keys(loc: tuple, model: type[BaseModel]) -> list[str]:
    """The field names of the section at `loc` (to tell the user what an unknown key could have been)."""
    for part in loc:
        annotation = model.model_fields[part].annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return sorted(model.model_fields)


def _validated(raw: dict, schema: type[BaseModel]) -> Any:
    """`raw` as a `schema`; every error named by its key, in one UserError."""
    try:
        return schema.model_validate(raw)
    except ValidationError as err:
        lines = []
        for e in err.errors():
            key = ".".join(str(p) for p in e["loc"]) or "config"
            if e["type"] == "extra_forbidden":
                lines.append(f"{key}: unknown key; allowed here: {', '.join(_allowed_keys(e['loc'][:-1], schema))}")
            elif e["type"] == "missing":
                lines.append(f"{key}: required key is missing")
            else:
                lines.append(f"{key}: {e['msg']} (got {e.get('input')!r})")
        raise UserError("invalid config:\n  " + "\n  ".join(lines)) from None


def validate(raw: dict) -> Config:
    return _validated(raw, Config)


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    return validate(apply_overrides(compose(Path(path)), overrides or []))


def load_pretrain_config(path: str | Path, overrides: list[str] | None = None) -> PretrainConfig:
    return _validated(apply_overrides(compose(Path(path)), overrides or []), PretrainConfig)


def dump(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
