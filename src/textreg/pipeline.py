"""Cross-validation driver: config -> data and folds -> model -> engine -> artefacts, folds in one process."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from transformers import PretrainedConfig

from textreg import artifacts
from textreg.batching import Collator, TextDataset, eval_loader, separator, tokenize, train_loader
from textreg.classical import run_classical
from textreg.config import Config
from textreg.data import assign_folds, load_sample_submission, load_test, load_train, model_inputs
from textreg.engine import choose_mixed_precision, train_fold
from textreg.model import (
    RegressionModel,
    build_model,
    check_deterministic,
    load_backbone_config,
    load_tokenizer,
)
from textreg.submission import check_test_ids
from textreg.tracking import Tracker


def run_cv(cfg: Config) -> dict | None:
    """Train the configured folds; return the merged metrics on the main process (None elsewhere)."""
    # Everything that can fail on user input is checked before the run folder is touched.
    train_df, test_df = load_train(cfg), load_test(cfg)
    check_test_ids(test_df, load_sample_submission(cfg), cfg.data.id_column)
    folds = cfg.folds if cfg.folds is not None else list(range(cfg.cv.n_folds))
    if cfg.model.kind != "transformer":
        artifacts.check_run_dir(cfg)
        train_df = assign_folds(train_df, cfg)
        _open_run_dir(cfg, train_df, artifacts.describe_environment(folds))
        run_classical(cfg, train_df, test_df, folds)
        return finish_experiment(cfg.run_dir)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    backbone_path, backbone_config = load_backbone_config(cfg.model)
    tokenizer = load_tokenizer(backbone_path)
    artifacts.check_run_dir(cfg)

    accelerator = Accelerator(
        # cpu=True lets a CPU run started by torchrun (not only by accelerate launch) join its process group.
        cpu=not torch.cuda.is_available(),
        mixed_precision=choose_mixed_precision(cfg.train.mixed_precision),
        gradient_accumulation_steps=cfg.train.grad_accum,
    )
    train_df = assign_folds(train_df, cfg, accelerator.is_main_process)
    accelerator.print(
        f"{cfg.experiment}: {len(train_df)} rows, folds {folds} of {cfg.cv.n_folds}, {backbone_path}, "
        f"{accelerator.num_processes} process(es) on {accelerator.device}, "
        f"mixed precision {accelerator.mixed_precision}"
    )
    run_dir = cfg.run_dir
    if accelerator.is_main_process:
        environment = artifacts.describe_environment(folds, accelerator.num_processes, accelerator.mixed_precision)
        _open_run_dir(cfg, train_df, environment)
        tokenizer.save_pretrained(run_dir / "backbone")
        backbone_config.save_pretrained(run_dir / "backbone")
    accelerator.wait_for_everyone()

    sep = separator(tokenizer)
    train_inputs = model_inputs(train_df, cfg.data, sep)
    train_df["text_length"] = [len(text) for text in train_inputs]
    train_ids = tokenize(tokenizer, train_inputs, cfg.model.max_len)
    test_ids = tokenize(tokenizer, model_inputs(test_df, cfg.data, sep), cfg.model.max_len)
    targets = train_df[cfg.data.target_columns].to_numpy(dtype=np.float32)
    collate = Collator(tokenizer.pad_token_id)
    finished = artifacts.finished_folds(run_dir)
    tracker = Tracker(cfg, accelerator.is_main_process)
    for fold in folds:
        if fold in finished:
            accelerator.print(f"fold {fold}: finished before, kept (overwrite=true trains every fold again)")
            continue
        set_seed(cfg.seed + fold)
        valid_rows = np.flatnonzero(train_df["fold"].to_numpy() == fold)
        train_rows = np.flatnonzero(train_df["fold"].to_numpy() != fold)
        train_set = TextDataset(train_ids, train_rows, targets)
        loaders = {
            "train": train_loader(
                train_set, cfg.train.batch_size, cfg.seed + fold, cfg.train.length_bucketing, collate
            ),
            "valid": eval_loader(train_ids, valid_rows, cfg.train.eval_batch_size, collate),
            "test": eval_loader(test_ids, np.arange(len(test_ids)), cfg.train.eval_batch_size, collate),
        }
        model = _fold_model(cfg, backbone_path, backbone_config, targets[train_rows], collate([train_set[0]]))
        with tracker.fold_run(fold):
            result = train_fold(
                accelerator,
                cfg.train,
                cfg.metric,
                fold,
                model,
                loaders,
                targets,
                valid_rows,
                len(test_ids),
                on_validation=lambda event: tracker.log(wandb_values(event, cfg), event["step"]),
            )
            tracker.summarize({f"best_val_{cfg.metric}": result.best_score, "best_step": result.best_step})
            if accelerator.is_main_process:
                artifacts.save_fold(run_dir, cfg, result, train_df.iloc[valid_rows], test_df[cfg.data.id_column])
        accelerator.print(f"fold {fold}: best val {cfg.metric} {result.best_score:.4f} at step {result.best_step}")
        accelerator.wait_for_everyone()

    if not accelerator.is_main_process:
        return None
    return finish_experiment(run_dir, tracker)


def finish_experiment(run_dir: Path, tracker: Tracker | None = None) -> dict:
    """Merge the finished folds; once all are there, log the experiment's "cv" run. Prints the summary."""
    metrics = artifacts.finalize(run_dir)
    tracker = tracker or Tracker(artifacts.load_run_config(run_dir), is_main_process=True)
    if not metrics["folds_missing"]:
        files = {name: run_dir / name for name in ("oof.csv", "folds.csv", "test_predictions.csv")}
        tracker.log_cv(metrics, {**files, "submission.csv": Path(metrics["submission"])}, metrics["plots"])
    print(summary_line(metrics))
    return metrics


def wandb_values(event: dict, cfg: Config) -> dict:
    values = {
        "train/loss": event["train_loss"],
        f"val/{cfg.metric}": event["val_score"],
        "train/lr": event["lr"],
        "train/samples_per_second": event["samples_per_second"],
        "train/epoch": event["epoch"],
    }
    if len(cfg.data.target_columns) > 1:
        for target, value in zip(cfg.data.target_columns, event["val_per_target"], strict=True):
            values[f"val/{cfg.metric}_{target}"] = value
    return values


def _open_run_dir(cfg: Config, train_df, environment: dict) -> None:
    artifacts.prepare_run_dir(cfg, environment)
    artifacts.write_csv(train_df[[cfg.data.id_column, "fold"]], cfg.run_dir / "folds.csv")


def _fold_model(
    cfg: Config, backbone_path: str, backbone_config: PretrainedConfig, train_targets: np.ndarray, probe: dict
) -> RegressionModel:
    """A fresh model for one fold, its target scaling fitted on the fold's training rows, its dropout checked."""
    model = build_model(cfg.model, len(cfg.data.target_columns), backbone_path, backbone_config)
    if cfg.data.standardize_targets:
        model.target_mean.copy_(torch.from_numpy(train_targets.mean(axis=0)))
        model.target_std.copy_(torch.from_numpy(train_targets.std(axis=0).clip(min=1e-6)))
    if cfg.model.dropout.disable:
        check_deterministic(model, {k: probe[k] for k in ("input_ids", "attention_mask")})
    return model


def summary_line(metrics: dict) -> str:
    folds = ", ".join(f"{k}: {m['score']:.4f}" for k, m in metrics["folds"].items())
    line = (
        f"CV {metrics['metric']} {metrics['cv_score']:.4f} (folds {folds}); {metrics['train_seconds']:.0f} s training"
    )
    if metrics["folds_missing"]:
        return line + f"; folds {metrics['folds_missing']} still to run, then `python src/merge.py <run folder>`"
    return line + f"; submission: {metrics['submission']}"
