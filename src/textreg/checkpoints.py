"""Checkpoints inside a fold: everything a killed fold needs to go on as if it had never stopped.

fold<k>/checkpoint-<step>/   Accelerate's `save_state` (model, optimizer, scheduler, grad scaler, every process's
                             random states) and `progress.pt` (where the loop stood: epoch, batches of it done,
                             steps, the best weights, score and predictions so far, the validation history).
                             `progress.pt` is written last and atomically, once every process has saved: a folder
                             without it is a save that was interrupted, and is ignored. Older checkpoints are
                             removed once a newer one is whole; all of them once the fold's files are written.
"""

from __future__ import annotations

import math
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list

from textreg.config import MINUTES
from textreg.errors import UserError
from textreg.files import atomic_write, check_safetensors
from textreg.records import ValidationEvent

PROGRESS_FILE = "progress.pt"
FOLDER = re.compile(r"checkpoint-(\d+)")
CALIBRATION_STEPS = 20  # steps timed before "every N minutes" becomes "every K steps"


@dataclass
class FoldProgress:
    """Where a fold's training loop stands; all of it is saved in a checkpoint."""

    epoch: int = 0
    batches_in_epoch: int = 0  # batches this process has drawn from the current epoch
    step: int = 0  # optimizer steps over all processes together
    samples: int = 0
    train_seconds: float = 0.0
    loss_sum: torch.Tensor = field(default_factory=lambda: torch.zeros(()))  # since the last validation, on device
    loss_batches: int = 0
    best_score: float = math.inf
    best_step: int = 0
    best_pred: np.ndarray | None = None
    best_state: dict[str, torch.Tensor] | None = None
    history: list[ValidationEvent] = field(default_factory=list)
    weight_average: list[torch.Tensor] | None = None  # train.ema_decay's average, on the CPU

    def to_saved(self) -> dict:
        best_pred = None if self.best_pred is None else torch.from_numpy(self.best_pred)
        history = [event.to_dict() for event in self.history]
        return {**vars(self), "loss_sum": self.loss_sum.cpu(), "best_pred": best_pred, "history": history}

    @classmethod
    def from_saved(cls, saved: dict) -> FoldProgress:
        best_pred = None if saved["best_pred"] is None else saved["best_pred"].numpy()
        history = [ValidationEvent(**event) for event in saved["history"]]
        return cls(**{**saved, "best_pred": best_pred, "history": history})


def complete(fold_dir: Path) -> list[Path]:
    """The whole checkpoints of a fold, oldest first."""
    found = [p for p in fold_dir.glob("checkpoint-*") if FOLDER.fullmatch(p.name) and (p / PROGRESS_FILE).is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def check_latest(fold_dir: Path, fold: int) -> None:
    """Read-only, before anything is written: the checkpoint a rerun of fold `fold` would resume from is readable."""
    found = complete(fold_dir)
    if not found:
        return
    try:
        torch.load(found[-1] / PROGRESS_FILE, weights_only=True)
        check_safetensors(found[-1] / "model.safetensors")
    except Exception as err:  # torch and safetensors raise their own error types for a damaged file
        raise UserError(
            f"{found[-1]} is damaged ({type(err).__name__}); delete that folder to resume from an earlier "
            f"checkpoint or start fold {fold} over"
        ) from err


def save(accelerator: Accelerator, fold_dir: Path, progress: FoldProgress, fingerprint: dict) -> float:
    """Every process saves its part; the main process then marks the checkpoint whole. Returns the seconds taken."""
    tick = time.perf_counter()
    folder = fold_dir / f"checkpoint-{progress.step}"
    if accelerator.is_main_process and folder.exists():
        shutil.rmtree(folder)  # a save of this step that was interrupted before
    accelerator.wait_for_everyone()
    accelerator.save_state(str(folder))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        saved = {**progress.to_saved(), "fingerprint": fingerprint}
        atomic_write(folder / PROGRESS_FILE, lambda tmp: torch.save(saved, tmp))
        for older in complete(fold_dir)[:-1]:
            shutil.rmtree(older)
    accelerator.wait_for_everyone()
    return time.perf_counter() - tick


def load(accelerator: Accelerator, folder: Path, fingerprint: dict, progress_type: type = FoldProgress):
    """Restore a prepared model, optimizer, scheduler and the random states; return the loop's progress (a
    `progress_type`: a fold's FoldProgress, or another loop's class with the same `from_saved`)."""
    saved = torch.load(folder / PROGRESS_FILE, weights_only=True)
    if saved.pop("fingerprint") != fingerprint:
        raise UserError(
            f"{folder} was saved by a run with another step plan or process count ({fingerprint}); "
            "resume it as it was launched, or delete the folder to start over"
        )
    accelerator.load_state(str(folder))
    return progress_type.from_saved(saved)


def resume(
    accelerator: Accelerator, folder: Path | None, fingerprint: dict, progress_type: type = FoldProgress
) -> tuple[Any, Path | None]:
    """The loop's progress at the last whole checkpoint in `folder`, the states restored, and that checkpoint's
    path; a fresh `progress_type` and None when there is none. The summed loss is on the accelerator's device."""
    found = complete(folder) if folder is not None else []
    progress = load(accelerator, found[-1], fingerprint, progress_type) if found else progress_type()
    progress.loss_sum = progress.loss_sum.to(accelerator.device)
    return progress, found[-1] if found else None


def remove_all(fold_dir: Path) -> None:
    """Once the fold's files are written, its checkpoints (whole or not) are of no use."""
    for folder in fold_dir.glob("checkpoint-*"):
        shutil.rmtree(folder, ignore_errors=True)


class CheckpointSchedule:
    """When to save: every N optimizer steps, or every N minutes. Minutes become steps once, from the speed of the
    main process over the first CALIBRATION_STEPS steps, shared with the others in one broadcast: the processes
    must agree on when to save, and reading a clock every step would make them talk every step."""

    def __init__(self, every: int | str | None, start_step: int, num_processes: int) -> None:
        self.num_processes = num_processes
        self.interval = every if isinstance(every, int) else None
        self.minutes = float(MINUTES.fullmatch(every).group(1)) if isinstance(every, str) else None
        self.calibrate_at = start_step + CALIBRATION_STEPS * num_processes
        self.started = time.perf_counter()
        self.last = start_step

    def due(self, step: int) -> bool:
        if self.minutes is not None and self.interval is None and step >= self.calibrate_at:
            seconds = [(time.perf_counter() - self.started) / (step - self.last)]
            if self.num_processes > 1:
                broadcast_object_list(seconds)  # once a fold: the main process's speed for everyone
            self.interval = max(1, round(self.minutes * 60 / seconds[0]))
        if self.interval is None or step - self.last < self.interval:
            return False
        self.last = step
        return True
