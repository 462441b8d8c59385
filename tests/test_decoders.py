"""Decoder backbones (Gemma 3, Qwen 2 and 3, Llama, Mistral) by config, with everything an encoder has: pooling at
the last token read, padding on either side, dropout, gradient checkpointing, and a whole run predicted again."""

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import DECODERS, train_in_process
from transformers import AutoModel
from transformers.modeling_outputs import BaseModelOutput

import predict
from textreg.batching import TextBatcher
from textreg.config import DropoutConfig, ModelConfig, TrainConfig
from textreg.engine import build_optimizer, enable_gradient_checkpointing
from textreg.model import build_model, encoder_layers, load_backbone_config, load_tokenizer
from textreg.pooling import POOLINGS


def model_for(backbone, **model):
    cfg = ModelConfig(backbone=str(backbone), **model)
    path, config = load_backbone_config(cfg)
    torch.manual_seed(0)
    return build_model(cfg, 1, path, config)


def batch_of(backbone, texts):
    batcher = TextBatcher(load_tokenizer(str(backbone)), 32)
    return batcher.collate([{"input_ids": ids, "row": i} for i, ids in enumerate(batcher.tokenize(texts))])


def left_padded(mask: torch.Tensor, states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's tokens moved to the end of the row, as a left-padding tokenizer would put them."""
    shifts = (mask.shape[1] - mask.sum(1)).tolist()
    return (
        torch.stack([row.roll(s) for row, s in zip(mask, shifts, strict=True)]),
        torch.stack([row.roll(s, dims=0) for row, s in zip(states, shifts, strict=True)]),
    )


@pytest.mark.parametrize("pooling", sorted(POOLINGS))
def test_every_pooling_reads_the_same_tokens_padded_left_or_right(pooling, backbones):
    config = load_backbone_config(ModelConfig(backbone=str(backbones["llama"])))[1]
    pool = POOLINGS[pooling](config)
    torch.manual_seed(0)
    layers = [torch.randn(3, 7, config.hidden_size) for _ in range(config.num_hidden_layers + 1)]
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3, [1] * 2 + [0] * 5])
    right = pool(BaseModelOutput(last_hidden_state=layers[-1], hidden_states=tuple(layers)), mask, mask)
    shifted = [left_padded(mask, states) for states in layers]
    left_mask = shifted[0][0]
    out = BaseModelOutput(last_hidden_state=shifted[-1][1], hidden_states=tuple(s for _, s in shifted))
    torch.testing.assert_close(pool(out, left_mask, left_mask), right)
    if pooling == "last_token":  # the last token read, not the row's last position
        torch.testing.assert_close(right[2], layers[-1][2, 1])


@pytest.mark.parametrize("arch", sorted(DECODERS))
@pytest.mark.parametrize("pooling", ["last_token", "mean"])
def test_a_text_predicts_the_same_alone_and_padded_in_a_batch(backbones, arch, pooling):
    """The padding a longer neighbour adds changes nothing: not the tokens pooled, not what they attend to."""
    model = model_for(backbones[arch], pooling=pooling).eval()
    texts = ["the cat sat", "the dog ran quickly to the river and the house and jumped"]
    with torch.no_grad():
        together = model(**{k: v for k, v in batch_of(backbones[arch], texts).items() if k != "row"})
        alone = model(**{k: v for k, v in batch_of(backbones[arch], texts[:1]).items() if k != "row"})
    torch.testing.assert_close(together[0], alone[0], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("arch", sorted(DECODERS))
def test_a_decoders_dropout_is_its_config_key(backbones, arch):
    """Off by default; on when model.dropout.config names the decoder's own key."""
    ids = torch.randint(1000, 2000, (2, 12), generator=torch.Generator().manual_seed(0))
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    on = DropoutConfig(disable=False, config={"attention_dropout": 0.5})
    for dropout, differs in [(DropoutConfig(), False), (on, True)]:
        model = model_for(backbones[arch], dropout=dropout).train()
        with torch.no_grad():
            assert (not torch.equal(model(**inputs), model(**inputs))) == differs


@pytest.mark.parametrize("arch", sorted(DECODERS))
def test_gradient_checkpointing_recomputes_a_decoders_layers_with_the_same_gradients(backbones, arch):
    batch = batch_of(backbones[arch], ["the cat sat on the house", "a dog"])
    grads, calls = {}, {}
    for on in (False, True):
        model = model_for(backbones[arch], pooling="last_token").train()
        if on:
            enable_gradient_checkpointing(model.backbone)
        calls[on] = 0
        query = encoder_layers(model.backbone)[0].self_attn.q_proj  # early in the layer: recomputed in full
        query.register_forward_hook(lambda *_, on=on: calls.update({on: calls[on] + 1}))
        model(batch["input_ids"], batch["attention_mask"]).pow(2).sum().backward()
        grads[on] = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert (calls[False], calls[True]) == (1, 2)
    assert grads[True].keys() == grads[False].keys()
    for name in grads[False]:
        torch.testing.assert_close(grads[True][name], grads[False][name], atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("arch", sorted(DECODERS))
def test_a_decoders_layers_decay_from_the_top_and_its_norms_have_no_weight_decay(backbones, arch):
    model = model_for(backbones[arch])
    optimizer = build_optimizer(model, TrainConfig(lr=1e-3, layerwise_lr_decay=0.5, weight_decay=0.05))
    lr_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    decay_of = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert {lr_of[id(named["backbone.embed_tokens.weight"])]} == {1e-3 * 0.25}
    assert {lr_of[id(p)] for n, p in named.items() if ".layers.0." in n} == {1e-3 * 0.5}
    assert {lr_of[id(p)] for n, p in named.items() if ".layers.1." in n} == {1e-3}
    norms = [n for n in named if "norm" in n.split(".")[-2]]
    assert norms and all(decay_of[id(named[n])] == 0.0 for n in norms)


@pytest.mark.parametrize("arch", sorted(DECODERS))
def test_a_decoder_run_trains_and_predicts_its_test_rows_again(make_config, competition, tmp_path, arch):
    train_in_process(make_config(arch=arch, experiment=arch, model__pooling="last_token"))
    run_dir = tmp_path / "outputs" / arch
    assert predict.main([str(run_dir), "--input", str(competition / "test.csv")]) == 0
    again = pd.read_csv(run_dir / "predictions" / "test.csv").set_index("id")["target"]
    at_fit = pd.read_csv(run_dir / "test_predictions.csv").set_index("id")["target"]
    np.testing.assert_allclose(again.loc[at_fit.index], at_fit, atol=1e-5)


def test_a_decoder_published_in_bf16_trains_fp32_weights(backbones, tmp_path):
    """Qwen, Llama and Mistral publish bf16 weights: they load as fp32, which AdamW's small updates need, and an fp32
    pooling head reads them without mixed precision."""
    folder = tmp_path / "bf16-llama"
    AutoModel.from_pretrained(backbones["llama"], dtype=torch.bfloat16).save_pretrained(folder)
    load_tokenizer(str(backbones["llama"])).save_pretrained(folder)
    model = model_for(folder, pooling="attention")
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    ids = torch.randint(1000, 2000, (2, 8))
    assert model(ids, torch.ones_like(ids)).dtype == torch.float32
