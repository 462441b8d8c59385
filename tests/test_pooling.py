"""Pooling over one column of the input (`model.pool_column`): the summary's tokens, not the prompt's before it."""

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TOKENIZER_DIR, train_in_process
from transformers import AutoTokenizer

import predict
from textreg.batching import TextBatcher
from textreg.config import ModelConfig, load_config
from textreg.errors import UserError
from textreg.model import build_model, load_backbone_config

TEMPLATE = "data.text_template='{author}{sep}{excerpt}'"


def test_the_pool_mask_marks_the_columns_tokens_alone():
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    prompt, summary = "why do rivers flood", "the rain fills them faster than they drain"
    tokens = TextBatcher(tokenizer, 64, pool_segment=1).split([f"{prompt}{tokenizer.sep_token}{summary}"])
    window, mask = tokens.windows[0], tokens.pool_masks[0]
    assert [t for t, m in zip(window, mask, strict=True) if m] == tokenizer(summary, add_special_tokens=False)[
        "input_ids"
    ]
    assert TextBatcher(tokenizer, 64).split(["x"]).pool_masks is None  # no column: no mask, every token pooled


@pytest.mark.parametrize("pooling", ["mean", "attention"])
def test_pooling_over_the_summary_ignores_the_prompts_tokens(backbones, pooling):
    cfg = ModelConfig(backbone=str(backbones["bert"]), pooling=pooling)
    path, config = load_backbone_config(cfg)
    torch.manual_seed(0)
    model = build_model(cfg, 1, path, config).eval()
    ids = torch.randint(1000, 2000, (3, 12), generator=torch.Generator().manual_seed(0))
    attention, pooled = torch.ones_like(ids), torch.zeros_like(ids)
    pooled[:, 5:] = 1  # the prompt is the first 5 tokens

    def shift_prompt(module, args, out):  # what the backbone says at the prompt's positions, made very different
        out.last_hidden_state[:, :5] += 100.0
        return out

    with torch.no_grad():
        plain = model(ids, attention, pooled), model(ids, attention)
        handle = model.backbone.register_forward_hook(shift_prompt)
        shifted = model(ids, attention, pooled), model(ids, attention)
        handle.remove()
    torch.testing.assert_close(shifted[0], plain[0])  # over the summary: the prompt's tokens are not read
    assert not torch.allclose(shifted[1], plain[1])  # over every token: they are


def test_a_run_pools_a_column_and_predicts_again_the_same(make_config, competition, tmp_path):
    config = make_config()
    with pytest.raises(UserError, match=r"model.pool_column=author: data.text_template must hold \{author\} between"):
        load_config(
            config, ["data.text_column=null", "data.text_template='{author} {excerpt}'", "model.pool_column=author"]
        )
    test = pd.read_csv(competition / "test.csv")
    test.assign(author="author1").to_csv(competition / "test.csv", index=False)
    train_in_process(config, "data.text_column=null", TEMPLATE, "model.pool_column=excerpt", "model.pooling=attention")
    run_dir = tmp_path / "outputs" / "tiny"
    assert predict.main([str(run_dir), "--input", str(competition / "test.csv")]) == 0
    again = pd.read_csv(run_dir / "predictions" / "test.csv").set_index("id")["target"]
    at_fit = pd.read_csv(run_dir / "test_predictions.csv").set_index("id")["target"]
    np.testing.assert_allclose(again.loc[at_fit.index], at_fit, atol=1e-5)
