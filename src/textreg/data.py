"""Data and folds: read and check the competition files, assign folds once and reuse them."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import GroupKFold, KFold, StratifiedKFold

from textreg.config import Config, CVConfig, DataConfig, UserError


def read_csv(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise UserError(f"data file not found: {path} (run `make data`, see README)")
    try:
        return pd.read_csv(path)
    except (UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise UserError(f"{path}: cannot be read as CSV: {err}") from err


def _require_columns(df: pd.DataFrame, columns: list[str], path: Path) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise UserError(f"{path}: missing column(s) {missing}; the file has {list(df.columns)}")


def _check_ids_and_texts(df: pd.DataFrame, data: DataConfig, path: Path) -> None:
    dup = df[data.id_column][df[data.id_column].duplicated()]
    if len(dup):
        raise UserError(f"{path}: duplicate id(s) in '{data.id_column}', e.g. {dup.iloc[0]!r}")
    texts = df[data.text_column]
    empty = ~texts.map(lambda t: isinstance(t, str) and bool(t.strip()))
    if empty.any():
        row = int(np.flatnonzero(empty.to_numpy())[0])
        raise UserError(f"{path}: empty or non-text '{data.text_column}' at row {row + 2} (line in the file)")


def load_train(cfg: Config) -> pd.DataFrame:
    data = cfg.data
    path = data.dir / data.train_file
    df = read_csv(path)
    extra = [cfg.cv.group_column] if cfg.cv.scheme == "group" else []
    _require_columns(df, [data.id_column, data.text_column, *data.target_columns, *extra], path)
    _check_ids_and_texts(df, data, path)
    for col in data.target_columns:
        values = pd.to_numeric(df[col], errors="coerce")
        bad = values.isna() | ~np.isfinite(values)
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise UserError(f"{path}: target '{col}' is missing or not a number at row {row + 2}")
        df[col] = values.astype("float64")
    if data.subset is not None and data.subset < len(df):
        df = df.sample(n=data.subset, random_state=cfg.seed).sort_index()
    return df.reset_index(drop=True)


def load_test(cfg: Config) -> pd.DataFrame:
    data = cfg.data
    path = data.dir / data.test_file
    df = read_csv(path)
    _require_columns(df, [data.id_column, data.text_column], path)
    _check_ids_and_texts(df, data, path)
    return df.reset_index(drop=True)


def load_sample_submission(cfg: Config) -> pd.DataFrame:
    path = cfg.data.dir / cfg.data.sample_submission_file
    df = read_csv(path)
    _require_columns(df, [cfg.data.id_column, *cfg.data.target_columns], path)
    return df


def make_folds(df: pd.DataFrame, cv: CVConfig, target_columns: list[str]) -> np.ndarray:
    """Fold number of every row. Stratification bins the first target into `n_bins` quantile bins."""
    n = len(df)
    if cv.n_folds > n:
        raise UserError(f"cv.n_folds={cv.n_folds} is larger than the {n} training rows")
    folds = np.full(n, -1, dtype=int)
    index = np.zeros(n)
    if cv.scheme == "stratified":
        if cv.n_bins * cv.n_folds > n:
            raise UserError(f"cv.n_bins={cv.n_bins} x cv.n_folds={cv.n_folds} is more than the {n} rows")
        bins = pd.qcut(df[target_columns[0]], q=cv.n_bins, labels=False, duplicates="drop")
        splitter = StratifiedKFold(cv.n_folds, shuffle=True, random_state=cv.seed)
        splits = splitter.split(index, bins)
    elif cv.scheme == "kfold":
        splits = KFold(cv.n_folds, shuffle=True, random_state=cv.seed).split(index)
    else:
        groups = df[cv.group_column]
        if groups.nunique() < cv.n_folds:
            raise UserError(f"cv.group_column '{cv.group_column}' has fewer groups than cv.n_folds")
        splits = GroupKFold(cv.n_folds, shuffle=True, random_state=cv.seed).split(index, groups=groups)
    for fold, (_, valid_idx) in enumerate(splits):
        folds[valid_idx] = fold
    return folds


def _folds_file(cfg: Config, ids: pd.Series) -> Path:
    """One file per fold scheme and set of rows, shared by every experiment that uses them."""
    cv = cfg.cv
    digest = hashlib.sha1("\n".join(map(str, ids)).encode()).hexdigest()[:10]
    group = f"-{cv.group_column}" if cv.scheme == "group" else ""
    bins = f"-bins{cv.n_bins}" if cv.scheme == "stratified" else ""
    name = f"{cfg.data.competition}-{cv.scheme}{group}-k{cv.n_folds}{bins}-seed{cv.seed}-{digest}.csv"
    return cfg.output_dir / "folds" / name


def assign_folds(df: pd.DataFrame, cfg: Config, is_main: bool = True) -> pd.DataFrame:
    """Add a `fold` column: read from the saved assignment when one exists, else made and saved."""
    ids = df[cfg.data.id_column]
    path = _folds_file(cfg, ids)
    if path.is_file():
        saved = pd.read_csv(path).set_index(cfg.data.id_column)["fold"]
        folds = saved.reindex(ids).to_numpy()
    else:
        folds = make_folds(df, cfg.cv, cfg.data.target_columns)
        if is_main:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            pd.DataFrame({cfg.data.id_column: ids, "fold": folds}).to_csv(tmp, index=False)
            tmp.replace(path)
    return df.assign(fold=folds.astype(int))
