"""Distillation: a student trained on a blend of the true targets and a teacher's predictions, cross-validated
honestly.

The student's fold k learns from the teacher's fold-k model, the one model of the teacher that never saw fold k:
its predictions of the fold's own training rows (`fold<k>/fitted.csv`, written with `train.save_fitted=true`).
The teacher's out-of-fold predictions would leak: the OOF value of a row of fold j comes from the teacher's fold-j
model, which trained on fold k's texts and targets, so a student validated on fold k would have learnt from them.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from textreg import artifacts
from textreg.config import Config, DistillConfig
from textreg.data import read_csv
from textreg.errors import UserError


class Teacher:
    """The training targets of each student fold: (1 - weight) * truth + weight * the teacher fold's prediction."""

    def __init__(self, distill: DistillConfig, fitted: dict[int, pd.DataFrame]) -> None:
        self.weight = distill.weight
        self.fitted = fitted  # fold -> the teacher fold's predictions, indexed by id

    def targets(self, fold: int, targets: np.ndarray, ids: pd.Series, train_rows: np.ndarray) -> np.ndarray:
        """`targets` with the fold's training rows blended; other rows (the validation fold) keep their truth."""
        predicted = self.fitted[fold].reindex(ids.iloc[train_rows]).to_numpy()
        blended = targets.astype(np.float64).copy()
        blended[train_rows] = (1 - self.weight) * blended[train_rows] + self.weight * predicted
        return blended


def load_teacher(cfg: Config, train_df: pd.DataFrame, folds: list[int]) -> Teacher:
    """The teacher of `cfg.train.distill`, checked against the student: same targets, same fold of every row, and
    for each fold to train, a finished teacher fold with its fitted predictions of every training row."""
    distill = cfg.train.distill
    assert distill is not None
    teacher_cfg, run_dir = artifacts.open_run(distill.teacher), distill.teacher
    id_col, targets = cfg.data.id_column, cfg.data.target_columns
    if teacher_cfg.data.target_columns != targets:
        raise UserError(f"{run_dir} predicts {teacher_cfg.data.target_columns}, this run {targets}")
    teacher_folds = read_csv(run_dir / "folds.csv").set_index(id_col)["fold"]
    student_folds = train_df.set_index(id_col)["fold"]
    if not teacher_folds.sort_index().equals(student_folds.sort_index()):
        raise UserError(
            f"{run_dir} was trained on other folds (its folds.csv differs from this run's): a teacher's fold k must "
            "never have seen the student's fold k; train the teacher with this run's data and cv settings"
        )
    fitted = {}
    for fold in folds:
        path = run_dir / f"fold{fold}" / "fitted.csv"
        if fold not in artifacts.finished_folds(run_dir):
            raise UserError(f"{run_dir}: fold {fold} is not finished; train it first (folds=[{fold}])")
        if not path.is_file():
            raise UserError(f"{path} is missing: train the teacher with train.save_fitted=true")
        table = read_csv(path).set_index(id_col)[[f"{t}_pred" for t in targets]]
        expected = student_folds.index[student_folds != fold]
        if table.index.sort_values().tolist() != expected.sort_values().tolist():
            raise UserError(f"{path} does not hold exactly the fold's training rows; train the teacher fold again")
        fitted[fold] = table
    return Teacher(distill, fitted)
