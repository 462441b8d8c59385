import numpy as np
import pytest

from textreg import metrics
from textreg.config import load_config
from textreg.errors import UserError


def test_each_metric_scores_the_errors_as_its_definition_says():
    rng = np.random.default_rng(0)
    truth, pred = rng.normal(size=(50, 3)), rng.normal(size=(50, 3))
    error = truth - pred
    columns = np.sqrt((error**2).mean(axis=0))
    assert metrics.score("rmse", truth, pred) == pytest.approx(np.sqrt((error**2).mean()))
    assert metrics.score("mcrmse", truth, pred) == pytest.approx(columns.mean())
    assert metrics.score("mae", truth, pred) == pytest.approx(np.abs(error).mean())
    np.testing.assert_allclose(metrics.per_target("mcrmse", truth, pred), columns)
    np.testing.assert_allclose(metrics.per_target("mae", truth, pred), np.abs(error).mean(axis=0))
    one = truth[:, 0]  # one target as a flat vector: rmse and mcrmse agree
    assert metrics.score("rmse", one, pred[:, 0]) == pytest.approx(metrics.score("mcrmse", one, pred[:, 0]))


def test_a_metric_is_a_registry_entry_and_an_unknown_one_is_refused(monkeypatch):
    with pytest.raises(UserError, match="unknown metric 'max_error'; registered: rmse, mcrmse, mae"):
        load_config("configs/debug.yaml", ["metric=max_error"])
    worst = metrics.Metric(lambda error: np.abs(error).max(axis=0), lambda error: float(np.abs(error).max()))
    monkeypatch.setitem(metrics.METRICS, "max_error", worst)
    assert load_config("configs/debug.yaml", ["metric=max_error"]).metric == "max_error"
    assert metrics.score("max_error", np.array([1.0, 2.0]), np.array([1.5, 0.0])) == 2.0
