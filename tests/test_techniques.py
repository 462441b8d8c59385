"""Training techniques as config options: layer-wise lr decay, re-initialised top layers, weighted-layer pooling."""

import pytest
import torch
from conftest import ARCHITECTURES, ENCODERS
from transformers import AutoConfig, AutoModel

from textreg.config import DropoutConfig, ModelConfig, TrainConfig
from textreg.engine import adamw, build_optimizer
from textreg.errors import UserError
from textreg.model import build_model, encoder_layers, layer_depth, load_backbone_config
from textreg.pretraining import load_mlm_model

ARCHS = list(ARCHITECTURES)  # encoders and decoders


def model_for(backbone, **model):
    cfg = ModelConfig(backbone=str(backbone), dropout=DropoutConfig(), **model)
    path, config = load_backbone_config(cfg)
    return build_model(cfg, 1, path, config)


@pytest.mark.parametrize("arch", ARCHS)
def test_layerwise_decay_gives_lower_layers_smaller_learning_rates(backbones, arch):
    model = model_for(backbones[arch])
    optimizer = build_optimizer(model, TrainConfig(lr=1e-3, head_lr=5e-3, layerwise_lr_decay=0.5))
    lr_of = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    named = dict(model.named_parameters())
    embeddings = [lr_of[id(p)] for n, p in named.items() if "word_embeddings" in n or "embed_tokens" in n]
    layer0 = [lr_of[id(p)] for n, p in named.items() if layer_depth(n, 2) == 1]
    layer1 = [lr_of[id(p)] for n, p in named.items() if n.startswith("backbone.") and layer_depth(n, 2) == 2]
    assert set(embeddings) == {1e-3 * 0.25} and set(layer0) == {1e-3 * 0.5} and set(layer1) == {1e-3}
    assert {lr_of[id(p)] for p in model.head.parameters()} == {5e-3}
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(named)  # every parameter, once


@pytest.mark.parametrize("arch", ENCODERS)
def test_biases_and_norms_have_no_weight_decay_in_fine_tuning_and_pretraining(backbones, arch):
    """Both optimizers (fine-tuning's, and masked-LM pretraining's on the model with its LM head) group the same way:
    weight decay on the weight matrices and embeddings, none on biases and LayerNorm weights; the fused kernel."""
    fine_tuning = model_for(backbones[arch])
    pretraining = load_mlm_model(str(backbones[arch]), say=lambda line: None)
    for model, optimizer in [
        (fine_tuning, build_optimizer(fine_tuning, TrainConfig(weight_decay=0.05))),
        (pretraining, adamw(pretraining.named_parameters(), lambda name, param: 1e-4, weight_decay=0.05)),
    ]:
        decay_of = {id(p): group["weight_decay"] for group in optimizer.param_groups for p in group["params"]}
        named = dict(model.named_parameters())
        no_decay = {n for n, p in named.items() if decay_of[id(p)] == 0.0}
        norms = {
            n for n in named if n.endswith(".weight") and "norm" in n.split(".")[-2].lower()
        }  # LayerNorm, sa_layer_norm
        assert no_decay == {n for n in named if n.endswith("bias")} | norms and norms, arch
        assert {decay_of[id(p)] for n, p in named.items() if n not in no_decay} == {0.05}
        assert all(group["fused"] for group in optimizer.param_groups)


@pytest.mark.parametrize("arch", ARCHS)
def test_reinit_changes_only_the_top_layers(backbones, arch):
    plain, reinit = model_for(backbones[arch]), model_for(backbones[arch], reinit_layers=1)
    top_plain, top_reinit = encoder_layers(plain.backbone)[-1], encoder_layers(reinit.backbone)[-1]
    low_plain, low_reinit = encoder_layers(plain.backbone)[0], encoder_layers(reinit.backbone)[0]
    assert not all(torch.equal(a, b) for a, b in zip(top_plain.parameters(), top_reinit.parameters(), strict=True))
    assert all(torch.equal(a, b) for a, b in zip(low_plain.parameters(), low_reinit.parameters(), strict=True))
    # The norms as the architecture initialises them: LayerNorm's weight at 1, Gemma's (1 + weight) RMSNorm's at 0.
    fresh = encoder_layers(AutoModel.from_config(AutoConfig.from_pretrained(backbones[arch])))[-1]
    norms = [(n, p) for n, p in top_reinit.named_parameters() if "norm" in n.lower() and n.endswith("weight")]
    assert norms
    for name, param in norms:
        torch.testing.assert_close(param, fresh.get_parameter(name))


def test_reinit_more_layers_than_there_are_is_refused(backbones):
    with pytest.raises(UserError, match="has only 2 layers"):
        model_for(backbones["bert"], reinit_layers=3)


@pytest.mark.parametrize("arch", ARCHS)
def test_weighted_layer_pooling_learns_its_layer_mix(backbones, arch):
    model = model_for(backbones[arch], pooling="weighted_layers")
    ids = torch.randint(1000, 2000, (2, 12))
    out = model(ids, torch.ones_like(ids))
    out.sum().backward()
    assert out.shape == (2, 1)
    assert model.pooling.layer_logits.grad is not None and model.pooling.layer_logits.grad.abs().sum() > 0
