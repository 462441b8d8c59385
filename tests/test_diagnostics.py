"""The dropout diagnostic sees dropout where there is some, and none where it is switched off."""

import pytest
import torch
import yaml
from conftest import train_in_process

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


def test_a_fine_tuned_fold_is_diagnosed_from_its_run_folder_alone(make_config, tmp_path, capsys):
    train_in_process(make_config(model__dropout={"disable": False}), "folds=[0]")
    run = tmp_path / "outputs" / "tiny"
    saved = yaml.safe_load((run / "config.yaml").read_text())
    saved["model"]["backbone"] = str(tmp_path / "moved-away")  # the backbone it started from is gone
    (run / "config.yaml").write_text(yaml.safe_dump(saved))
    args = ["--run", str(run), "--texts", "4", "--passes", "3", "--plot", str(tmp_path / "diag.png")]
    assert dropout_diagnostic.main(args) == 0
    assert "mean shift (train - eval)" in capsys.readouterr().out
    assert dropout_diagnostic.main([*args, "--fold", "1"]) == 2  # not trained
    assert "fold1" in capsys.readouterr().err
    assert dropout_diagnostic.main([*args[:2], "--texts", "100000"]) == 2
    assert "--texts 100000: between 1 and the" in capsys.readouterr().err
