"""Training engine: optimizer, schedule, the training loop of one fold, evaluation and prediction."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_scheduler

from textreg.config import TrainConfig
from textreg.metrics import per_target, score
from textreg.model import RegressionModel, layer_depth


def cpu_supports_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def choose_mixed_precision(setting: str) -> str:
    """`auto`: what `accelerate launch --mixed_precision` asked for, else the fastest the hardware does well."""
    if setting != "auto":
        return setting
    launched = os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
    if launched != "no":
        return launched
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_supports_bf16() else "no"


NO_DECAY = ("bias", "LayerNorm.weight", "layer_norm.weight", "norm.weight")


def build_optimizer(model: RegressionModel, train: TrainConfig) -> torch.optim.Optimizer:
    """AdamW without weight decay on biases and norms. The head may have its own learning rate; with
    layer-wise decay, each backbone layer learns `layerwise_lr_decay` times slower than the one above it."""
    head = {id(p) for p in model.head_parameters()}
    n_layers = model.backbone.config.num_hidden_layers
    groups: dict[tuple[float, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if id(param) in head:
            lr = train.head_lr or train.lr
        else:
            lr = train.lr * train.layerwise_lr_decay ** (n_layers - layer_depth(name, n_layers))
        decays = not any(key in name for key in NO_DECAY)
        groups.setdefault((lr, decays), []).append(param)
    param_groups = [
        {"params": params, "lr": lr, "weight_decay": train.weight_decay if decays else 0.0}
        for (lr, decays), params in groups.items()
    ]
    if train.fused_optimizer:
        return torch.optim.AdamW(param_groups, lr=train.lr, fused=True)
    return torch.optim.AdamW(param_groups, lr=train.lr, foreach=True)


@dataclass
class FoldResult:
    fold: int
    best_score: float
    best_step: int
    valid_pred: np.ndarray  # rows of the validation set, in the order of `valid_rows`
    test_pred: np.ndarray
    best_state: dict[str, torch.Tensor]
    train_seconds: float
    train_samples_per_second: float
    history: list[dict] = field(default_factory=list)


@torch.no_grad()
def predict(accelerator: Accelerator, model: nn.Module, loader: DataLoader, n_rows: int) -> np.ndarray:
    """Predictions of every row of the loader's dataset, indexed by row; exactly one per row on any process count."""
    model.eval()
    units = accelerator.unwrap_model(model)
    preds, rows = [], []
    for batch in loader:
        out = units.to_target_units(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]))
        out, row = accelerator.gather_for_metrics((out, batch["row"]))
        preds.append(out.cpu())
        rows.append(row.cpu())
    result = np.full((n_rows, preds[0].shape[1]), np.nan, dtype=np.float64)
    rows_all = torch.cat(rows).numpy()
    result[rows_all] = torch.cat(preds).numpy()
    if len(np.unique(rows_all)) != len(rows_all):
        raise RuntimeError("a row was predicted twice: the evaluation loader is not sharded as expected")
    return result


def train_fold(
    accelerator: Accelerator,
    train: TrainConfig,
    metric: str,
    fold: int,
    model: RegressionModel,
    loaders: dict[str, DataLoader],
    targets: np.ndarray,
    valid_rows: np.ndarray,
    n_test: int,
    on_validation: Callable[[dict], None] = lambda event: None,
) -> FoldResult:
    """Train one fold, validating every `eval_every` optimizer steps once `eval_start` of the steps are done, and
    at the last step; keep the weights of the best step (lowest `metric`)."""
    optimizer = build_optimizer(model, train)
    if train.compile:
        model.backbone.compile(dynamic=True)  # in place: checkpoint keys stay those of the plain model
    steps_per_epoch = math.ceil(len(loaders["train"]) / train.grad_accum)
    total_steps = steps_per_epoch * train.epochs
    if train.max_steps:
        total_steps = min(total_steps, train.max_steps)
    scheduler = get_scheduler(
        train.scheduler if train.scheduler != "constant" else "constant_with_warmup",
        optimizer,
        num_warmup_steps=int(train.warmup_ratio * total_steps),
        num_training_steps=total_steps,
    )
    units = model  # the bare model, for the target scaling buffers
    model, optimizer, train_dl, valid_dl, test_dl, scheduler = accelerator.prepare(
        model, optimizer, loaders["train"], loaders["valid"], loaders["test"], scheduler
    )
    n_valid_rows = len(targets)
    valid_targets = targets[valid_rows]
    # Steps count optimizer updates over all processes together, so that eval_every and max_steps mean the
    # same number of samples whatever the number of processes.
    step, samples, train_seconds = 0, 0, 0.0
    best = {"score": math.inf, "step": 0, "pred": None, "state": None}
    history = []
    running_loss = []
    bar = tqdm(total=total_steps, desc=f"fold {fold}", disable=not accelerator.is_local_main_process)

    def validate() -> None:
        pred = predict(accelerator, model, valid_dl, n_valid_rows)[valid_rows]
        val_score = score(metric, valid_targets, pred)
        event = {
            "step": step,
            "epoch": round(step / steps_per_epoch, 3),
            "val_score": val_score,
            "val_per_target": per_target(metric, valid_targets, pred).tolist(),
            "train_loss": float(np.mean(running_loss)) if running_loss else float("nan"),
            "lr": scheduler.get_last_lr()[0],
            "samples_per_second": samples / max(train_seconds, 1e-9),
        }
        history.append(event)
        on_validation(event)
        running_loss.clear()
        if val_score < best["score"]:
            state = accelerator.unwrap_model(model).state_dict()
            best.update(
                score=val_score,
                step=step,
                pred=pred,
                state={k: v.detach().to("cpu", copy=True) for k, v in state.items()},
            )
        bar.set_postfix({f"val_{metric}": f"{val_score:.4f}", "best": f"{best['score']:.4f}"})
        model.train()

    model.train()
    while step < total_steps:
        tick = time.perf_counter()
        for batch in train_dl:
            with accelerator.accumulate(model):
                out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
                loss = nn.functional.mse_loss(out.float(), units.to_model_units(batch["target"]))
                accelerator.backward(loss)
                if accelerator.sync_gradients and train.grad_clip:
                    accelerator.clip_grad_norm_(model.parameters(), train.grad_clip)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            running_loss.append(loss.item())
            samples += len(batch["target"]) * accelerator.num_processes
            if not accelerator.sync_gradients:
                continue
            step += accelerator.num_processes
            bar.update(accelerator.num_processes)
            due = step % train.eval_every < accelerator.num_processes and step >= train.eval_start * total_steps
            if due or step >= total_steps:
                train_seconds += time.perf_counter() - tick
                validate()
                tick = time.perf_counter()
            if step >= total_steps:
                break
        train_seconds += time.perf_counter() - tick
    bar.close()

    accelerator.unwrap_model(model).load_state_dict(best["state"])
    test_pred = predict(accelerator, model, test_dl, n_test)
    accelerator.free_memory()
    return FoldResult(
        fold=fold,
        best_score=best["score"],
        best_step=best["step"],
        valid_pred=best["pred"],
        test_pred=test_pred,
        best_state=best["state"],
        train_seconds=train_seconds,
        train_samples_per_second=samples / max(train_seconds, 1e-9),
        history=history,
    )
