"""The training losses of `train.loss`, their row and target weights, and a run on each."""

import json

import numpy as np
import pytest
import torch
from conftest import train_in_process

from textreg.config import load_config
from textreg.errors import UserError
from textreg.losses import training_loss


def test_each_loss_is_its_definition_per_target_then_weighed_by_target():
    gen = torch.Generator().manual_seed(0)
    pred, target = torch.randn(32, 2, generator=gen), torch.randn(32, 2, generator=gen)
    error = (pred - target).abs()
    mse = (error**2).mean(0)
    huber = torch.where(error < 1, 0.5 * error**2, error - 0.5).mean(0)
    corr = [np.corrcoef(pred[:, k], target[:, k])[0, 1] for k in range(2)]
    assert training_loss("mse", pred, target) == pytest.approx(mse.mean().item())
    assert training_loss("smooth_l1", pred, target) == pytest.approx(huber.mean().item())
    assert training_loss("pearson", pred, target) == pytest.approx(1 - np.mean(corr), rel=1e-5)
    weights = torch.tensor([3.0, 1.0])
    assert training_loss("mse", pred, target, target_weights=weights) == pytest.approx(
        (0.75 * mse[0] + 0.25 * mse[1]).item()
    )
    # the Pearson loss ignores the scale and the offset of the predictions: it trains the ranking
    assert training_loss("pearson", 5 * pred + 3, target) == pytest.approx(
        training_loss("pearson", pred, target).item()
    )


def test_an_unknown_loss_and_a_target_weight_per_target_are_checked():
    with pytest.raises(UserError, match="unknown loss 'l4'; registered: mse, smooth_l1, pearson"):
        load_config("configs/debug.yaml", ["train.loss=l4"])
    with pytest.raises(UserError, match=r"train.target_weights=\[1.0, 2.0\]: give one weight for each of \['target'\]"):
        load_config("configs/debug.yaml", ["train.target_weights=[1, 2]"])
    with pytest.raises(UserError, match="give each target a weight >= 0, not all 0"):
        load_config("configs/debug.yaml", ["train.target_weights=[0]"])


@pytest.mark.parametrize("loss", ["smooth_l1", "pearson"])
def test_a_run_trains_on_each_loss(make_config, loss):
    config = make_config()
    train_in_process(config, f"train.loss={loss}", "train.target_weights=[2]", "folds=[0]")
    run_dir = load_config(config).run_dir
    assert np.isfinite(json.loads((run_dir / "metrics.json").read_text())["cv_score"])
    assert load_config(run_dir / "config.yaml").train.loss == loss  # the run records the loss it trained on
