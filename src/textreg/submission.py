"""Submission: predictions in the sample submission's format, checked before they are written."""

from __future__ import annotations

import numpy as np
import pandas as pd

from textreg.errors import UserError


def check_test_ids(test: pd.DataFrame, sample: pd.DataFrame, id_column: str) -> None:
    """The test file and the sample submission must hold the same ids (order may differ)."""
    test_ids, sample_ids = set(test[id_column]), set(sample[id_column])
    if test_ids != sample_ids:
        missing, extra = sorted(sample_ids - test_ids)[:3], sorted(test_ids - sample_ids)[:3]
        raise UserError(
            f"the test file and the sample submission hold different ids (in the sample only: {missing}, "
            f"in the test file only: {extra})"
        )


def make_submission(
    sample: pd.DataFrame, ids: pd.Series, preds: np.ndarray, id_column: str, target_columns: list[str]
) -> pd.DataFrame:
    """Predictions (rows in the order of `ids`) laid out as the sample submission: same ids, same order."""
    by_id = pd.DataFrame(np.asarray(preds).reshape(len(ids), -1), columns=target_columns, index=ids.to_numpy())
    if by_id.index.has_duplicates or set(by_id.index) != set(sample[id_column]):
        raise UserError("predicted ids do not match the sample submission's ids")
    submission = sample[[id_column]].copy()
    for col in sample.columns.drop(id_column):
        submission[col] = by_id.loc[sample[id_column], col].to_numpy()
    check_submission(submission, sample, id_column)
    return submission


def check_submission(submission: pd.DataFrame, sample: pd.DataFrame, id_column: str) -> None:
    if list(submission.columns) != list(sample.columns):
        raise UserError(f"submission columns {list(submission.columns)} != sample's {list(sample.columns)}")
    if not submission[id_column].equals(sample[id_column]):
        raise UserError("submission ids are not the sample submission's ids in the same order")
    if not np.isfinite(submission.drop(columns=id_column).to_numpy(dtype=np.float64)).all():
        raise UserError("submission holds a NaN or infinite prediction")
