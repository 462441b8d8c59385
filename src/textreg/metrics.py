"""Metrics: RMSE per target and their mean (MCRMSE, which is plain RMSE for a single target)."""

from __future__ import annotations

import numpy as np


def rmse_per_target(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    y_true = np.asarray(y_true, dtype=np.float64).reshape(len(y_true), -1)
    y_pred = np.asarray(y_pred, dtype=np.float64).reshape(len(y_pred), -1)
    return np.sqrt(np.mean((y_true - y_pred) ** 2, axis=0))


def rmse(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean over targets of each target's RMSE."""
    return float(np.mean(rmse_per_target(y_true, y_pred)))
