"""The records a fold leaves: one validation event, and the fold's result. Plain data, shared by every kind of
member (a fine-tuned backbone or a classical fit), the tracker, the run folder and the reports."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch


@dataclass(frozen=True)
class ValidationEvent:
    step: int  # optimizer steps over all processes together
    epoch: float
    val_score: float
    val_per_target: list[float]
    samples_per_second: float
    train_loss: float | None = None  # mean training loss since the last validation; None for a one-shot fit
    lr: float | None = None  # None for a one-shot fit

    def to_dict(self) -> dict:
        return asdict(self)


Listener = Callable[[ValidationEvent], None]  # called with each validation event as it happens


@dataclass
class FoldResult:
    fold: int
    best_score: float
    best_step: int
    valid_pred: np.ndarray  # rows of the validation set, in the order of `valid_rows`
    test_pred: np.ndarray
    state: dict[str, torch.Tensor]  # the checkpoint (the best step's weights)
    train_seconds: float
    train_samples_per_second: float
    history: list[ValidationEvent] = field(default_factory=list)
    extra_json: dict[str, object] = field(default_factory=dict)  # more files of the fold, e.g. a vocabulary
    fitted_pred: np.ndarray | None = None  # train.save_fitted: rows of the training set, in the order of `train_rows`


def read_history(fold_metrics: dict) -> list[ValidationEvent]:
    return [ValidationEvent(**event) for event in fold_metrics["history"]]
