"""Weight averaging (train.ema_decay): the average's arithmetic, and a fold validated and kept with it."""

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import train_in_process
from safetensors.torch import load_file

import train
from textreg.averaging import WeightAverage


def test_the_average_follows_the_weights_with_a_warming_decay_and_is_applied_only_inside_its_block():
    model = torch.nn.Linear(3, 1)
    start = model.weight.detach().clone()
    average = WeightAverage(model, decay=0.5)
    expected = start.clone()
    for n in range(4):
        with torch.no_grad():
            model.weight.add_(1.0)
        average.update(n)
        decay = min(0.5, (1 + n) / (10 + n))
        expected = decay * expected + (1 - decay) * model.weight.detach()
    torch.testing.assert_close(average.average[0], expected)
    raw = model.weight.detach().clone()
    with average.applied():
        torch.testing.assert_close(model.weight.detach(), expected)
    torch.testing.assert_close(model.weight.detach(), raw)  # the training weights are back


def test_a_fold_with_a_weight_average_keeps_the_averaged_weights(make_config, tmp_path):
    weights, oof = {}, {}
    for name, decay in (("raw", None), ("ema", 0.9)):
        train_in_process(make_config(experiment=name, folds=[0], train__ema_decay=decay))
        weights[name] = load_file(tmp_path / "outputs" / name / "fold0" / "model.safetensors")
        oof[name] = pd.read_csv(tmp_path / "outputs" / name / "fold0" / "oof.csv")["target_pred"].to_numpy()
    # After a handful of steps from the same start the average trails the raw weights: other weights, other
    # predictions, but close to them.
    head = next(key for key in weights["raw"] if key.startswith("head") and key.endswith("weight"))
    assert not torch.equal(weights["raw"][head], weights["ema"][head])
    assert not np.allclose(oof["raw"], oof["ema"], atol=1e-6)
    assert np.corrcoef(oof["raw"], oof["ema"])[0, 1] > 0.5


@pytest.mark.parametrize("decay", ["0", "1", "1.5"])
def test_a_decay_outside_zero_to_one_is_refused(make_config, capsys, decay):
    assert train.main(["--config", str(make_config()), f"train.ema_decay={decay}"]) == 2
    assert "train.ema_decay" in capsys.readouterr().err
