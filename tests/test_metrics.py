import numpy as np
import optuna
import pytest
import torch
from accelerate import Accelerator
from scipy.stats import spearmanr
from sklearn.metrics import cohen_kappa_score

from study import validate_configs
from textreg import engine, metrics
from textreg.checkpoints import FoldProgress
from textreg.config import load_config
from textreg.errors import UserError
from textreg.metrics import Scorer
from textreg.studies import Run, Study
from textreg.trials import optuna_study


def test_each_metric_scores_as_its_definition_says():
    rng = np.random.default_rng(0)
    truth, pred = rng.normal(size=(50, 3)), rng.normal(size=(50, 3))
    error = truth - pred
    columns = np.sqrt((error**2).mean(axis=0))
    assert Scorer("rmse").score(truth, pred) == pytest.approx(np.sqrt((error**2).mean()))
    assert Scorer("mcrmse").score(truth, pred) == pytest.approx(columns.mean())
    assert Scorer("mae").score(truth, pred) == pytest.approx(np.abs(error).mean())
    np.testing.assert_allclose(Scorer("mcrmse").per_target(truth, pred), columns)
    np.testing.assert_allclose(Scorer("mae").per_target(truth, pred), np.abs(error).mean(axis=0))
    one = truth[:, 0]  # one target as a flat vector: rmse and mcrmse agree
    assert Scorer("rmse").score(one, pred[:, 0]) == pytest.approx(Scorer("mcrmse").score(one, pred[:, 0]))
    pearson = [np.corrcoef(truth[:, k], pred[:, k])[0, 1] for k in range(3)]
    np.testing.assert_allclose(Scorer("pearson").per_target(truth, pred), pearson)
    spearman = [spearmanr(truth[:, k], pred[:, k]).statistic for k in range(3)]
    assert Scorer("spearman").score(truth, pred) == pytest.approx(np.mean(spearman))


def test_qwk_scores_rounded_predictions_clipped_to_the_score_range():
    rng = np.random.default_rng(1)
    truth = rng.integers(1, 7, size=200).astype(float)
    pred = truth + rng.normal(0, 1.2, size=200)
    labels = np.clip(np.rint(pred), 1, 6)
    expected = cohen_kappa_score(truth.astype(int), labels.astype(int), weights="quadratic")
    assert Scorer("qwk", (1, 6)).score(truth, pred) == pytest.approx(expected)
    assert Scorer("qwk", (1, 6)).score(truth, truth + 0.4) == pytest.approx(1.0)  # rounds back to the truth
    assert Scorer("qwk", (1, 6)).score(truth, np.full(200, 3.2)) == 0.0  # one label agrees with nothing


def test_each_metric_carries_its_direction():
    assert Scorer("qwk", (1, 6)).better(0.8, 0.5) and not Scorer("rmse").better(0.8, 0.5)
    assert Scorer("pearson").loss(0.9) < Scorer("pearson").loss(0.1)
    with pytest.raises(UserError, match="metric=qwk needs data.score_range"):
        load_config("configs/debug.yaml", ["metric=qwk"])
    with pytest.raises(UserError, match=r"data.score_range=\[6.0, 1.0\]: give \[lowest, highest\]"):
        load_config("configs/debug.yaml", ["metric=qwk", "data.score_range=[6, 1]"])
    assert load_config("configs/debug.yaml", ["metric=qwk", "data.score_range=[1, 6]"]).scorer == Scorer("qwk", (1, 6))


class SavedWhole(torch.nn.Linear):
    """A model whose fold keeps all its weights, as a RegressionModel without frozen ones does."""

    def fold_state(self) -> dict[str, torch.Tensor]:
        return self.state_dict()


def test_early_stopping_keeps_the_highest_qwk_step(monkeypatch):
    targets, rows = np.array([[1.0], [2.0], [3.0], [4.0], [5.0], [6.0]]), np.arange(6)
    # step 10: reversed (the lowest score), step 20: exact (the highest), step 30: in between
    by_step = {10: targets[::-1] * 0.5, 20: targets.copy(), 30: targets * 0.5 + 1}
    model = SavedWhole(1, 1)
    for name, range_ in (("qwk", (1, 6)), ("pearson", None)):
        progress = FoldProgress()
        monkeypatch.setattr(engine, "predict", lambda *args, progress=progress: by_step[progress.step])
        validator = engine.Validator(Accelerator(cpu=True), model, None, Scorer(name, range_), 0, targets, rows, None)
        scores = {}
        for step in by_step:
            progress.step = step
            scores[step] = validator(progress, epoch=1.0, lr=1e-4).val_score
        assert max(scores, key=scores.get) == 20 and progress.best_step == 20, name
        assert progress.best_score == scores[20] and min(scores.values()) < scores[20]


def test_a_study_optimizes_its_metrics_side():
    def study(*overrides: str) -> optuna.Study:
        entry = Study("direction", runs=[Run("r", "s", "configs/debug.yaml", overrides)])
        validate_configs([entry], [])
        return optuna_study(entry, optuna.storages.InMemoryStorage())

    assert study().direction == optuna.study.StudyDirection.MINIMIZE
    assert study("metric=qwk", "data.score_range=[1, 6]").direction == optuna.study.StudyDirection.MAXIMIZE
    mixed = Study(
        "mixed", runs=[Run("a", "a", "configs/debug.yaml", ()), Run("b", "b", "configs/debug.yaml", ("metric=mae",))]
    )
    with pytest.raises(UserError, match="study mixed: its runs are scored by different metrics"):
        validate_configs([mixed], [])


def test_a_metric_is_a_registry_entry_and_an_unknown_one_is_refused(monkeypatch):
    with pytest.raises(UserError, match="unknown metric 'max_error'; registered: rmse, mcrmse, mae, qwk"):
        load_config("configs/debug.yaml", ["metric=max_error"])
    worst = metrics.Metric(lambda truth, pred, score_range: np.abs(truth - pred).max(axis=0))
    monkeypatch.setitem(metrics.METRICS, "max_error", worst)
    assert load_config("configs/debug.yaml", ["metric=max_error"]).metric == "max_error"
    assert Scorer("max_error").score(np.array([1.0, 2.0]), np.array([1.5, 0.0])) == 2.0
