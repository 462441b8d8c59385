"""Training losses: the registry `LOSSES`, keyed by `train.loss`. Each takes a batch's predictions and targets in
model units (z-scores when targets are standardized) and its row weights, and gives one loss per target;
`train.target_weights` weigh the targets (default: equally)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

PerTargetLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # (pred, target, row weight)


def _weighted_mean(values: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return (weight[:, None] * values).sum(0) / weight.sum()


def _mse(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return _weighted_mean((pred - target) ** 2, weight)


def _smooth_l1(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Squared below one unit of error, linear above: outliers pull less (one unit: one std when standardized)."""
    return _weighted_mean(nn.functional.smooth_l1_loss(pred, target, reduction="none"), weight)


def _pearson(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """1 - the batch's weighted correlation: trains the ranking, not the scale (fit for rank metrics)."""
    pred, target = pred - _weighted_mean(pred, weight), target - _weighted_mean(target, weight)
    covariance = _weighted_mean(pred * target, weight)
    spread = (_weighted_mean(pred**2, weight) * _weighted_mean(target**2, weight)).clamp(min=1e-12).sqrt()
    return 1 - covariance / spread


LOSSES: dict[str, PerTargetLoss] = {"mse": _mse, "smooth_l1": _smooth_l1, "pearson": _pearson}


def training_loss(
    name: str,
    pred: torch.Tensor,
    target: torch.Tensor,
    row_weight: torch.Tensor | None = None,
    target_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """The batch's loss: each target's loss over the rows (weighted by `row_weight`, pseudo-labels' say), then their
    mean (weighted by `target_weights`)."""
    weight = torch.ones(len(pred), device=pred.device) if row_weight is None else row_weight
    per_target = LOSSES[name](pred, target, weight)
    if target_weights is None:
        return per_target.mean()
    return (per_target * target_weights).sum() / target_weights.sum()
