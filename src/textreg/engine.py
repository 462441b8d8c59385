"""Fine-tuning a backbone: the member that trains one fold at a time with Accelerate, its optimizer and schedule,
and the training loop of one fold."""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, set_seed
from torch import nn
from torch.utils.checkpoint import checkpoint
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_scheduler

from textreg import checkpoints
from textreg.averaging import WeightAverage
from textreg.batching import Collator, TextDataset, eval_loader, separator, tokenize, train_loader
from textreg.config import Config, TrainConfig
from textreg.errors import UserError
from textreg.files import write_folder_once
from textreg.hardware import choose_mixed_precision, set_cudnn_attention, set_threads
from textreg.metrics import per_target, score
from textreg.model import (
    RegressionModel,
    build_model,
    check_deterministic,
    encoder_layers,
    layer_depth,
    load_backbone_config,
    load_tokenizer,
)
from textreg.prediction import predict_rows
from textreg.records import FoldResult, Listener, ValidationEvent

NO_DECAY = ("bias", "LayerNorm.weight", "layer_norm.weight", "norm.weight")


class TransformerMember:
    """A fine-tuned backbone: one Accelerator per process, the texts tokenized once, a fresh model for each fold."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.backbone_path, self.backbone_config = load_backbone_config(cfg.model)
        self.tokenizer = load_tokenizer(self.backbone_path)
        self.separator = separator(self.tokenizer)
        self.accelerator = make_accelerator(cfg.train.mixed_precision, cfg.train.grad_accum)
        self.threads = set_threads(cfg.train.threads)
        self.is_main_process = self.accelerator.is_main_process
        self.print = self.accelerator.print
        self.wait_for_everyone = self.accelerator.wait_for_everyone

    def describe(self) -> dict:
        acc = self.accelerator
        return {"processes": acc.num_processes, "mixed_precision": acc.mixed_precision, "threads": self.threads}

    def announce(self) -> str:
        acc = self.accelerator
        return (
            f"{self.backbone_path}, {acc.num_processes} process(es) on {acc.device} with {self.threads} CPU "
            f"thread(s) each, mixed precision {acc.mixed_precision}"
        )

    def save_assets(self, folder: Path) -> None:
        """What prediction needs besides the fold checkpoints: the tokenizer and the backbone's config."""

        def write(tmp: Path) -> None:
            self.tokenizer.save_pretrained(tmp)
            self.backbone_config.save_pretrained(tmp)

        write_folder_once(folder, write)

    def prepare(
        self, texts: list[str], test_texts: list[str], targets: np.ndarray, folds_to_fit: int, pseudo_texts: list[str]
    ) -> None:
        max_len = self.cfg.model.max_len
        self.ids, self.test_ids, self.pseudo_ids = (
            tokenize(self.tokenizer, texts, max_len),
            tokenize(self.tokenizer, test_texts, max_len),
            tokenize(self.tokenizer, pseudo_texts, max_len),
        )
        self.targets = targets.astype(np.float32)
        self.collate = Collator(self.tokenizer.pad_token_id, self.cfg.train.pad_to_multiple_of)

    def fit_fold(
        self,
        fold: int,
        train_rows: np.ndarray,
        valid_rows: np.ndarray,
        targets: np.ndarray,
        listener: Listener,
        pseudo: tuple[np.ndarray, float] | None = None,
    ) -> FoldResult:
        """Train on `targets` of the training rows (a teacher's blend, with distillation) and on the pseudo-labelled
        rows (their targets for this fold, and their weight in the loss); validate on the truth."""
        cfg, train = self.cfg, self.cfg.train
        set_seed(cfg.seed + fold)
        train_set = TextDataset(self.ids, train_rows, targets.astype(np.float32))
        if pseudo is not None:  # the pseudo-labelled rows follow the labelled ones
            pseudo_targets, weight = pseudo
            n, extra = len(self.ids), len(self.pseudo_ids)
            weights = np.concatenate([np.ones(n), np.full(extra, weight)]).astype(np.float32)
            all_targets = np.concatenate([targets, pseudo_targets]).astype(np.float32)
            rows = np.concatenate([train_rows, n + np.arange(extra)])
            train_set = TextDataset(self.ids + self.pseudo_ids, rows, all_targets, weights)
        loaders = {
            "train": train_loader(train_set, train.batch_size, cfg.seed + fold, train.length_bucketing, self.collate),
            "valid": eval_loader(self.ids, valid_rows, train.eval_batch_size, self.collate),
            "test": eval_loader(self.test_ids, np.arange(len(self.test_ids)), train.eval_batch_size, self.collate),
        }
        if train.save_fitted:
            loaders["fitted"] = eval_loader(self.ids, train_rows, train.eval_batch_size, self.collate)
        model = self.fold_model(targets[train_rows], self.collate([train_set[0]]))
        result = train_fold(
            self.accelerator,
            train,
            cfg.metric,
            fold,
            model,
            loaders,
            self.targets,
            valid_rows,
            len(self.test_ids),
            listener,
            cfg.run_dir / f"fold{fold}",
        )
        fitted = result.fitted_pred
        return result if fitted is None else dataclasses.replace(result, fitted_pred=fitted[train_rows])

    def fold_model(self, train_targets: np.ndarray, probe: dict) -> RegressionModel:
        """A fresh model for one fold, its target scaling fitted on the fold's training rows, its dropout checked."""
        cfg = self.cfg
        model = build_model(cfg.model, len(cfg.data.target_columns), self.backbone_path, self.backbone_config)
        if cfg.data.standardize_targets:
            model.target_mean.copy_(torch.from_numpy(train_targets.mean(axis=0)))
            model.target_std.copy_(torch.from_numpy(train_targets.std(axis=0).clip(min=1e-6)))
        if cfg.model.dropout.disable:
            check_deterministic(model, {k: probe[k] for k in ("input_ids", "attention_mask")})
        return model


def make_accelerator(mixed_precision: str, grad_accum: int = 1) -> Accelerator:
    """One per process (`mixed_precision` as the config's: `auto` or a precision). On a GPU, batches come from
    pinned memory and are copied without waiting."""
    return Accelerator(
        # cpu=True lets a CPU run started by torchrun (not only by accelerate launch) join its process group.
        cpu=not torch.cuda.is_available(),
        mixed_precision=choose_mixed_precision(mixed_precision),
        gradient_accumulation_steps=grad_accum,
        dataloader_config=DataLoaderConfiguration(non_blocking=torch.cuda.is_available()),
    )


def elapsed_since(tick: float, device: torch.device) -> float:
    """Seconds since `tick` once the device has done the work queued so far: a GPU runs behind the Python loop."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # sync: at validations, checkpoints and epoch ends, never every step
    return time.perf_counter() - tick


def epoch_steps(n_batches: int, processes: int, grad_accum: int = 1) -> int:
    """Optimizer steps in an epoch of `n_batches`, counted over all processes together. Each process gets
    ceil(n_batches / processes) of them (Accelerate's even batches: a short share starts the epoch again) and
    steps every `grad_accum` batches and at its last one."""
    return processes * math.ceil(math.ceil(n_batches / processes) / grad_accum)


def build_optimizer(model: RegressionModel, train: TrainConfig) -> torch.optim.Optimizer:
    """The fine-tuning AdamW. The head may have its own learning rate; with layer-wise decay, each backbone layer
    learns `layerwise_lr_decay` times slower than the one above it."""
    head = {id(p) for p in model.head_parameters()}
    n_layers = model.backbone.config.num_hidden_layers

    def lr_of(name: str, param: nn.Parameter) -> float:
        if id(param) in head:
            return train.head_lr or train.lr
        return train.lr * train.layerwise_lr_decay ** (n_layers - layer_depth(name, n_layers))

    return adamw(model.named_parameters(), lr_of, train.weight_decay, train.fused_optimizer)


def adamw(
    named_parameters: Iterable[tuple[str, nn.Parameter]],
    lr_of: Callable[[str, nn.Parameter], float],
    weight_decay: float,
    fused: bool = True,
) -> torch.optim.Optimizer:
    """AdamW without weight decay on biases and norms, each parameter at its `lr_of(name, param)`; PyTorch's fused
    kernel (1.09x training on a CPU, docs/speed.md) or, with `fused=False`, its foreach one."""
    groups: dict[tuple[float, bool], list[nn.Parameter]] = {}
    for name, param in named_parameters:
        groups.setdefault((lr_of(name, param), not any(key in name for key in NO_DECAY)), []).append(param)
    param_groups = [
        {"params": params, "lr": lr, "weight_decay": weight_decay if decays else 0.0}
        for (lr, decays), params in groups.items()
    ]
    return torch.optim.AdamW(param_groups, **({"fused": True} if fused else {"foreach": True}))


def enable_gradient_checkpointing(backbone: nn.Module) -> None:
    """Each encoder layer keeps only its inputs in training and recomputes the rest in the backward pass. Done here
    rather than by transformers, which supports it for some architectures only (not MPNet). Non-reentrant: the
    implementation PyTorch recommends."""
    for layer in encoder_layers(backbone):

        def forward(*args, _forward=layer.forward, _layer=layer, **kwargs):
            if _layer.training and torch.is_grad_enabled():
                return checkpoint(_forward, *args, use_reentrant=False, **kwargs)
            return _forward(*args, **kwargs)

        layer.forward = forward


def weighted_mse(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """The mean squared error; with row weights, their weighted mean (equal weights give the plain mean)."""
    if weight is None:
        return nn.functional.mse_loss(pred, target)
    return (weight[:, None] * (pred - target) ** 2).sum() / (weight.sum() * pred.shape[1])


def predict(accelerator: Accelerator, model: nn.Module, loader: DataLoader, n_rows: int) -> np.ndarray:
    """Target-unit predictions of a prepared model over a prepared loader, one per row on any process count."""
    model.eval()
    units = accelerator.unwrap_model(model)

    def forward(batch: dict) -> torch.Tensor:
        return units.to_target_units(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]))

    return predict_rows(forward, loader, n_rows, gather=accelerator.gather_for_metrics)


@dataclasses.dataclass(frozen=True)
class StepPlan:
    """A fold's step arithmetic. An optimizer step is `grad_accum` batches of `batch_size` on every process; steps
    count over all processes together, so eval_every and max_steps mean the same number of samples on any count."""

    steps_per_epoch: int
    total: int
    first_eval: int  # no validation before this step (train.eval_start), except the last

    @classmethod
    def of(cls, n_batches: int, processes: int, train: TrainConfig) -> StepPlan:
        per_epoch = epoch_steps(n_batches, processes, train.grad_accum)
        total = per_epoch * train.epochs
        if train.max_steps:
            total = min(total, train.max_steps)
        return cls(per_epoch, total, math.ceil(train.eval_start * total))


@dataclasses.dataclass
class Validator:
    """Scores a prepared model on its fold's validation rows, keeping the best step's weights and predictions."""

    accelerator: Accelerator
    model: nn.Module
    loader: DataLoader
    metric: str
    fold: int
    targets: np.ndarray  # every training row's: predictions come back one per row
    rows: np.ndarray
    average: WeightAverage | None

    def __call__(self, p: checkpoints.FoldProgress, epoch: float, lr: float) -> ValidationEvent:
        valid_targets = self.targets[self.rows]
        with self.average.applied() if self.average else nullcontext():  # validated, and kept, with the average
            pred = predict(self.accelerator, self.model, self.loader, len(self.targets))[self.rows]
            val_score = score(self.metric, valid_targets, pred)
            if math.isnan(val_score):  # diverged weights stay NaN: stop now, with a reason, not at the end
                raise UserError(
                    f"fold {self.fold}: validation {self.metric} is NaN at step {p.step}: training diverged; "
                    "lower train.lr, or try train.mixed_precision=no"
                )
            if val_score < p.best_score:
                state = self.accelerator.unwrap_model(self.model).state_dict()
                p.best_score, p.best_step, p.best_pred = val_score, p.step, pred
                p.best_state = {k: v.detach().to("cpu", copy=True) for k, v in state.items()}
        event = ValidationEvent(
            step=p.step,
            epoch=epoch,
            val_score=val_score,
            val_per_target=per_target(self.metric, valid_targets, pred).tolist(),
            samples_per_second=p.samples / max(p.train_seconds, 1e-9),
            train_loss=p.loss_sum.item() / max(p.loss_batches, 1),  # sync: once per validation
            lr=lr,
        )
        p.loss_sum, p.loss_batches = torch.zeros_like(p.loss_sum), 0
        p.history.append(event)
        return event


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
    on_validation: Listener = lambda event: None,
    fold_dir: Path | None = None,
) -> FoldResult:
    """Train one fold, validating every `eval_every` optimizer steps once `eval_start` of the steps are done, and
    at the last step; keep the weights of the best step (lowest `metric`). With a `fold_dir`, save checkpoints there
    every `checkpoint_every`, and resume from the last one found."""
    optimizer = build_optimizer(model, train)
    set_cudnn_attention(train.cudnn_attention)
    if train.gradient_checkpointing:
        enable_gradient_checkpointing(model.backbone)
    if train.compile:
        model.backbone.compile(dynamic=True)  # in place: checkpoint keys stay those of the plain model
    steps = StepPlan.of(len(loaders["train"]), accelerator.num_processes, train)
    accelerator.print(
        f"fold {fold}: {len(loaders['train'].dataset)} training rows, batch {train.batch_size} x {train.grad_accum} "
        f"accumulated, {steps.steps_per_epoch} optimizer steps an epoch, {steps.total} in all, validation every "
        f"{train.eval_every} steps from step {steps.first_eval}"
    )
    scheduler = get_scheduler(
        train.scheduler if train.scheduler != "constant" else "constant_with_warmup",
        optimizer,
        num_warmup_steps=int(train.warmup_ratio * steps.total),
        num_training_steps=steps.total,
    )
    units = model  # the bare model, for the target scaling buffers
    sampler = loaders["train"].batch_sampler  # set_epoch through Accelerate's wrappers does not always reach it
    model, optimizer, train_dl, valid_dl, test_dl, scheduler = accelerator.prepare(
        model, optimizer, loaders["train"], loaders["valid"], loaders["test"], scheduler
    )
    plan = {"steps": steps.total, "steps_per_epoch": steps.steps_per_epoch, "processes": accelerator.num_processes}
    p = resume(accelerator, fold, fold_dir, plan, on_validation)
    schedule = checkpoints.Schedule(train.checkpoint_every if fold_dir else None, p.step, accelerator.num_processes)
    average = WeightAverage(accelerator.unwrap_model(model), train.ema_decay) if train.ema_decay else None
    if average and p.weight_average is not None:
        average.load(p.weight_average)
    validator = Validator(accelerator, model, valid_dl, metric, fold, targets, valid_rows, average)
    bar = tqdm(total=steps.total, initial=p.step, desc=f"fold {fold}", disable=not accelerator.is_local_main_process)

    model.train()
    while p.step < steps.total:
        sampler.set_epoch(p.epoch)
        train_dl.set_epoch(p.epoch)
        batches = accelerator.skip_first_batches(train_dl, p.batches_in_epoch) if p.batches_in_epoch else train_dl
        tick = time.perf_counter()
        for batch in batches:
            with accelerator.accumulate(model):
                out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
                loss = weighted_mse(out.float(), units.to_model_units(batch["target"]), batch.get("weight"))
                accelerator.backward(loss)
                if accelerator.sync_gradients and train.grad_clip:
                    accelerator.clip_grad_norm_(model.parameters(), train.grad_clip)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            p.loss_sum += loss.detach()  # summed on the device: no host-device sync in the hot loop
            p.loss_batches += 1
            p.batches_in_epoch += 1
            p.samples += len(batch["target"]) * accelerator.num_processes
            if not accelerator.sync_gradients:
                continue
            p.step += accelerator.num_processes
            if average:
                average.update(p.step // accelerator.num_processes - 1)
            bar.update(accelerator.num_processes)
            due = p.step % train.eval_every < accelerator.num_processes and p.step >= steps.first_eval
            if due or p.step >= steps.total:
                p.train_seconds += elapsed_since(tick, accelerator.device)
                event = validator(p, round(p.step / steps.steps_per_epoch, 3), scheduler.get_last_lr()[0])
                on_validation(event)
                bar.set_postfix({f"val_{metric}": f"{event.val_score:.4f}", "best": f"{p.best_score:.4f}"})
                model.train()
                tick = time.perf_counter()
            if p.step >= steps.total:
                break
            if schedule.due(p.step):
                p.train_seconds += elapsed_since(tick, accelerator.device)
                p.weight_average = average.state() if average else None
                seconds = checkpoints.save(accelerator, fold_dir, p, plan)
                accelerator.print(f"fold {fold}: checkpoint at step {p.step} saved in {seconds:.1f} s")
                tick = time.perf_counter()
        else:  # the epoch ran to its end
            p.epoch, p.batches_in_epoch = p.epoch + 1, 0
        p.train_seconds += elapsed_since(tick, accelerator.device)
    bar.close()
    fitted_dl = accelerator.prepare(loaders["fitted"]) if "fitted" in loaders else None
    return finish_fold(accelerator, model, p, fold, test_dl, n_test, fitted_dl, len(targets))


def finish_fold(
    accelerator: Accelerator,
    model: nn.Module,
    p: checkpoints.FoldProgress,
    fold: int,
    test_dl: DataLoader,
    n_test: int,
    fitted_dl: DataLoader | None,
    n_rows: int,
) -> FoldResult:
    """The best step's weights back in the model, its test predictions (and its fitted ones, NaN off their rows)."""
    accelerator.unwrap_model(model).load_state_dict(p.best_state)
    test_pred = predict(accelerator, model, test_dl, n_test)
    fitted_pred = predict(accelerator, model, fitted_dl, n_rows) if fitted_dl else None
    accelerator.free_memory()
    return FoldResult(
        fold=fold,
        best_score=p.best_score,
        best_step=p.best_step,
        valid_pred=p.best_pred,
        test_pred=test_pred,
        state=p.best_state,
        train_seconds=p.train_seconds,
        train_samples_per_second=p.samples / max(p.train_seconds, 1e-9),
        history=p.history,
        fitted_pred=fitted_pred,
    )


def resume(
    accelerator: Accelerator, fold: int, fold_dir: Path | None, plan: dict, on_validation: Listener
) -> checkpoints.FoldProgress:
    """The progress of the fold's last whole checkpoint, its states restored; a fresh start when there is none."""
    tick = time.perf_counter()
    progress, found = checkpoints.resume(accelerator, fold_dir, plan)
    if found is not None:
        accelerator.print(
            f"fold {fold}: resuming from {found} (step {progress.step} of {plan['steps']}), "
            f"read in {time.perf_counter() - tick:.1f} s"
        )
        for event in progress.history:
            on_validation(event)  # the fold's new W&B run shows the whole curve
    return progress
