"""Learning from a teacher run, cross-validated honestly: distillation (`train.distill`) and pseudo-labels
(`data.pseudo_label`).

The student's fold k learns from the teacher's fold-k model alone, the one model of the teacher that never saw
fold k: for distillation, its predictions of the fold's own training rows (`fold<k>/fitted.csv`, written with
`train.save_fitted=true`); for pseudo-labels, its column `<target>_fold<k>` of `src/predict.py`'s predictions of
the unlabeled rows. The teacher's out-of-fold predictions, or its mean over folds, would leak: the teacher's
fold-j model trained on fold k's texts and targets, so a student validated on fold k would have learnt from them.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from textreg.artifacts import RunFolder, fold_column
from textreg.config import DataConfig, DistillConfig, PseudoLabelConfig
from textreg.data import load_test, model_inputs, read_csv
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


def load_teacher(distill: DistillConfig, data: DataConfig, train_df: pd.DataFrame, folds: list[int]) -> Teacher:
    """The teacher of `train.distill`, checked against the student: same targets, same fold of every row, and for
    each fold to train, a finished teacher fold with its fitted predictions of every training row."""
    run, id_col, targets = RunFolder(distill.teacher), data.id_column, data.target_columns
    student_folds = check_teacher(run, data, train_df)
    fitted, finished = {}, run.finished_folds()
    for fold in folds:
        path = run.fold_file(fold, "fitted.csv")
        if fold not in finished:
            raise UserError(f"{run}: fold {fold} is not finished; train it first (folds=[{fold}])")
        if not path.is_file():
            raise UserError(f"{path} is missing: train the teacher with train.save_fitted=true")
        table = read_csv(path).set_index(id_col)[[f"{t}_pred" for t in targets]]
        if table.index.sort_values().tolist() != student_folds.index[student_folds != fold].sort_values().tolist():
            raise UserError(f"{path} does not hold exactly the fold's training rows; train the teacher fold again")
        fitted[fold] = table
    return Teacher(distill, fitted)


def check_teacher(run: RunFolder, data: DataConfig, train_df: pd.DataFrame) -> pd.Series:
    """A teacher run of the same targets and of the same fold for every row; returns the student's folds by id."""
    teacher_cfg, id_col = run.config(), data.id_column
    if teacher_cfg.data.target_columns != data.target_columns:
        raise UserError(f"{run} predicts {teacher_cfg.data.target_columns}, this run {data.target_columns}")
    teacher_folds = read_csv(run.folds_file).set_index(id_col)["fold"]
    student_folds = train_df.set_index(id_col)["fold"]
    if not teacher_folds.sort_index().equals(student_folds.sort_index()):
        raise UserError(
            f"{run} was trained on other folds (its folds.csv differs from this run's): its fold k, which this run's "
            "fold k learns from, must never have seen fold k's rows; train it with this run's data and cv settings"
        )
    return student_folds


def check_earlier_stage(run: RunFolder, data: DataConfig, train_df: pd.DataFrame, folds: list[int]) -> None:
    """`train.init_from`: a run of the same targets and folds whose every fold to train is finished."""
    check_teacher(run, data, train_df)
    if missing := sorted(set(folds) - set(run.finished_folds())):
        raise UserError(f"train.init_from: {run} has not finished folds {missing}; a fold starts from its own fold")


class PseudoLabels:
    """Unlabeled rows and, for each student fold, the teacher fold's predictions of them."""

    def __init__(self, table: pd.DataFrame, texts: list[str], targets: list[str], weight: float) -> None:
        self.table, self.texts, self.target_columns, self.weight = table, texts, targets, weight

    def targets(self, fold: int) -> np.ndarray:
        return self.table[[fold_column(t, fold) for t in self.target_columns]].to_numpy(dtype=np.float64)


def load_pseudo_labels(
    pseudo: PseudoLabelConfig, data: DataConfig, train_df: pd.DataFrame, separator: str
) -> PseudoLabels:
    """The rows of `data.pseudo_label.texts` with the teacher's per-fold predictions of them, checked: same folds
    as this run, a prediction of every row by every fold, and no row that is also a training row."""
    teacher = RunFolder(pseudo.teacher)
    folds = check_teacher(teacher, data, train_df)  # the same fold of every row as the teacher's
    id_col, targets = data.id_column, data.target_columns
    rows = load_test(data, pseudo.texts)
    path = teacher.predictions_file(pseudo.texts)
    if not path.is_file():
        raise UserError(
            f"{path} is missing: score the rows first: python src/predict.py {pseudo.teacher} --input {pseudo.texts}"
        )
    predicted = read_csv(path).set_index(id_col)
    columns = [fold_column(t, k) for k in sorted(folds.unique()) for t in targets]
    same_rows = predicted.index.astype(str).tolist() == rows[id_col].astype(str).tolist()
    if not set(columns) <= set(predicted.columns) or not same_rows:
        raise UserError(f"{path} does not hold every fold's prediction of every row of {pseudo.texts}; predict again")
    if rows[id_col].astype(str).isin(train_df[id_col].astype(str)).any():
        raise UserError(f"{pseudo.texts} holds training rows (ids of {data.train_file}): unlabeled rows only")
    texts = model_inputs(rows, data, separator)
    return PseudoLabels(predicted[columns].reset_index(drop=True), texts, targets, pseudo.weight)
