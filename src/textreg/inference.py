"""Inference from a run folder alone: predict any file with the experiment's columns, fold by fold.

Works offline: a transformer member rebuilds its backbone from `backbone/` (config and tokenizer saved by the run)
and loads each fold's safetensors checkpoint; a classical member loads its saved weights, and the backbone its
features need from the same `backbone/`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file
from transformers import AutoConfig

from textreg import artifacts, classical
from textreg.batching import Collator, eval_loader, separator, tokenize
from textreg.config import Config
from textreg.data import load_test, model_inputs
from textreg.hardware import choose_mixed_precision, set_cudnn_attention
from textreg.model import build_model, load_tokenizer
from textreg.prediction import autocast, predict_rows


def predict_transformer(run_dir: Path, cfg: Config, df: pd.DataFrame, folds: list[int]) -> dict[int, np.ndarray]:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    set_cudnn_attention(cfg.train.cudnn_attention)
    tokenizer = load_tokenizer(str(run_dir / "backbone"))
    backbone_config = AutoConfig.from_pretrained(run_dir / "backbone")
    input_ids = tokenize(tokenizer, model_inputs(df, cfg.data, separator(tokenizer)), cfg.model.max_len)
    collate = Collator(tokenizer.pad_token_id, cfg.train.pad_to_multiple_of)
    loader = eval_loader(input_ids, np.arange(len(df)), cfg.train.eval_batch_size, collate)
    model = build_model(cfg.model, len(cfg.data.target_columns), None, backbone_config).to(device).eval()

    def forward(batch: dict) -> torch.Tensor:
        return model.to_target_units(model(batch["input_ids"], batch["attention_mask"]))

    predictions = {}
    for fold in folds:
        model.load_state_dict(load_file(run_dir / f"fold{fold}" / "model.safetensors", device=str(device)))
        with autocast(device, choose_mixed_precision(cfg.train.mixed_precision)):
            predictions[fold] = predict_rows(forward, loader, len(df), device=device)
    return predictions


def predict_file(run_dir: Path, input_path: Path) -> pd.DataFrame:
    """id, <target>_fold<k> for every fold, and <target>: their mean."""
    cfg = artifacts.require_finished(run_dir)
    folds = list(range(cfg.cv.n_folds))
    df = load_test(cfg, input_path)
    if cfg.model.kind == "transformer":
        per_fold = predict_transformer(run_dir, cfg, df, folds)
    else:
        per_fold = classical.predict_folds(
            cfg, run_dir, model_inputs(df, cfg.data, classical.ClassicalMember.separator), folds
        )
    targets = cfg.data.target_columns
    result = df[[cfg.data.id_column]].copy()
    for fold, values in per_fold.items():
        result[[f"{t}_fold{fold}" for t in targets]] = values
    result[targets] = np.mean(list(per_fold.values()), axis=0)
    return result
