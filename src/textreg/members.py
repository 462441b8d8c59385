"""Member kinds: the registry keyed by `model.kind`, and what every kind implements.

A kind trains one fold at a time inside the pipeline's fold loop (the run folder, W&B and merging are the loop's)
and predicts texts again from its run folder alone (`src/predict.py`, ensembles, the Kaggle notebook). The built-in
kinds are named by import path, so that a run imports only its own kind's libraries; `register` adds a kind from
anywhere, a test file included:

    members.register("constant", ConstantMember)
    python src/train.py model.kind=constant
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:  # the registry is read while a config validates: it imports no member's libraries
    from textreg.artifacts import RunFolder
    from textreg.config import ModelConfig, TrainConfig
    from textreg.metrics import Scorer
    from textreg.records import FoldResult, Listener


@dataclass(frozen=True)
class Task:
    """What every kind needs to know of the competition and the run besides its `model` and `train` sections."""

    targets: list[str]
    scorer: Scorer
    seed: int
    standardize_targets: bool
    run: RunFolder
    pool_segment: int | None = None  # pool the tokens of this {sep}-separated part of the input only


TextsWith = Callable[[str], list[str]]  # the texts to predict, given what `{sep}` becomes


class Member(Protocol):
    """A kind: `kind(model, train, task)` builds one for training; `kind.predict_folds` predicts from a run folder."""

    separator: str  # what `{sep}` of data.text_template becomes
    batch_size: int | None  # the training batch, for kinds that train in batches
    is_main_process: bool
    print: Callable[..., None]

    def wait_for_everyone(self) -> None: ...
    def describe(self) -> dict: ...
    def announce(self) -> str: ...
    def save_assets(self, folder: Path) -> None: ...
    def prepare(
        self, texts: list[str], test_texts: list[str], targets: np.ndarray, folds_to_fit: int, extra_texts: list[str]
    ) -> None: ...
    def fit_fold(
        self,
        fold: int,
        train_rows: np.ndarray,
        valid_rows: np.ndarray,
        targets: np.ndarray,
        listener: Listener,
        extra: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> FoldResult: ...

    @classmethod
    def predict_folds(
        cls, model: ModelConfig, train: TrainConfig, task: Task, texts_with: TextsWith, folds: list[int]
    ) -> dict[int, np.ndarray]:
        """Each fold's predictions from the run folder (`task.run`) alone, for the texts `texts_with(separator)`."""


@dataclass(frozen=True)
class Kind:
    member: str | type  # "module:Class", imported on first use, or the class itself
    # whether it learns from rows beyond the folds' (data.pseudo_label, data.extra_train_files)
    extra_rows: bool = False


KINDS: dict[str, Kind] = {
    "transformer": Kind("textreg.engine:TransformerMember", extra_rows=True),
    "tfidf_ridge": Kind("textreg.classical:TfidfRidge"),
    "embedding_ridge": Kind("textreg.classical:EmbeddingRidge"),
    "features_gbm": Kind("textreg.classical:FeaturesGbm"),
}


def register(name: str, member: type, extra_rows: bool = False) -> None:
    """A new `model.kind`: `member` implements `Member`."""
    KINDS[name] = Kind(member, extra_rows)


def member_class(name: str) -> type[Member]:
    member = KINDS[name].member
    if isinstance(member, str):
        module, _, attribute = member.partition(":")
        return getattr(importlib.import_module(module), attribute)
    return member
