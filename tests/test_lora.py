"""LoRA (`model.lora`) and frozen embeddings (`model.freeze_embeddings`): only the trainable weights learn, sit in
the optimizer and are saved with a fold; the pretrained ones come from the run's backbone/ folder, offline."""

import shutil

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import train_in_process, write_config
from safetensors.torch import load_file

import predict
from textreg.config import LoraConfig, ModelConfig, TrainConfig, load_config
from textreg.engine import build_optimizer
from textreg.errors import UserError
from textreg.model import build_model, load_backbone_config

LORA = {"rank": 4, "alpha": 8}


def model_for(backbone, **model):
    cfg = ModelConfig(backbone=str(backbone), **model)
    path, config = load_backbone_config(cfg)
    torch.manual_seed(0)
    return build_model(cfg, 1, path, config)


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_lora_trains_the_adapters_and_the_head_and_nothing_else(backbones, arch):
    model = model_for(backbones[arch], lora=LoraConfig(**LORA), pooling="attention")
    optimizer = build_optimizer(model, TrainConfig(lr=1e-2))
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    named = dict(model.named_parameters())
    trainable = {n for n, p in named.items() if p.requires_grad}
    assert in_optimizer == {id(named[n]) for n in trainable}
    assert all("lora_" in n or not n.startswith("backbone.") for n in trainable)
    outside = {n for n in named if not n.startswith("backbone.")}  # the pooling and the head, trained in full
    assert outside and outside <= trainable
    before = {n: p.detach().clone() for n, p in named.items()}
    ids = torch.randint(1000, 2000, (4, 10), generator=torch.Generator().manual_seed(0))
    for _ in range(2):  # LoRA's B starts at zero: A learns from the second step
        model(ids, torch.ones_like(ids)).pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    changed = {n for n, p in named.items() if not torch.equal(p, before[n])}
    assert changed == trainable


def test_frozen_embeddings_take_no_gradient_and_no_optimizer_state(backbones):
    model = model_for(backbones["gemma3_text"], freeze_embeddings=True)
    embeddings = model.backbone.get_input_embeddings().weight
    optimizer = build_optimizer(model, TrainConfig())
    assert all(p is not embeddings for group in optimizer.param_groups for p in group["params"])
    assert model.frozen() == {"backbone.embed_tokens.weight"}
    assert "backbone.embed_tokens.weight" not in model.fold_state()


def test_a_fold_that_trained_weights_this_model_freezes_is_refused(backbones):
    """Staged training from a full fine-tune into frozen embeddings: the trained embeddings would be used, yet
    neither saved with the fold nor in backbone/, so prediction would silently differ."""
    trained_all = model_for(backbones["bert"]).fold_state()
    with pytest.raises(RuntimeError, match="parameters this model keeps frozen.*word_embeddings"):
        model_for(backbones["bert"], freeze_embeddings=True).load_fold_state(trained_all)


def test_lora_options_that_cannot_work_are_refused(backbones, make_config):
    with pytest.raises(UserError, match="model.reinit_layers with model.lora"):
        load_config(make_config(), ["model.lora={rank: 4}", "model.reinit_layers=1"])
    with pytest.raises(UserError, match="model.lora.target_modules"):
        model_for(backbones["llama"], lora=LoraConfig(target_modules=["no_such_proj"]))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("arch", "overrides"),
    [
        ("llama", ["model.lora={rank: 4, alpha: 8}", "model.reinit_layers=0", "model.pooling=last_token"]),
        ("bert", ["model.freeze_embeddings=true"]),
    ],
    ids=["lora", "frozen-embeddings"],
)
def test_a_run_with_frozen_weights_saves_the_rest_and_predicts_offline(
    competition, backbones, tmp_path, arch, overrides
):
    """A fold saves its trainable weights alone; with the original backbone folder gone, prediction rebuilds the
    model from the run's backbone/ folder and gives the test predictions of training time, merged or not."""
    backbone = tmp_path / "backbone-copy"
    shutil.copytree(backbones[arch], backbone)
    train_in_process(write_config(tmp_path / "tiny.yaml", competition, backbone), *overrides)
    run_dir = tmp_path / "outputs" / "tiny"
    saved = load_file(run_dir / "fold0" / "model.safetensors")
    if arch == "llama":  # the adapters, the pooling and the head
        assert all("lora_" in name or not name.startswith("backbone.") for name in saved)
        assert any("lora_" in name for name in saved) and "head.weight" in saved
    else:  # all but the embeddings
        assert "backbone.embeddings.word_embeddings.weight" not in saved
        assert "backbone.encoder.layer.0.attention.self.query.weight" in saved
    assert (run_dir / "backbone" / "model.safetensors").is_file()
    shutil.rmtree(backbone)

    at_fit = pd.read_csv(run_dir / "test_predictions.csv").set_index("id")["target"]
    assert predict.main([str(run_dir), "--input", str(competition / "test.csv")]) == 0
    again = pd.read_csv(run_dir / "predictions" / "test.csv").set_index("id")["target"]
    np.testing.assert_allclose(again.loc[at_fit.index], at_fit, atol=1e-5)
    if arch == "llama":  # the adapters added into the weights: the same predictions, without adapter products
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
        config["model"]["lora"]["merge"] = True
        (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
        assert predict.main([str(run_dir), "--input", str(competition / "test.csv")]) == 0
        merged = pd.read_csv(run_dir / "predictions" / "test.csv").set_index("id")["target"]
        np.testing.assert_allclose(merged.loc[at_fit.index], at_fit, atol=1e-5)
