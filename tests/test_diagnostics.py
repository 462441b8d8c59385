"""The dropout diagnostic sees dropout where there is some, and none where it is switched off."""

import pytest
import torch

import dropout_diagnostic
from textreg.config import DropoutConfig, ModelConfig
from textreg.diagnostics import dropout_effect
from textreg.model import build_model, load_backbone_config


def effect(backbone, disable):
    cfg = ModelConfig(backbone=str(backbone), dropout=DropoutConfig(disable=disable))
    path, config = load_backbone_config(cfg)
    torch.manual_seed(0)
    model = build_model(cfg, 1, path, config)
    ids = torch.randint(1000, 2000, (6, 16), generator=torch.Generator().manual_seed(0))
    return dropout_effect(model, {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, passes=20)


@pytest.mark.parametrize("arch", ["bert", "distilbert"])
def test_dropout_changes_layer_variance_and_spreads_the_prediction(backbones, arch):
    on, off = effect(backbones[arch], disable=False), effect(backbones[arch], disable=True)
    assert len(on["layers"]) == 2
    assert all(r["noise"] > 0.05 and r["shift"] > 0.01 for r in on["layers"])
    assert min(on["train_pred_std"]) > 0 and on["mean_abs_shift"] > 0
    assert all(r["noise"] < 1e-5 and r["shift"] < 1e-5 for r in off["layers"])
    assert max(off["train_pred_std"]) == pytest.approx(0, abs=1e-6) and off["mean_abs_shift"] < 1e-5


def test_the_command_prints_and_plots(make_config, tmp_path, capsys):
    plot = tmp_path / "diag.png"
    args = ["--config", str(make_config()), "--texts", "4", "--passes", "3", "--plot", str(plot)]
    assert dropout_diagnostic.main(args) == 0
    out = capsys.readouterr().out
    assert "spread" in out and "mean shift (train - eval)" in out
    assert plot.stat().st_size > 10_000
