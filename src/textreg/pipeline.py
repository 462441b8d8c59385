"""Cross-validation driver: config -> data and folds -> member -> fold loop -> artefacts.

One fold loop for every kind of member: a fine-tuned backbone (`engine.TransformerMember`, one process or many)
or a classical fit (`classical.ClassicalMember`, one process only). A member tells what it needs saved, reads its
texts once, and fits one fold at a time; the loop keeps finished folds, tracks each fold as a W&B run, writes
each fold's files from the main process, and merges them at the end.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np

from textreg import artifacts, checkpoints, teachers
from textreg.config import Config
from textreg.data import assign_folds, load_sample_submission, load_test, load_train, model_inputs
from textreg.engine import TransformerMember
from textreg.errors import UserError
from textreg.files import write_csv
from textreg.records import FoldResult, Listener, ValidationEvent
from textreg.submission import check_test_ids
from textreg.tracking import Tracker


class Member(Protocol):
    separator: str
    is_main_process: bool
    print: Callable[..., None]

    def wait_for_everyone(self) -> None: ...
    def describe(self) -> dict: ...
    def announce(self) -> str: ...
    def save_assets(self, folder: Path) -> None: ...
    def prepare(
        self, texts: list[str], test_texts: list[str], targets: np.ndarray, folds_to_fit: int, pseudo_texts: list[str]
    ) -> None: ...
    def fit_fold(
        self,
        fold: int,
        train_rows: np.ndarray,
        valid_rows: np.ndarray,
        targets: np.ndarray,
        listener: Listener,
        pseudo: tuple[np.ndarray, float] | None = None,
    ) -> FoldResult: ...


def run_cv(cfg: Config) -> dict | None:
    """Train the configured folds; return the merged metrics on the main process (None elsewhere)."""
    # Everything that can fail on user input is checked before the run folder is touched.
    train_df, test_df = load_train(cfg), load_test(cfg)
    check_test_ids(test_df, load_sample_submission(cfg), cfg.data.id_column)
    folds = cfg.folds if cfg.folds is not None else list(range(cfg.cv.n_folds))
    if cfg.model.kind == "transformer":
        member: Member = TransformerMember(cfg)
    else:
        from textreg.classical import ClassicalMember  # scikit-learn and LightGBM: seconds of start-up, when needed

        member = ClassicalMember(cfg)
    check_batch_size(cfg, len(train_df))
    artifacts.check_run_dir(cfg)
    run_dir = cfg.run_dir
    check_files_to_read(cfg, folds)
    train_df = assign_folds(train_df, cfg, member.is_main_process)
    teacher = teachers.load_teacher(cfg, train_df, folds) if cfg.train.distill else None
    pseudo = teachers.load_pseudo_labels(cfg, train_df, member.separator) if cfg.data.pseudo_label else None
    member.print(f"{cfg.experiment}: {len(train_df)} rows, folds {folds} of {cfg.cv.n_folds}, {member.announce()}")
    if member.is_main_process:
        artifacts.prepare_run_dir(cfg, artifacts.describe_environment(folds, member.describe()))
        write_csv(train_df[[cfg.data.id_column, "fold"]], run_dir / "folds.csv")
        member.save_assets(run_dir / "backbone")
    member.wait_for_everyone()

    texts = model_inputs(train_df, cfg.data, member.separator)
    train_df["text_length"] = [len(text) for text in texts]
    finished = artifacts.finished_folds(run_dir)
    to_fit = [fold for fold in folds if fold not in finished]
    targets = train_df[cfg.data.target_columns].to_numpy()
    if to_fit:  # tokenizing or embedding every text is work only a fold to fit needs
        test_texts = model_inputs(test_df, cfg.data, member.separator)
        member.prepare(texts, test_texts, targets, len(to_fit), pseudo.texts if pseudo else [])
    tracker = Tracker(cfg, member.is_main_process)
    fold_of_row = train_df["fold"].to_numpy()
    for fold in folds:
        if fold not in to_fit:
            member.print(f"fold {fold}: finished before, kept (overwrite=true trains every fold again)")
            if member.is_main_process:
                checkpoints.remove_all(run_dir / f"fold{fold}")  # left by a stop between the fold's files and this
            continue
        valid_rows, train_rows = np.flatnonzero(fold_of_row == fold), np.flatnonzero(fold_of_row != fold)
        ids = train_df[cfg.data.id_column]
        fold_targets = teacher.targets(fold, targets, ids, train_rows) if teacher else targets
        with tracker.fold_run(fold):
            result = member.fit_fold(
                fold,
                train_rows,
                valid_rows,
                fold_targets,
                lambda e: tracker.log(wandb_values(e, cfg), e.step),
                (pseudo.targets(fold), pseudo.weight) if pseudo else None,
            )
            tracker.summarize({f"best_val_{cfg.metric}": result.best_score, "best_step": result.best_step})
            if member.is_main_process:
                test_ids, train_ids = test_df[cfg.data.id_column], ids.iloc[train_rows]
                artifacts.save_fold(run_dir, cfg, result, train_df.iloc[valid_rows], test_ids, train_ids)
                checkpoints.remove_all(run_dir / f"fold{fold}")
        member.print(f"fold {fold}: best val {cfg.metric} {result.best_score:.4f} at step {result.best_step}")
        member.wait_for_everyone()

    if not member.is_main_process:
        return None
    return finish_experiment(run_dir, tracker)


def check_files_to_read(cfg: Config, folds: list[int]) -> None:
    """A damaged file this run would read (a finished fold's, or the checkpoint an unfinished fold resumes from) is
    reported before anything is written. With overwrite=true the folder is replaced and nothing of it is read."""
    if cfg.overwrite:
        return
    finished = artifacts.finished_folds(cfg.run_dir)
    for fold in folds:
        fold_dir = cfg.run_dir / f"fold{fold}"
        if fold in finished:
            artifacts.check_fold_dir(fold_dir)
        else:
            checkpoints.check_latest(fold_dir)


def check_batch_size(cfg: Config, n_rows: int) -> None:
    """A batch larger than a fold's training rows would make every epoch one short batch: a config mistake."""
    fold_rows = n_rows - -(-n_rows // cfg.cv.n_folds)  # the training rows of the fold with the largest validation
    if cfg.model.kind == "transformer" and cfg.train.batch_size > fold_rows:
        raise UserError(
            f"train.batch_size={cfg.train.batch_size} is larger than a fold's {fold_rows} training rows "
            f"({n_rows} rows, {cfg.cv.n_folds} folds); lower the batch size"
        )


def finish_experiment(run_dir: Path, tracker: Tracker | None = None) -> dict:
    """Merge the finished folds; once all are there, log the experiment's "cv" run. Prints the summary."""
    metrics = artifacts.finalize(run_dir)
    tracker = tracker or Tracker(artifacts.load_run_config(run_dir), is_main_process=True)
    if not metrics["folds_missing"]:
        files = {name: run_dir / name for name in ("oof.csv", "folds.csv", "test_predictions.csv")}
        tracker.log_cv(metrics, {**files, "submission.csv": Path(metrics["submission"])}, metrics["plots"])
    print(summary_line(metrics))
    return metrics


def wandb_values(event: ValidationEvent, cfg: Config) -> dict:
    values = {
        "train/loss": event.train_loss,
        f"val/{cfg.metric}": event.val_score,
        "train/lr": event.lr,
        "train/samples_per_second": event.samples_per_second,
        "train/epoch": event.epoch,
    }
    if len(cfg.data.target_columns) > 1:
        for target, value in zip(cfg.data.target_columns, event.val_per_target, strict=True):
            values[f"val/{cfg.metric}_{target}"] = value
    return {key: value for key, value in values.items() if value is not None}  # a one-shot fit has no loss or lr


def summary_line(metrics: dict) -> str:
    folds = ", ".join(f"{k}: {m['score']:.4f}" for k, m in metrics["folds"].items())
    line = (
        f"CV {metrics['metric']} {metrics['cv_score']:.4f} (folds {folds}); {metrics['train_seconds']:.0f} s training"
    )
    if metrics["folds_missing"]:
        return line + f"; folds {metrics['folds_missing']} still to run, then `python src/merge.py <run folder>`"
    return line + f"; submission: {metrics['submission']}"
