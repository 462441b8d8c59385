"""Post-processing from the config's `postprocess` section: predictions clipped to `data.score_range`, rounded to
a step, or cut at ordinal thresholds fitted on OOF predictions to the best score of the run's metric.

Thresholds are fitted on OOF rows only, and scored by nested CV (each fold's rows cut at thresholds fitted on the
other folds), so a reported score never comes from thresholds that saw its rows. Predictions are stored raw (the
ensemble blends raw member predictions); what is submitted is post-processed: a run's submission and
`src/predict.py`, an ensemble's submission and the notebook's prediction, all through `apply`.
"""

from __future__ import annotations

import numpy as np

from textreg.config import PostprocessConfig
from textreg.metrics import Scorer

Thresholds = list[list[float]]  # per target, ascending: a prediction above k of them gets the label k


def is_active(section: PostprocessConfig) -> bool:
    return section.clip or section.round_to is not None or section.thresholds


def labels(section: PostprocessConfig, score_range: tuple[float, float]) -> np.ndarray:
    """The scores a row can have: the range in steps of `round_to` (1 when it is not set)."""
    low, high = score_range
    step = section.round_to or 1.0
    return low + step * np.arange(round((high - low) / step) + 1)


def cut(pred: np.ndarray, thresholds: list[float], scores: np.ndarray) -> np.ndarray:
    return scores[np.searchsorted(np.sort(thresholds), pred)]


def fit_thresholds(pred: np.ndarray, truth: np.ndarray, scores: np.ndarray, scorer: Scorer) -> list[float]:
    """One target's thresholds, from the midpoints between scores, searched by Powell's method for the best
    score of `scorer` on these rows (the 1st place of Automated Essay Scoring 2.0 fitted them so)."""

    from scipy.optimize import minimize  # here: a run without thresholds never imports scipy

    def loss(thresholds: np.ndarray) -> float:
        return scorer.loss(scorer.score(truth, cut(pred, thresholds, scores)))

    start = (scores[:-1] + scores[1:]) / 2
    found = minimize(loss, start, method="Powell", options={"xtol": 1e-3, "ftol": 1e-6})
    best = found.x if loss(found.x) <= loss(start) else start
    return np.sort(best).tolist()


def fit(pred: np.ndarray, truth: np.ndarray, section: PostprocessConfig, scorer: Scorer) -> Thresholds | None:
    """Each target's thresholds on these rows, when the section asks for them."""
    if not section.thresholds:
        return None
    scores = labels(section, scorer.score_range)
    return [fit_thresholds(pred[:, k], truth[:, k], scores, scorer) for k in range(pred.shape[1])]


def apply(pred: np.ndarray, section: PostprocessConfig, score_range, thresholds: Thresholds | None) -> np.ndarray:
    """`pred` (rows, targets) post-processed: cut at the thresholds, or clipped and rounded."""
    out = np.asarray(pred, dtype=np.float64).copy()
    if thresholds is not None:
        scores = labels(section, score_range)
        return np.column_stack([cut(out[:, k], t, scores) for k, t in enumerate(thresholds)])
    if section.clip:
        out = out.clip(*score_range)
    if section.round_to is not None:
        low = score_range[0] if score_range else 0.0
        out = low + np.round((out - low) / section.round_to) * section.round_to
    return out


def nested_oof(
    pred: np.ndarray, truth: np.ndarray, folds: np.ndarray, section: PostprocessConfig, scorer: Scorer
) -> np.ndarray:
    """Each fold's OOF rows post-processed with thresholds fitted on the other folds' rows alone."""
    out = np.zeros_like(pred, dtype=np.float64)
    for fold in np.unique(folds):
        held_out = folds == fold
        thresholds = fit(pred[~held_out], truth[~held_out], section, scorer)
        out[held_out] = apply(pred[held_out], section, scorer.score_range, thresholds)
    return out
