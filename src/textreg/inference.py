"""Inference from a run folder alone: predict any file with the experiment's columns, fold by fold.

Works offline: a transformer member rebuilds its backbone from `backbone/` (config and tokenizer saved by the run)
and loads each fold's safetensors checkpoint; a classical member loads its saved weights and vocabulary.
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoTokenizer

from textreg import artifacts, classical
from textreg.batching import Collator, eval_loader, separator, tokenize
from textreg.config import Config, UserError
from textreg.data import load_test, model_inputs
from textreg.engine import choose_mixed_precision
from textreg.model import build_model


def _autocast(device: torch.device, precision: str):
    if precision == "no":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


@torch.no_grad()
def _predict_transformer(run_dir: Path, cfg: Config, df: pd.DataFrame, folds: list[int]) -> dict[int, np.ndarray]:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    precision = choose_mixed_precision(cfg.train.mixed_precision)
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "backbone")
    backbone_config = AutoConfig.from_pretrained(run_dir / "backbone")
    texts = model_inputs(df, cfg.data, separator(tokenizer))
    input_ids = tokenize(tokenizer, texts, cfg.model.max_len)
    loader = eval_loader(input_ids, np.arange(len(df)), cfg.train.eval_batch_size, Collator(tokenizer.pad_token_id))
    model = build_model(cfg.model, len(cfg.data.target_columns), None, backbone_config).to(device).eval()
    predictions = {}
    for fold in folds:
        model.load_state_dict(load_file(run_dir / f"fold{fold}" / "model.safetensors", device=str(device)))
        out = np.zeros((len(df), len(cfg.data.target_columns)))
        for batch in loader:
            with _autocast(device, precision):
                raw = model(batch["input_ids"].to(device), batch["attention_mask"].to(device))
            out[batch["row"].numpy()] = model.to_target_units(raw).cpu().numpy()
        predictions[fold] = out
    return predictions


def _predict_classical(run_dir: Path, cfg: Config, df: pd.DataFrame, folds: list[int]) -> dict[int, np.ndarray]:
    return classical.predict_folds(cfg, run_dir, model_inputs(df, cfg.data, " "), folds)


def predict_file(run_dir: Path, input_path: Path) -> pd.DataFrame:
    """id, <target>_fold<k> for every fold, and <target>: their mean."""
    if not (run_dir / "config.yaml").is_file():
        raise UserError(f"{run_dir} is not a run folder (no config.yaml)")
    artifacts.check_run_format(run_dir)
    cfg = artifacts.load_run_config(run_dir)
    folds = list(range(cfg.cv.n_folds))
    for fold in folds:
        if not (run_dir / f"fold{fold}" / "metrics.json").is_file():
            raise UserError(f"{run_dir}: fold {fold} is not finished; train it (folds=[{fold}]) before predicting")
        artifacts.check_fold_dir(run_dir / f"fold{fold}")
    df = load_test(cfg, input_path)
    predict = _predict_transformer if cfg.model.kind == "transformer" else _predict_classical
    per_fold = predict(run_dir, cfg, df, folds)
    targets = cfg.data.target_columns
    result = df[[cfg.data.id_column]].copy()
    for fold, values in per_fold.items():
        result[[f"{t}_fold{fold}" for t in targets]] = values
    result[targets] = np.mean(list(per_fold.values()), axis=0)
    return result
