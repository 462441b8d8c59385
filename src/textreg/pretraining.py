"""Domain-adaptive masked-LM pretraining: a backbone trained further on the competition's own texts (train + test,
plus any unlabeled files the user adds) before it is fine-tuned, as the 2nd and 6th CommonLit solutions did.

<pretrain.output>/                 the backbone folder written once, whole (model + tokenizer + pretraining.json);
                                   `python src/train.py model.backbone=<pretrain.output>` fine-tunes it
<pretrain.output>.checkpoints/     checkpoint-<step>/ every `checkpoint_every` steps (textreg.checkpoints: Accelerate's
                                   state, then progress.pt written last); removed once the backbone folder is written
"""

from __future__ import annotations

import math
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import AutoModelForMaskedLM, DataCollatorForLanguageModeling, PreTrainedModel, get_scheduler
from transformers.utils import logging as hf_logging

from textreg import checkpoints
from textreg.batching import TextBatcher, TextDataset
from textreg.config import DataConfig, PretrainConfig, PretrainSection
from textreg.data import competition_texts, read_csv
from textreg.engine import StepPlan, adamw, epoch_batches, make_accelerator, optimizer_step
from textreg.errors import UserError
from textreg.files import write_folder_once, write_json
from textreg.hardware import set_threads
from textreg.model import backbone_config, load_tokenizer
from textreg.tracking import Tracker

SUMMARY_FILE = "pretraining.json"


@dataclass
class PretrainProgress:
    """Where the loop stands; all of it is saved in a checkpoint."""

    epoch: int = 0
    batches_in_epoch: int = 0  # batches drawn from the current epoch
    step: int = 0  # optimizer steps
    loss_sum: torch.Tensor = field(default_factory=lambda: torch.zeros(()))  # since the last log, on the device
    loss_batches: int = 0
    history: list[dict] = field(default_factory=list)  # one entry per epoch: train loss, lr, held-out loss

    def to_saved(self) -> dict:
        return {**vars(self), "loss_sum": self.loss_sum.cpu()}

    @classmethod
    def from_saved(cls, saved: dict) -> PretrainProgress:
        return cls(**saved)


def checkpoint_dir(output: Path) -> Path:
    return output.with_name(output.name + ".checkpoints")


def read_extra_texts(path: Path) -> list[str]:
    """An unlabeled text file: `.txt` one text per non-empty line, or `.csv` with a `text` column."""
    if path.suffix not in (".txt", ".csv"):
        raise UserError(f"pretrain.extra_texts: {path}: give a .txt (one text a line) or a .csv (a 'text' column)")
    if not path.is_file():
        raise UserError(f"pretrain.extra_texts: file not found: {path}")
    if path.suffix == ".txt":
        return [line.strip() for line in path.read_text().splitlines() if line.strip()]
    df = read_csv(path)
    if "text" not in df.columns:
        raise UserError(f"pretrain.extra_texts: {path} has no 'text' column; it has {list(df.columns)}")
    return [t.strip() for t in df["text"].dropna().astype(str) if t.strip()]


def gather_texts(data: DataConfig, extra_texts: list[Path], sep: str) -> list[str]:
    """Competition train + test inputs, then the extra files; each text once, in first-seen order."""
    texts = competition_texts(data, sep)
    for path in extra_texts:
        texts += read_extra_texts(path)
    return list(dict.fromkeys(texts))


def split_texts(texts: list[str], valid_share: float, seed: int) -> tuple[list[str], list[str]]:
    """Held-out texts for the masked-LM validation loss: a share drawn by the seed alone."""
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    n_valid = math.ceil(valid_share * len(texts)) if valid_share else 0
    if n_valid >= len(texts):
        raise UserError(f"pretrain.valid_share={valid_share} leaves no training text of {len(texts)}")
    return [texts[i] for i in order[n_valid:]], [texts[i] for i in order[:n_valid]]


def load_mlm_model(path: str, say=print) -> PreTrainedModel:
    """The backbone with a masked-LM head. A sentence-transformers checkpoint has only the encoder: its head starts
    fresh, which is expected; one line says so instead of transformers' table of missing keys."""
    previous = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model, info = AutoModelForMaskedLM.from_pretrained(path, output_loading_info=True)
    finally:
        hf_logging.set_verbosity(previous)
    if fresh := sorted(info["missing_keys"]):
        say(f"masked-LM head: {len(fresh)} tensor(s) initialised fresh (the checkpoint has none), e.g. {fresh[0]}")
    return model


def mask(masker: DataCollatorForLanguageModeling, batch: dict, special_ids: torch.Tensor) -> dict:
    """A padded CPU batch masked for the LM loss (labels -100 where nothing is to be predicted), from the global
    random state. Masked here, in the training loop, not in the loader: Accelerate's loader fetches a batch ahead,
    so masks drawn there would be drawn before a checkpoint saves the random state, and a resumed run would draw
    them again, differently."""
    special = torch.isin(batch["input_ids"], special_ids)  # padding included: never masked
    input_ids, labels = masker.torch_mask_tokens(batch["input_ids"].clone(), special_tokens_mask=special)
    return {"input_ids": input_ids, "attention_mask": batch["attention_mask"], "labels": labels}


def held_out_batches(
    batcher: TextBatcher, masker, special_ids, ids: list[list[int]], batch_size: int, seed: int
) -> list[dict]:
    """The held-out texts masked once, by the seed: every epoch's validation loss is over the same masked tokens,
    and masking them leaves the global random state (the training masks' and dropout's) untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return [
            mask(masker, batcher.collate([{"input_ids": x, "row": 0} for x in ids[i : i + batch_size]]), special_ids)
            for i in range(0, len(ids), batch_size)
        ]


@torch.no_grad()
def held_out_loss(accelerator: Accelerator, model: torch.nn.Module, batches: list[dict]) -> float | None:
    """Masked-LM loss per masked token over the held-out batches (every process computes it on the bare model)."""
    if not batches:
        return None
    bare = accelerator.unwrap_model(model)
    bare.eval()
    total, tokens = torch.zeros((), device=accelerator.device), 0
    for batch in batches:
        n = int((batch["labels"] != -100).sum())  # counted on the CPU, before the move: no device sync
        if n == 0:
            continue  # a batch with no masked token has no loss (NaN)
        batch = {k: v.to(accelerator.device) for k, v in batch.items()}
        with accelerator.autocast():
            total += bare(**batch).loss.float() * n
        tokens += n
    bare.train()
    return total.item() / max(tokens, 1)


def run_pretraining(cfg: PretrainConfig) -> Path:
    """Pretrain, or do nothing when the output folder is there already (only whole folders are renamed into
    place). Returns the output folder."""
    section, output = cfg.pretrain, cfg.pretrain.output
    if output.is_dir():
        print(f"{output} is complete already: nothing to do (delete it to pretrain again)")
        return output
    accelerator = make_accelerator(section.mixed_precision)
    threads = set_threads(section.threads)
    path, _ = backbone_config(cfg.model.backbone)  # its own dropout stays on: it is part of masked-LM training
    batcher = TextBatcher(load_tokenizer(path), section.max_len)
    texts = gather_texts(cfg.data, section.extra_texts, batcher.separator)
    train_texts, valid_texts = split_texts(texts, section.valid_share, section.seed)
    accelerator.print(
        f"pretraining {path}: {len(train_texts)} texts, {len(valid_texts)} held out, {accelerator.num_processes} "
        f"process(es) on {accelerator.device}, {threads} thread(s) each, mixed precision {accelerator.mixed_precision}"
    )
    set_seed(section.seed)  # before the head is initialised: the same fresh head on every run
    model = load_mlm_model(path, accelerator.print)
    masker = DataCollatorForLanguageModeling(batcher.tokenizer, mlm_probability=section.mask_probability)
    train_ids, valid_ids = batcher.tokenize(train_texts), batcher.tokenize(valid_texts)
    loader = batcher.train_loader(TextDataset(train_ids, np.arange(len(train_ids))), section.batch_size, section.seed)
    special_ids = torch.tensor(batcher.tokenizer.all_special_ids)
    valid_batches = held_out_batches(batcher, masker, special_ids, valid_ids, section.batch_size, section.seed)
    tracker = Tracker(cfg.tracking, output.name, cfg.output_dir, accelerator.is_main_process)
    with tracker.open_run("pretrain", output.name, cfg.to_dict()):
        history = train(
            accelerator, section, tracker, model, loader, lambda batch: mask(masker, batch, special_ids), valid_batches
        )
    if accelerator.is_main_process:
        summary = {"config": cfg.to_dict(), "history": history}
        save_backbone(accelerator.unwrap_model(model), batcher.tokenizer, output, summary)
        shutil.rmtree(checkpoint_dir(output), ignore_errors=True)  # of no use once the folder is whole
        print(f"wrote {output}; fine-tune it with: python src/train.py model.backbone={output}")
    accelerator.wait_for_everyone()
    return output


def save_backbone(model: PreTrainedModel, tokenizer, output: Path, summary: dict) -> None:
    """The backbone folder, whole or not at all: AutoModel.from_pretrained reads the encoder from it (the LM head's
    tensors are then unused), AutoModelForMaskedLM the whole model."""

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_json(summary, tmp / SUMMARY_FILE)

    write_folder_once(output, write)


def train(
    accelerator: Accelerator,
    section: PretrainSection,
    tracker: Tracker,
    model: PreTrainedModel,
    loader: DataLoader,
    mask_batch: Callable[[dict], dict],
    valid_batches: list[dict],
) -> list[dict]:
    """AdamW with linear warm-up and decay; a held-out loss and a log line each epoch; a checkpoint every
    `checkpoint_every` steps, and a rerun resumes from the last whole one. Returns the per-epoch history. The
    step, the epoch's batches, the optimizer, the step arithmetic and the checkpoints are fine-tuning's
    (textreg.engine, textreg.checkpoints); docs/layout.md says why the loop itself is its own."""
    steps = StepPlan.of(len(loader), accelerator.num_processes, section.epochs)
    warmup = int(section.warmup_ratio * steps.total)
    accelerator.print(
        f"batch {section.batch_size}: {steps.per_epoch} optimizer steps an epoch, {steps.total} in "
        f"{section.epochs} epochs ({warmup} of warm-up), checkpoint every {section.checkpoint_every} steps"
    )
    optimizer = adamw(model.named_parameters(), lambda name, param: section.lr, section.weight_decay)
    scheduler = get_scheduler("linear", optimizer, num_warmup_steps=warmup, num_training_steps=steps.total)
    sampler = loader.batch_sampler  # set_epoch through Accelerate's wrappers does not always reach it
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    train_dl = accelerator.prepare_data_loader(loader, device_placement=False)  # masked on the CPU, then moved
    plan = steps.fingerprint(accelerator.num_processes)
    folder = checkpoint_dir(section.output)
    progress, found = checkpoints.resume(accelerator, folder, plan, PretrainProgress)
    if found is not None:
        accelerator.print(f"resuming from {found} (step {progress.step} of {steps.total})")
    schedule = checkpoints.CheckpointSchedule(section.checkpoint_every, progress.step, accelerator.num_processes)
    bar = tqdm(total=steps.total, initial=progress.step, desc="pretrain", disable=not accelerator.is_local_main_process)
    for event in progress.history:
        tracker.log(tracked(event), step=event["step"])  # a resumed run's W&B curve starts at the beginning
    model.train()
    while progress.epoch < section.epochs:
        for batch in epoch_batches(accelerator, train_dl, sampler, progress.epoch, progress.batches_in_epoch):
            batch = {k: v.to(accelerator.device, non_blocking=True) for k, v in mask_batch(batch).items()}
            with accelerator.accumulate(model):
                loss = model(**batch).loss
                optimizer_step(accelerator, model, loss, optimizer, scheduler, section.grad_clip)
            progress.loss_sum += loss.detach()  # summed on the device: no host-device sync in the loop
            progress.loss_batches += 1
            progress.batches_in_epoch += 1
            progress.step += accelerator.num_processes
            bar.update(accelerator.num_processes)
            if schedule.due(progress.step) and progress.step < steps.total:
                seconds = checkpoints.save(accelerator, folder, progress, plan)
                accelerator.print(f"checkpoint at step {progress.step} saved in {seconds:.1f} s")
        end_epoch(accelerator, model, scheduler, valid_batches, progress, tracker)
    bar.close()
    return progress.history


def end_epoch(accelerator, model, scheduler, valid_batches: list, progress: PretrainProgress, tracker: Tracker) -> None:
    """The epoch's log entry: mean train loss (the one read of the summed loss), lr, held-out masked-LM loss."""
    event = {
        "epoch": progress.epoch + 1,
        "step": progress.step,
        "train_loss": progress.loss_sum.item() / max(progress.loss_batches, 1),
        "lr": scheduler.get_last_lr()[0],
        "valid_loss": held_out_loss(accelerator, model, valid_batches),
    }
    progress.history.append(event)
    tracker.log(tracked(event), step=event["step"])
    valid = "" if event["valid_loss"] is None else f", held-out masked-LM loss {event['valid_loss']:.4f}"
    accelerator.print(f"epoch {event['epoch']}: train loss {event['train_loss']:.4f}{valid}")
    progress.loss_sum, progress.loss_batches = torch.zeros_like(progress.loss_sum), 0
    progress.epoch, progress.batches_in_epoch = progress.epoch + 1, 0


def tracked(event: dict) -> dict:
    """An epoch's entry under the W&B names a fold's run uses (train/loss, train/lr)."""
    values = {"train/epoch": event["epoch"], "train/loss": event["train_loss"], "train/lr": event["lr"]}
    if event["valid_loss"] is not None:
        values["val/mlm_loss"] = event["valid_loss"]
    return values
