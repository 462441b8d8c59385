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
from torch.optim.lr_scheduler import LRScheduler
from torch.utils.checkpoint import checkpoint
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import AutoConfig, AutoModel, PreTrainedTokenizerBase, get_scheduler

from textreg import checkpoints
from textreg.artifacts import RunFolder
from textreg.averaging import WeightAverage
from textreg.batching import BucketBatchSampler, TextBatcher, TextDataset
from textreg.config import ModelConfig, TrainConfig
from textreg.errors import UserError
from textreg.files import write_folder_once
from textreg.hardware import choose_mixed_precision, set_cudnn_attention, set_threads
from textreg.losses import training_loss
from textreg.members import Task, TextsWith
from textreg.metrics import Scorer
from textreg.model import (
    RegressionModel,
    build_model,
    check_deterministic,
    encoder_layers,
    fp16_ok,
    layer_depth,
    load_backbone_config,
    load_tokenizer,
)
from textreg.prediction import autocast, predict_rows
from textreg.records import FoldResult, Listener, ValidationEvent

NO_DECAY = ("bias", "LayerNorm.weight", "layer_norm.weight", "norm.weight")


class TransformerMember:
    """A fine-tuned backbone (`model.kind: transformer`): one Accelerator per process, the texts tokenized once, a
    fresh model for each fold."""

    def __init__(self, model: ModelConfig, train: TrainConfig, task: Task) -> None:
        self.model, self.train, self.task = model, train, task
        self.backbone_path, self.backbone_config = load_backbone_config(model)
        self.batcher = batcher_for(load_tokenizer(self.backbone_path), model, train, task.pool_segment)
        self.separator = self.batcher.separator
        self.batch_size = train.batch_size
        self.accelerator = make_accelerator(train.mixed_precision, train.grad_accum, fp16_ok(self.backbone_config))
        self.threads = set_threads(train.threads)
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
        """What prediction needs besides the fold checkpoints: the tokenizer and the backbone's config, and the
        pretrained weights when some stay frozen (a fold saves only the others)."""

        def write(tmp: Path) -> None:
            self.batcher.tokenizer.save_pretrained(tmp)
            self.backbone_config.save_pretrained(tmp)
            if self.model.freezes_weights:
                AutoModel.from_pretrained(self.backbone_path, config=self.backbone_config).save_pretrained(tmp)

        write_folder_once(folder, write)

    def prepare(
        self, texts: list[str], test_texts: list[str], targets: np.ndarray, folds_to_fit: int, extra_texts: list[str]
    ) -> None:
        """Every text cut into windows once: the training ones (the extra training texts after the labelled ones)
        at `model.max_len`, the ones validated and predicted at `model.predict_max_len`."""
        split, length = self.batcher.split, self.model.predict_max_len
        self.train_tokens, self.valid_tokens = split(texts + extra_texts), split(texts, length)
        self.test_tokens, self.n_test = split(test_texts, length), len(test_texts)
        self.targets = targets.astype(np.float32)

    def fit_fold(
        self,
        fold: int,
        train_rows: np.ndarray,
        valid_rows: np.ndarray,
        targets: np.ndarray,
        listener: Listener,
        extra: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> FoldResult:
        """Train on `targets` of the training rows (a teacher's blend, with distillation) and on the extra rows
        (pseudo-labelled and outside ones: their targets for this fold, and their weights in the loss); validate on
        the truth."""
        train, seed, batcher = self.train, self.task.seed + fold, self.batcher
        set_seed(seed)
        tokens, texts, text_weights = self.train_tokens, train_rows, None
        if extra is not None:  # the extra texts follow the labelled ones
            (extra_targets, extra_weights), n = extra, len(targets)
            text_weights = np.concatenate([np.ones(n), extra_weights]).astype(np.float32)
            targets = np.concatenate([targets, extra_targets])
            texts = np.concatenate([train_rows, n + np.arange(len(extra_targets))])
        window_weights = None if text_weights is None else text_weights[tokens.text_of]
        window_targets = targets.astype(np.float32)[tokens.text_of]  # each window learns its text's target
        rows = tokens.rows_of(texts)
        train_set = TextDataset(tokens.windows, rows, window_targets, window_weights, pool_masks=tokens.pool_masks)
        valid, test, size = self.valid_tokens, self.test_tokens, train.eval_batch_size
        loaders = {
            "train": batcher.train_loader(train_set, train.batch_size, seed, train.length_bucketing),
            "valid": batcher.eval_loader(valid, valid.rows_of(valid_rows), size),
            "test": batcher.eval_loader(test, np.arange(len(test.windows)), size),
        }
        if train.save_fitted:
            loaders["fitted"] = batcher.eval_loader(valid, valid.rows_of(train_rows), size)
        model = self.fold_model(fold, targets[train_rows], batcher.collate([train_set[0]]))
        result = train_fold(
            self.accelerator,
            train,
            self.task.scorer,
            fold,
            model,
            loaders,
            self.targets,
            valid_rows,
            self.n_test,
            listener,
            self.task.run.fold_dir(fold),
        )
        fitted = result.fitted_pred
        return result if fitted is None else dataclasses.replace(result, fitted_pred=fitted[train_rows])

    def fold_model(self, fold: int, train_targets: np.ndarray, probe: dict) -> RegressionModel:
        """A fresh model for one fold, its target scaling fitted on the fold's training rows, its dropout checked;
        with `train.init_from`, the earlier run's same fold instead, its scaling included (its head learnt it)."""
        model = build_model(self.model, len(self.task.targets), self.backbone_path, self.backbone_config)
        if self.train.init_from is not None:
            earlier = RunFolder(self.train.init_from)
            try:
                model.load_fold_state(earlier.fold_weights(fold))
            except RuntimeError as err:
                raise UserError(f"train.init_from: {earlier.fold_dir(fold)} holds another model: {err}") from None
        elif self.task.standardize_targets:
            model.target_mean.copy_(torch.from_numpy(train_targets.mean(axis=0)))
            model.target_std.copy_(torch.from_numpy(train_targets.std(axis=0).clip(min=1e-6)))
        if self.model.dropout.disable:
            check_deterministic(model, {k: probe[k] for k in ("input_ids", "attention_mask")})
        return model

    @classmethod
    def predict_folds(
        cls, model: ModelConfig, train: TrainConfig, task: Task, texts_with: TextsWith, folds: list[int]
    ) -> dict[int, np.ndarray]:
        """Each fold's checkpoint on the backbone rebuilt from the run's `backbone/` folder: offline. With
        `model.lora.merge`, each fold's adapters are added into the weights while it predicts."""
        run, device = task.run, torch.device("cuda" if torch.cuda.is_available() else "cpu")
        set_cudnn_attention(train.cudnn_attention)
        batcher = batcher_for(load_tokenizer(str(run.backbone_dir)), model, train, task.pool_segment)
        texts = texts_with(batcher.separator)
        loader = batcher.texts_loader(texts, train.eval_batch_size, model.predict_max_len)
        net = run_model(model, len(task.targets), run.backbone_dir).to(device).eval()
        merge = model.lora is not None and model.lora.merge
        precision = choose_mixed_precision(train.mixed_precision, fp16_ok(net.backbone.config))

        def forward(batch: dict) -> torch.Tensor:
            return net.to_target_units(net(batch["input_ids"], batch["attention_mask"], batch.get("pool_mask")))

        predictions = {}
        for fold in folds:
            net.load_fold_state(run.fold_weights(fold, str(device)))
            if merge:
                net.backbone.merge_adapter()
            with autocast(device, precision):
                predictions[fold] = predict_rows(forward, loader, len(texts), device=device, progress=f"fold {fold}")
            if merge:
                net.backbone.unmerge_adapter()  # the next fold's adapters go on the pretrained weights
        return predictions


def batcher_for(
    tokenizer: PreTrainedTokenizerBase, model: ModelConfig, train: TrainConfig, pool_segment: int | None
) -> TextBatcher:
    """The member's batcher: the config's length, truncation, pooled part and padding, in training and prediction."""
    return TextBatcher(tokenizer, model.max_len, train.pad_to_multiple_of, model.truncation, model.stride, pool_segment)


def run_model(model: ModelConfig, n_targets: int, backbone_dir: Path) -> RegressionModel:
    """A model to load a run's fold states into, from the run's backbone/ folder: random weights when the folds
    saved them all, the pretrained ones saved there when some stayed frozen."""
    path = str(backbone_dir) if model.freezes_weights else None
    return build_model(model, n_targets, path, AutoConfig.from_pretrained(backbone_dir))


def make_accelerator(mixed_precision: str, grad_accum: int = 1, fp16: bool = True) -> Accelerator:
    """One per process (`mixed_precision` as the config's: `auto` or a precision; `fp16=False`: never fp16 for
    `auto`). On a GPU, batches come from pinned memory and are copied without waiting."""
    return Accelerator(
        # cpu=True lets a CPU run started by torchrun (not only by accelerate launch) join its process group.
        cpu=not torch.cuda.is_available(),
        mixed_precision=choose_mixed_precision(mixed_precision, fp16),
        gradient_accumulation_steps=grad_accum,
        dataloader_config=DataLoaderConfiguration(non_blocking=torch.cuda.is_available()),
    )


def elapsed_since(tick: float, device: torch.device) -> float:
    """Seconds since `tick` once the device has done the work queued so far: a GPU runs behind the Python loop."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # sync: at validations, checkpoints and epoch ends, never every step
    return time.perf_counter() - tick


def build_optimizer(model: RegressionModel, train: TrainConfig) -> torch.optim.Optimizer:
    """The fine-tuning AdamW over the trainable parameters (not LoRA's frozen base weights). The head may have its
    own learning rate; with layer-wise decay, each backbone layer learns `layerwise_lr_decay` times slower than the
    one above it."""
    head = {id(p) for p in model.head_parameters()}
    n_layers = model.backbone.config.num_hidden_layers

    def lr_of(name: str, param: nn.Parameter) -> float:
        if id(param) in head:
            return train.head_lr or train.lr
        return train.lr * train.layerwise_lr_decay ** (n_layers - layer_depth(name, n_layers))

    trainable = ((name, param) for name, param in model.named_parameters() if param.requires_grad)
    return adamw(trainable, lr_of, train.weight_decay, train.fused_optimizer)


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


def predict(
    accelerator: Accelerator, model: nn.Module, loader: DataLoader, n_rows: int, progress: str | None = None
) -> np.ndarray:
    """Target-unit predictions of a prepared model over a prepared loader, one per row on any process count."""
    model.eval()
    units = accelerator.unwrap_model(model)

    def forward(batch: dict) -> torch.Tensor:
        return units.to_target_units(model(batch["input_ids"], batch["attention_mask"], batch.get("pool_mask")))

    progress = progress if accelerator.is_local_main_process else None
    return predict_rows(forward, loader, n_rows, gather=accelerator.gather_for_metrics, progress=progress)


@dataclasses.dataclass(frozen=True)
class StepPlan:
    """A loop's step arithmetic. An optimizer step is `grad_accum` batches of `batch_size` on every process; steps
    count over all processes together, so eval_every and max_steps mean the same number of samples on any count."""

    per_epoch: int
    total: int
    first_eval: int = 0  # no validation before this step (train.eval_start), except the last

    @classmethod
    def of(
        cls,
        n_batches: int,
        processes: int,
        epochs: int,
        grad_accum: int = 1,
        max_steps: int | None = None,
        eval_start: float = 0.0,
    ) -> StepPlan:
        # Each process gets ceil(n_batches / processes) batches of an epoch (Accelerate's even batches: a short share
        # starts the epoch again) and steps every `grad_accum` batches and at its last one.
        per_epoch = processes * math.ceil(math.ceil(n_batches / processes) / grad_accum)
        total = min(per_epoch * epochs, max_steps or math.inf)
        return cls(per_epoch, total, math.ceil(eval_start * total))

    def fingerprint(self, processes: int) -> dict:
        """What a checkpoint must have been saved under to be resumed."""
        return {"steps": self.total, "steps_per_epoch": self.per_epoch, "processes": processes}


def epoch_batches(
    accelerator: Accelerator, loader: DataLoader, sampler: BucketBatchSampler, epoch: int, drawn: int
) -> Iterable[dict]:
    """The batches of `epoch` not drawn yet: their order depends on (seed, epoch) alone, so a resumed loop draws the
    rest of the epoch it stopped in. `sampler` is the loader's own: set_epoch through Accelerate's wrappers does not
    always reach it."""
    sampler.set_epoch(epoch)
    loader.set_epoch(epoch)
    return accelerator.skip_first_batches(loader, drawn) if drawn else loader


def optimizer_step(
    accelerator: Accelerator,
    model: nn.Module,
    loss: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    scheduler: LRScheduler,
    grad_clip: float | None,
) -> None:
    """Backward, and inside `accelerator.accumulate` the optimizer step once the batches to accumulate are in (a
    prepared optimizer and scheduler skip the others)."""
    accelerator.backward(loss)
    if accelerator.sync_gradients and grad_clip:
        accelerator.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)


@dataclasses.dataclass
class Validator:
    """Scores a prepared model on its fold's validation rows, keeping the best step's weights, and restores them."""

    accelerator: Accelerator
    model: nn.Module
    loader: DataLoader
    scorer: Scorer
    fold: int
    targets: np.ndarray  # every training row's: predictions come back one per row
    rows: np.ndarray
    average: WeightAverage | None

    def __call__(self, progress: checkpoints.FoldProgress, epoch: float, lr: float) -> ValidationEvent:
        valid_targets = self.targets[self.rows]
        with self.average.applied() if self.average else nullcontext():  # validated, and kept, with the average
            pred = predict(self.accelerator, self.model, self.loader, len(self.targets))[self.rows]
            val_score = self.scorer.score(valid_targets, pred)
            if math.isnan(val_score):  # diverged weights stay NaN: stop now, with a reason, not at the end
                raise UserError(
                    f"fold {self.fold}: validation {self.scorer.name} is NaN at step {progress.step}: training "
                    "diverged; lower train.lr, or try train.mixed_precision=no"
                )
            if progress.best_state is None or self.scorer.better(val_score, progress.best_score):
                state = self.accelerator.unwrap_model(self.model).fold_state()
                progress.best_score, progress.best_step, progress.best_pred = val_score, progress.step, pred
                progress.best_state = {k: v.detach().to("cpu", copy=True) for k, v in state.items()}
        event = ValidationEvent(
            step=progress.step,
            epoch=epoch,
            val_score=val_score,
            val_per_target=self.scorer.per_target(valid_targets, pred).tolist(),
            samples_per_second=progress.samples / max(progress.train_seconds, 1e-9),
            train_loss=progress.loss_sum.item() / max(progress.loss_batches, 1),  # sync: once per validation
            lr=lr,
        )
        progress.loss_sum, progress.loss_batches = torch.zeros_like(progress.loss_sum), 0
        progress.history.append(event)
        return event

    def best_result(
        self, progress: checkpoints.FoldProgress, test_dl: DataLoader, n_test: int, fitted_dl: DataLoader | None
    ) -> FoldResult:
        """The best step's weights back in the model, its test predictions (and its fitted ones, NaN off their rows)."""
        accelerator, model = self.accelerator, self.model
        accelerator.unwrap_model(model).load_fold_state(progress.best_state)
        test_pred = predict(accelerator, model, test_dl, n_test, f"fold {self.fold}: test rows")
        fitted = f"fold {self.fold}: fitted rows"
        fitted_pred = predict(accelerator, model, fitted_dl, len(self.targets), fitted) if fitted_dl else None
        accelerator.free_memory()
        return FoldResult(
            fold=self.fold,
            best_score=progress.best_score,
            best_step=progress.best_step,
            valid_pred=progress.best_pred,
            test_pred=test_pred,
            state=progress.best_state,
            train_seconds=progress.train_seconds,
            train_samples_per_second=progress.samples / max(progress.train_seconds, 1e-9),
            history=progress.history,
            fitted_pred=fitted_pred,
        )


def train_fold(
    accelerator: Accelerator,
    train: TrainConfig,
    scorer: Scorer,
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
    at the last step; keep the weights of the best step (by `scorer`). With a `fold_dir`, save checkpoints there
    every `checkpoint_every`, and resume from the last one found."""
    optimizer = build_optimizer(model, train)
    set_cudnn_attention(train.cudnn_attention)
    if train.gradient_checkpointing:
        enable_gradient_checkpointing(model.backbone)
    if train.compile:
        model.backbone.compile(dynamic=True)  # in place: checkpoint keys stay those of the plain model
    processes = accelerator.num_processes
    steps = StepPlan.of(
        len(loaders["train"]), processes, train.epochs, train.grad_accum, train.max_steps, train.eval_start
    )
    accelerator.print(
        f"fold {fold}: {len(loaders['train'].dataset)} training rows, batch {train.batch_size} x {train.grad_accum} "
        f"accumulated, {steps.per_epoch} optimizer steps an epoch, {steps.total} in all, validation every "
        f"{train.eval_every} steps from step {steps.first_eval}"
    )
    schedule_name = train.scheduler if train.scheduler != "constant" else "constant_with_warmup"
    warmup = int(train.warmup_ratio * steps.total)
    scheduler = get_scheduler(schedule_name, optimizer, num_warmup_steps=warmup, num_training_steps=steps.total)
    units = model  # the bare model, for the target scaling buffers
    sampler = loaders["train"].batch_sampler
    model, optimizer, train_dl, valid_dl, test_dl, scheduler = accelerator.prepare(
        model, optimizer, loaders["train"], loaders["valid"], loaders["test"], scheduler
    )
    plan = steps.fingerprint(processes)
    progress = resume(accelerator, fold, fold_dir, plan, on_validation)
    schedule = checkpoints.CheckpointSchedule(train.checkpoint_every if fold_dir else None, progress.step, processes)
    average = WeightAverage(accelerator.unwrap_model(model), train.ema_decay) if train.ema_decay else None
    if average and progress.weight_average is not None:
        average.load(progress.weight_average)
    validator = Validator(accelerator, model, valid_dl, scorer, fold, targets, valid_rows, average)
    target_weights = torch.tensor(train.target_weights, device=accelerator.device) if train.target_weights else None
    bar = tqdm(
        total=steps.total, initial=progress.step, desc=f"fold {fold}", disable=not accelerator.is_local_main_process
    )

    model.train()
    while progress.step < steps.total:
        tick = time.perf_counter()
        for batch in epoch_batches(accelerator, train_dl, sampler, progress.epoch, progress.batches_in_epoch):
            with accelerator.accumulate(model):
                out = model(batch["input_ids"], batch["attention_mask"], batch.get("pool_mask"))
                target = units.to_model_units(batch["target"])
                loss = training_loss(train.loss, out.float(), target, batch.get("weight"), target_weights)
                optimizer_step(accelerator, model, loss, optimizer, scheduler, train.grad_clip)
            progress.loss_sum += loss.detach()  # summed on the device: no host-device sync in the hot loop
            progress.loss_batches += 1
            progress.batches_in_epoch += 1
            progress.samples += len(batch["target"]) * processes
            if not accelerator.sync_gradients:
                continue
            progress.step += processes
            if average:
                average.update(progress.step // processes - 1)
            bar.update(processes)
            due = progress.step % train.eval_every < processes and progress.step >= steps.first_eval
            if due or progress.step >= steps.total:
                progress.train_seconds += elapsed_since(tick, accelerator.device)
                event = validator(progress, round(progress.step / steps.per_epoch, 3), scheduler.get_last_lr()[0])
                on_validation(event)
                bar.set_postfix({f"val_{scorer.name}": f"{event.val_score:.4f}", "best": f"{progress.best_score:.4f}"})
                model.train()
                tick = time.perf_counter()
            if progress.step >= steps.total:
                break
            if schedule.due(progress.step):
                progress.train_seconds += elapsed_since(tick, accelerator.device)
                progress.weight_average = average.state() if average else None
                seconds = checkpoints.save(accelerator, fold_dir, progress, plan)
                accelerator.print(f"fold {fold}: checkpoint at step {progress.step} saved in {seconds:.1f} s")
                tick = time.perf_counter()
        else:  # the epoch ran to its end
            progress.epoch, progress.batches_in_epoch = progress.epoch + 1, 0
        progress.train_seconds += elapsed_since(tick, accelerator.device)
    bar.close()
    fitted_dl = accelerator.prepare(loaders["fitted"]) if "fitted" in loaders else None
    return validator.best_result(progress, test_dl, n_test, fitted_dl)


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
