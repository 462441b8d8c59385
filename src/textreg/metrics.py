"""Metrics, lower is better: RMSE over all values, MCRMSE (mean of per-target RMSEs), MAE.

For a single target RMSE and MCRMSE are the same number.
"""

from __future__ import annotations

import numpy as np


def _as_2d(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    return values.reshape(len(values), -1)


def per_target(metric: str, y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Each target's own score (RMSE for rmse and mcrmse, MAE for mae)."""
    error = _as_2d(y_true) - _as_2d(y_pred)
    if metric == "mae":
        return np.mean(np.abs(error), axis=0)
    return np.sqrt(np.mean(error**2, axis=0))


def score(metric: str, y_true: np.ndarray, y_pred: np.ndarray) -> float:
    error = _as_2d(y_true) - _as_2d(y_pred)
    if metric == "rmse":
        return float(np.sqrt(np.mean(error**2)))
    return float(np.mean(per_target(metric, y_true, y_pred)))
