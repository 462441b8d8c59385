"""Data and folds: read and check the competition files, assign folds once and reuse them."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path
from string import Formatter

import numpy as np
import pandas as pd

from textreg.config import CVConfig, DataConfig
from textreg.errors import UserError
from textreg.files import write_csv


def read_csv(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise UserError(f"data file not found: {path} (run `make data`, see README)")
    try:
        df = pd.read_csv(path)
        header = pd.read_csv(path, header=None, nrows=1).iloc[0].tolist()  # pandas renames a repeated name
    except (UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise UserError(f"{path}: cannot be read as CSV: {err}") from err
    repeated = sorted({str(name) for name in header if header.count(name) > 1})
    if repeated:
        raise UserError(f"{path}: column name(s) {repeated} appear more than once in the header")
    if df.empty:
        raise UserError(f"{path}: holds no rows, only the header")
    return df


def _require_columns(df: pd.DataFrame, columns: list[str], path: Path) -> None:
    missing = [c for c in dict.fromkeys(columns) if c not in df.columns]
    if missing:
        raise UserError(f"{path}: missing column(s) {missing}; the file has {list(df.columns)}")


def text_fields(data: DataConfig) -> list[str]:
    """The columns the model input is made of."""
    if data.text_column is not None:
        return [data.text_column]
    return [name for _, name, _, _ in Formatter().parse(data.text_template) if name and name != "sep"]


def _join(df: pd.DataFrame, data: DataConfig, split: str) -> pd.DataFrame:
    """Left-join the extra tables; every row must find its key."""
    for join in data.joins:
        path = data.dir / (join.test_file if split == "test" and join.test_file else join.file)
        table = read_csv(path)
        _require_columns(table, [join.key], path)
        if table[join.key].duplicated().any():
            raise UserError(f"{path}: key '{join.key}' is not unique")
        missing = set(df[join.key]) - set(table[join.key])
        if missing:
            raise UserError(f"{path}: no row for {join.key} {sorted(missing)[:3]}")
        df = df.merge(table, on=join.key, how="left", suffixes=("", f"_{path.stem}"))
    return df


def _load(data: DataConfig, split: str, path: Path, required: list[str]) -> pd.DataFrame:
    df = read_csv(path)
    _require_columns(df, [data.id_column, *(j.key for j in data.joins), *required], path)
    dup = df[data.id_column][df[data.id_column].duplicated()]
    if len(dup):
        raise UserError(f"{path}: duplicate id(s) in '{data.id_column}', e.g. {dup.iloc[0]!r}")
    df = _join(df, data, split)
    fields = text_fields(data)
    _require_columns(df, fields, path)
    empty = ~df[fields].map(lambda t: isinstance(t, str) and bool(t.strip())).all(axis=1)
    if empty.any():
        lines = (np.flatnonzero(empty.to_numpy()) + 2).tolist()  # the line in the file: after the header, from 1
        if split == "train":
            raise UserError(f"{path}: empty or non-text {fields} at row {lines[0]} (line in the file)")
        # A submission needs every id, and a hidden test set may hold an empty essay: predict it from what is there.
        shown = ", ".join(map(str, lines[:20])) + (f" and {len(lines) - 20} more" if len(lines) > 20 else "")
        print(
            f"warning: {path}: empty or non-text {fields} at rows {shown} (lines in the file); predicted from "
            "the text that is there",
            file=sys.stderr,
        )
        df[fields] = df[fields].map(lambda t: "" if pd.isna(t) else str(t))
    return df


def load_train(data: DataConfig, cv: CVConfig, seed: int) -> pd.DataFrame:
    """The training file, checked; `data.subset` rows of it drawn by `seed`."""
    path = data.dir / data.train_file
    extra = [c for c in (cv.group_column, cv.stratify_column) if c]
    df = _with_targets(_load(data, "train", path, [*data.target_columns, *extra]), data, path)
    if data.subset is not None and data.subset < len(df):
        df = df.sample(n=data.subset, random_state=seed).sort_index()
    return df.reset_index(drop=True)


def _with_targets(df: pd.DataFrame, data: DataConfig, path: Path) -> pd.DataFrame:
    """The targets as floats, every one a number."""
    for col in data.target_columns:
        values = pd.to_numeric(df[col], errors="coerce")
        bad = values.isna() | ~np.isfinite(values)
        if bad.any():
            raise UserError(f"{path}: target '{col}' is missing or not a number at row {bad.to_numpy().argmax() + 2}")
        df[col] = values.astype("float64")
    return df


def load_extra_train(data: DataConfig) -> pd.DataFrame:
    """The rows of `data.extra_train_files`, checked as the training file is; they train every fold."""
    frames = [
        _with_targets(_load(data, "train", data.dir / name, data.target_columns), data, data.dir / name)
        for name in data.extra_train_files
    ]
    return pd.concat(frames, ignore_index=True)


def load_test(data: DataConfig, path: Path | None = None) -> pd.DataFrame:
    """The competition's test file, or any file with the same columns (`path`)."""
    return _load(data, "test", path or data.dir / data.test_file, []).reset_index(drop=True)


def competition_texts(data: DataConfig, sep: str) -> list[str]:
    """The model input of every training and test row, built and checked as training builds it; no targets
    needed (masked-LM pretraining reads the texts alone)."""
    files = {"train": data.train_file, "test": data.test_file}
    frames = [_load(data, split, data.dir / file, []) for split, file in files.items()]
    return [text for df in frames for text in model_inputs(df, data, sep)]


def model_inputs(df: pd.DataFrame, data: DataConfig, sep: str) -> list[str]:
    """The text the model reads: one column, or the template filled from each row ({sep}: the separator)."""
    if data.text_column is not None:
        return df[data.text_column].tolist()
    return [data.text_template.format_map({**row, "sep": sep}) for row in df.to_dict("records")]


def load_sample_submission(data: DataConfig) -> pd.DataFrame:
    path = data.dir / data.sample_submission_file
    df = read_csv(path)
    _require_columns(df, [data.id_column, *data.target_columns], path)
    return df


def make_folds(df: pd.DataFrame, cv: CVConfig, target_columns: list[str]) -> np.ndarray:
    """Fold number of every row. Stratified schemes bin the stratification column into `n_bins` quantiles."""
    # Imported here: over a second of start-up, and a run needs it only once, before the fold file exists.
    from sklearn.model_selection import GroupKFold, KFold, StratifiedGroupKFold, StratifiedKFold

    n = len(df)
    if cv.n_folds > n:
        raise UserError(f"cv.n_folds={cv.n_folds} is larger than the {n} training rows")
    groups = df[cv.group_column] if cv.group_column else None
    if groups is not None and groups.nunique() < cv.n_folds:
        raise UserError(f"cv.group_column '{cv.group_column}' has fewer groups than cv.n_folds={cv.n_folds}")
    bins = None
    if cv.scheme.startswith("stratified"):
        if cv.n_bins * cv.n_folds > n:
            raise UserError(f"cv.n_bins={cv.n_bins} x cv.n_folds={cv.n_folds} is more than the {n} rows")
        bins = pd.qcut(df[cv.stratify_column or target_columns[0]], q=cv.n_bins, labels=False, duplicates="drop")
    splitters = dict(stratified=StratifiedKFold, kfold=KFold, group=GroupKFold, stratified_group=StratifiedGroupKFold)
    splitter = splitters[cv.scheme](cv.n_folds, shuffle=True, random_state=cv.seed)
    # groups for the group schemes only: the others ignore them, and sklearn warns when handed them
    splits = splitter.split(np.zeros(n), bins, groups=groups if "group" in cv.scheme else None)
    folds = np.full(n, -1, dtype=int)
    for fold, (_, valid_idx) in enumerate(splits):
        folds[valid_idx] = fold
    return folds


def _folds_file(competition: str, cv: CVConfig, ids: pd.Series, folder: Path) -> Path:
    """One file per fold scheme and set of rows, shared by every experiment that uses them."""
    digest = hashlib.sha1("\n".join(map(str, ids)).encode()).hexdigest()[:10]
    group = f"-{cv.group_column}" if "group" in cv.scheme else ""
    bins = f"-{cv.stratify_column or 'target0'}-bins{cv.n_bins}" if cv.scheme.startswith("stratified") else ""
    return folder / f"{competition}-{cv.scheme}{group}-k{cv.n_folds}{bins}-seed{cv.seed}-{digest}.csv"


def assign_folds(df: pd.DataFrame, data: DataConfig, cv: CVConfig, folder: Path, is_main: bool = True) -> pd.DataFrame:
    """Add a `fold` column: read from the saved assignment in `folder` when one exists, else made and saved."""
    ids = df[data.id_column]
    path = _folds_file(data.competition, cv, ids, folder)
    if path.is_file():
        folds = pd.read_csv(path).set_index(data.id_column)["fold"].reindex(ids).to_numpy()
    else:
        folds = make_folds(df, cv, data.target_columns)
        if is_main:
            write_csv(pd.DataFrame({data.id_column: ids, "fold": folds}), path)
    return df.assign(fold=folds.astype(int))
