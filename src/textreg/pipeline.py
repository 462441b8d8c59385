"""Cross-validation driver: config -> data and folds -> member -> fold loop -> artefacts.

One fold loop for every kind of member (`textreg.members`: a fine-tuned backbone, one process or many, or a
classical fit, one process only). A member tells what it needs saved, reads its texts once, and fits one fold at a
time; the loop keeps finished folds, tracks each fold as a W&B run, has the run folder write each fold's files from
the main process, and merges them at the end. This module and the entry scripts alone see the whole config: each
module below gets its own sections.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from textreg import artifacts, checkpoints, members, teachers
from textreg.artifacts import RunFolder
from textreg.config import Config
from textreg.data import assign_folds, load_extra_train, load_sample_submission, load_test, load_train, model_inputs
from textreg.errors import UserError
from textreg.files import write_csv
from textreg.records import ValidationEvent
from textreg.submission import check_test_ids
from textreg.tracking import Tracker


@dataclass(frozen=True)
class ExtraRows:
    """Rows that train every fold and are never validated: the pseudo-labelled ones, then the outside ones."""

    texts: list[str]
    pseudo: teachers.PseudoLabels | None
    outside_targets: np.ndarray  # (rows, targets) of data.extra_train_files

    def of_fold(self, fold: int) -> tuple[np.ndarray, np.ndarray] | None:
        """Their targets for this fold (a pseudo-label is the fold's teacher's) and their weights in the loss."""
        parts = [(self.outside_targets, np.ones(len(self.outside_targets)))] if len(self.outside_targets) else []
        if self.pseudo:
            parts.insert(0, (self.pseudo.targets(fold), np.full(len(self.pseudo.texts), self.pseudo.weight)))
        return (np.concatenate([t for t, _ in parts]), np.concatenate([w for _, w in parts])) if parts else None


def run_cv(cfg: Config) -> dict | None:
    """Train the configured folds; return the merged metrics on the main process (None elsewhere)."""
    # Everything that can fail on user input is checked before the run folder is touched.
    train_df, test_df = load_train(cfg.data, cfg.cv, cfg.seed), load_test(cfg.data)
    check_test_ids(test_df, load_sample_submission(cfg.data), cfg.data.id_column)
    folds = cfg.folds if cfg.folds is not None else list(range(cfg.cv.n_folds))
    run = RunFolder(cfg.run_dir)
    task = cfg.task(run)
    member = members.member_class(cfg.model.kind)(cfg.model, cfg.train, task)
    check_batch_size(member.batch_size, len(train_df), cfg.cv.n_folds)
    run.check_writable(cfg.to_dict())
    check_files_to_read(run, folds, cfg.overwrite)
    train_df = assign_folds(train_df, cfg.data, cfg.cv, cfg.folds_dir, member.is_main_process)
    teacher = teachers.load_teacher(cfg.train.distill, cfg.data, train_df, folds) if cfg.train.distill else None
    if cfg.train.init_from is not None:
        teachers.check_earlier_stage(RunFolder(cfg.train.init_from), cfg.data, train_df, folds)
    pseudo_label = cfg.data.pseudo_label
    pseudo = teachers.load_pseudo_labels(pseudo_label, cfg.data, train_df, member.separator) if pseudo_label else None
    outside = load_extra_train(cfg.data) if cfg.data.extra_train_files else train_df.iloc[:0]
    outside_texts = model_inputs(outside, cfg.data, member.separator)
    extra = ExtraRows(
        (pseudo.texts if pseudo else []) + outside_texts, pseudo, outside[cfg.data.target_columns].to_numpy()
    )
    member.print(f"{cfg.experiment}: {len(train_df)} rows, folds {folds} of {cfg.cv.n_folds}, {member.announce()}")
    if member.is_main_process:
        run.prepare(cfg.to_dict(), artifacts.describe_environment(folds, member.describe()))
        write_csv(train_df[[cfg.data.id_column, "fold"]], run.folds_file)
        member.save_assets(run.backbone_dir)
    member.wait_for_everyone()

    texts = model_inputs(train_df, cfg.data, member.separator)
    train_df["text_length"] = [len(text) for text in texts]
    finished = run.finished_folds()
    to_fit = [fold for fold in folds if fold not in finished]
    targets = train_df[cfg.data.target_columns].to_numpy()
    if to_fit:  # tokenizing or embedding every text is work only a fold to fit needs
        test_texts = model_inputs(test_df, cfg.data, member.separator)
        member.prepare(texts, test_texts, targets, len(to_fit), extra.texts)
    tracker = Tracker(cfg.tracking, cfg.experiment, cfg.output_dir, member.is_main_process)
    fold_of_row = train_df["fold"].to_numpy()

    def log_event(event: ValidationEvent) -> None:
        tracker.log(wandb_values(event, cfg.metric, cfg.data.target_columns), event.step)

    for fold in folds:
        if fold not in to_fit:
            member.print(f"fold {fold}: finished before, kept (overwrite=true trains every fold again)")
            if member.is_main_process:
                checkpoints.remove_all(run.fold_dir(fold))  # left by a stop between the fold's files and this
            continue
        valid_rows, train_rows = np.flatnonzero(fold_of_row == fold), np.flatnonzero(fold_of_row != fold)
        ids = train_df[cfg.data.id_column]
        fold_targets = teacher.targets(fold, targets, ids, train_rows) if teacher else targets
        with tracker.fold_run(fold, cfg.to_dict()):
            result = member.fit_fold(fold, train_rows, valid_rows, fold_targets, log_event, extra.of_fold(fold))
            tracker.summarize({f"best_val_{cfg.metric}": result.best_score, "best_step": result.best_step})
            if member.is_main_process:
                test_ids, train_ids = test_df[cfg.data.id_column], ids.iloc[train_rows]
                run.save_fold(result, cfg.data, cfg.scorer, train_df.iloc[valid_rows], test_ids, train_ids)
                checkpoints.remove_all(run.fold_dir(fold))
        member.print(f"fold {fold}: best val {cfg.metric} {result.best_score:.4f} at step {result.best_step}")
        member.wait_for_everyone()

    return finish_experiment(run, cfg, tracker) if member.is_main_process else None


def check_files_to_read(run: RunFolder, folds: list[int], overwrite: bool) -> None:
    """A damaged file this run would read (a finished fold's, or the checkpoint an unfinished fold resumes from) is
    reported before anything is written. With overwrite=true the folder is replaced and nothing of it is read."""
    if overwrite:
        return
    finished = run.finished_folds()
    for fold in folds:
        if fold in finished:
            run.check_fold(fold)
        else:
            checkpoints.check_latest(run.fold_dir(fold), fold)


def check_batch_size(batch_size: int | None, n_rows: int, n_folds: int) -> None:
    """A batch larger than a fold's training rows would make every epoch one short batch: a config mistake."""
    fold_rows = n_rows - -(-n_rows // n_folds)  # the training rows of the fold with the largest validation
    if batch_size is not None and batch_size > fold_rows:
        raise UserError(
            f"train.batch_size={batch_size} is larger than a fold's {fold_rows} training rows "
            f"({n_rows} rows, {n_folds} folds); lower the batch size"
        )


def finish_experiment(run: RunFolder, cfg: Config | None = None, tracker: Tracker | None = None) -> dict:
    """Merge the finished folds; once all are there, log the experiment's "cv" run. Prints the summary."""
    metrics = run.merge()
    cfg = cfg or run.load_config()
    tracker = tracker or Tracker(cfg.tracking, cfg.experiment, cfg.output_dir, is_main_process=True)
    if not metrics["folds_missing"]:
        files = {path.name: path for path in (run.oof_file, run.folds_file, run.test_predictions_file)}
        files["submission.csv"] = Path(metrics["submission"])
        tracker.log_cv(metrics, files, metrics["plots"], cfg.to_dict())
    print(summary_line(metrics))
    return metrics


def wandb_values(event: ValidationEvent, metric: str, targets: list[str]) -> dict:
    values = {
        "train/loss": event.train_loss,
        f"val/{metric}": event.val_score,
        "train/lr": event.lr,
        "train/samples_per_second": event.samples_per_second,
        "train/epoch": event.epoch,
    }
    if len(targets) > 1:
        values.update({f"val/{metric}_{t}": value for t, value in zip(targets, event.val_per_target, strict=True)})
    return {key: value for key, value in values.items() if value is not None}  # a one-shot fit has no loss or lr


def summary_line(metrics: dict) -> str:
    folds = ", ".join(f"{k}: {m['score']:.4f}" for k, m in metrics["folds"].items())
    cv = f"CV {metrics['metric']} {metrics['cv_score']:.4f} (folds {folds}); {metrics['train_seconds']:.0f} s training"
    if "cv_score_postprocessed" in metrics:
        cv += f"; post-processed (nested CV) {metrics['cv_score_postprocessed']:.4f}"
    if metrics["folds_missing"]:
        return cv + f"; folds {metrics['folds_missing']} still to run, then `python src/merge.py <run folder>`"
    return cv + f"; submission: {metrics['submission']}"
