"""Metrics: the registry `METRICS`, keyed by the config's `metric`, each with its direction; `Scorer` binds one to the
competition's score range (`data.score_range`, QWK's labels). Error metrics: RMSE over all values, MCRMSE (the
mean of per-target RMSEs), MAE. Agreement metrics, higher is better: QWK on integer labels, Pearson, Spearman; their
overall score is the mean over targets."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

ScoreRange = tuple[float, float] | None
PerTarget = Callable[[np.ndarray, np.ndarray, ScoreRange], np.ndarray]  # (truth, pred, range) -> a score per column


def _rmse(truth: np.ndarray, pred: np.ndarray, score_range: ScoreRange = None) -> np.ndarray:
    return np.sqrt(np.mean((truth - pred) ** 2, axis=0))


def _mae(truth: np.ndarray, pred: np.ndarray, score_range: ScoreRange = None) -> np.ndarray:
    return np.mean(np.abs(truth - pred), axis=0)


def _columns(score: Callable[[np.ndarray, np.ndarray], float]) -> PerTarget:
    """A per-target metric from a score of one column's (truth, pred)."""
    return lambda truth, pred, score_range=None: np.array([score(t, p) for t, p in zip(truth.T, pred.T, strict=True)])


def _pearson(truth: np.ndarray, pred: np.ndarray) -> float:
    """0 where either side is constant (a fold that predicts one value agrees with nothing)."""
    if truth.std() == 0 or pred.std() == 0:
        return 0.0
    return float(np.corrcoef(truth, pred)[0, 1])


def _spearman(truth: np.ndarray, pred: np.ndarray) -> float:
    from scipy.stats import rankdata  # here: a run that never scores Spearman never imports scipy

    return _pearson(rankdata(truth), rankdata(pred))


def _qwk(truth: np.ndarray, pred: np.ndarray, score_range: ScoreRange) -> np.ndarray:
    """Quadratic weighted kappa of each column: truth and predictions rounded to integers in the score range."""
    low, high = math.ceil(score_range[0]), math.floor(score_range[1])
    n = high - low + 1
    weights = (np.arange(n)[:, None] - np.arange(n)[None, :]) ** 2 / max(n - 1, 1) ** 2
    kappas = []
    for t, p in zip(truth.T, pred.T, strict=True):
        labels = [np.clip(np.rint(values), low, high).astype(int) - low for values in (t, p)]
        observed = np.zeros((n, n))
        np.add.at(observed, (labels[0], labels[1]), 1)
        expected = np.outer(observed.sum(1), observed.sum(0)) / len(t)
        disagreement = (weights * expected).sum()
        kappas.append(1 - (weights * observed).sum() / disagreement if disagreement else 0.0)
    return np.array(kappas)


@dataclass(frozen=True)
class Metric:
    per_target: PerTarget  # each target's own score, from (rows, targets) truth and predictions
    overall: Callable[[np.ndarray, np.ndarray], float] | None = None  # None: the mean of the per-target scores
    higher_is_better: bool = False
    needs_score_range: bool = False  # scores labels in data.score_range


METRICS: dict[str, Metric] = {
    "rmse": Metric(_rmse, lambda truth, pred: float(np.sqrt(np.mean((truth - pred) ** 2)))),
    "mcrmse": Metric(_rmse),
    "mae": Metric(_mae),
    "qwk": Metric(_qwk, higher_is_better=True, needs_score_range=True),
    "pearson": Metric(_columns(_pearson), higher_is_better=True),
    "spearman": Metric(_columns(_spearman), higher_is_better=True),
}


def _matrix(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    return values.reshape(len(values), -1)


@dataclass(frozen=True)
class Scorer:
    """The run's metric: scores predictions and says which of two scores is better. Everything that keeps a best
    step, a best blend, a best trial or a best row asks it."""

    name: str
    score_range: ScoreRange = None

    @property
    def metric(self) -> Metric:
        return METRICS[self.name]

    @property
    def higher_is_better(self) -> bool:
        return self.metric.higher_is_better

    @property
    def worst(self) -> float:
        return -math.inf if self.higher_is_better else math.inf

    def per_target(self, truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
        return self.metric.per_target(_matrix(truth), _matrix(pred), self.score_range)

    def score(self, truth: np.ndarray, pred: np.ndarray) -> float:
        if self.metric.overall is None:
            return float(np.mean(self.per_target(truth, pred)))
        return self.metric.overall(_matrix(truth), _matrix(pred))

    def loss(self, score: float) -> float:
        """The score as lower-is-better: what sorts runs and blends best first."""
        return -score if self.higher_is_better else score

    def better(self, score: float, than: float) -> bool:
        return self.loss(score) < self.loss(than)
