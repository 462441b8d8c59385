"""Metrics, lower is better: the registry `METRICS`, keyed by the config's `metric`. RMSE over all values, MCRMSE
(mean of per-target RMSEs), MAE. For a single target RMSE and MCRMSE are the same number."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


def _rmse(error: np.ndarray) -> np.ndarray:
    return np.sqrt(np.mean(error**2, axis=0))


def _mae(error: np.ndarray) -> np.ndarray:
    return np.mean(np.abs(error), axis=0)


@dataclass(frozen=True)
class Metric:
    per_target: Callable[[np.ndarray], np.ndarray]  # each target's own score, from the (rows, targets) errors
    overall: Callable[[np.ndarray], float]


METRICS: dict[str, Metric] = {
    "rmse": Metric(_rmse, lambda error: float(np.sqrt(np.mean(error**2)))),
    "mcrmse": Metric(_rmse, lambda error: float(np.mean(_rmse(error)))),
    "mae": Metric(_mae, lambda error: float(np.mean(_mae(error)))),
}


def _error(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    true, pred = (np.asarray(values, dtype=np.float64) for values in (y_true, y_pred))
    return true.reshape(len(true), -1) - pred.reshape(len(pred), -1)


def per_target(metric: str, y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Each target's own score (RMSE for rmse and mcrmse, MAE for mae)."""
    return METRICS[metric].per_target(_error(y_true, y_pred))


def score(metric: str, y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return METRICS[metric].overall(_error(y_true, y_pred))
