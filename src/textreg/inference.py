"""Inference from a run folder alone: predict any file with the experiment's columns, fold by fold, through the
run's member kind (`textreg.members`). Works offline: everything a kind needs is in the run folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from textreg import members
from textreg.artifacts import RunFolder, fold_column
from textreg.data import load_test, model_inputs


def predict_file(run_dir: Path, input_path: Path) -> pd.DataFrame:
    """id, <target>_fold<k> for every fold, and <target>: their mean."""
    run = RunFolder(run_dir)
    cfg = run.require_finished()
    folds = list(range(cfg.cv.n_folds))
    df = load_test(cfg.data, input_path)
    task = cfg.task(run)
    kind = members.member_class(cfg.model.kind)
    per_fold = kind.predict_folds(cfg.model, cfg.train, task, lambda sep: model_inputs(df, cfg.data, sep), folds)
    targets = cfg.data.target_columns
    result = df[[cfg.data.id_column]].copy()
    for fold, values in per_fold.items():
        result[[fold_column(t, fold) for t in targets]] = values
    result[targets] = np.mean(list(per_fold.values()), axis=0)
    return result
