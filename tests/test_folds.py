import numpy as np
import pandas as pd
import pytest

from textreg.config import CVConfig, load_config
from textreg.data import assign_folds, make_folds
from textreg.errors import UserError


@pytest.fixture
def table():
    rng = np.random.default_rng(1)
    return pd.DataFrame(
        {"id": [f"r{i}" for i in range(500)], "target": rng.normal(size=500), "group": rng.integers(0, 40, 500)}
    )


def test_stratified_folds_cover_every_row_once_and_balance_the_target(table):
    folds = make_folds(table, CVConfig(scheme="stratified", n_folds=5, n_bins=10), ["target"])
    assert sorted(np.bincount(folds)) == [100] * 5
    bins = pd.qcut(table["target"], 10, labels=False)
    per_fold_bins = pd.crosstab(folds, bins).to_numpy()
    assert per_fold_bins.max() - per_fold_bins.min() <= 1  # each bin split evenly over the folds


def test_plain_kfold_is_less_balanced_than_stratified(table):
    bins = pd.qcut(table["target"], 10, labels=False)
    spread = {
        scheme: pd.crosstab(make_folds(table, CVConfig(scheme=scheme), ["target"]), bins).to_numpy().std()
        for scheme in ("stratified", "kfold")
    }
    assert spread["stratified"] < spread["kfold"]


def test_group_folds_never_split_a_group(table):
    folds = make_folds(table, CVConfig(scheme="group", group_column="group"), ["target"])
    assert (table.assign(fold=folds).groupby("group")["fold"].nunique() == 1).all()
    assert set(folds) == set(range(5))


@pytest.mark.parametrize("scheme", ["stratified", "kfold", "group"])
def test_folds_are_determined_by_the_seed(table, scheme):
    def folds(seed):
        return make_folds(table, CVConfig(scheme=scheme, group_column="group", seed=seed), ["target"])

    assert (folds(3) == folds(3)).all()
    assert (folds(3) != folds(4)).any()


def test_impossible_fold_settings_are_refused(table):
    with pytest.raises(UserError, match="n_bins=200 x cv.n_folds=5 is more than the 500 rows"):
        make_folds(table, CVConfig(n_bins=200), ["target"])
    with pytest.raises(UserError, match="n_folds=5 is larger than the 3 training rows"):
        make_folds(table.head(3), CVConfig(), ["target"])


def test_fold_assignment_is_saved_and_reused(table, tmp_path):
    cfg = load_config("configs/default.yaml", [f"output_dir={tmp_path}"])
    first = assign_folds(table, cfg.data, cfg.cv, cfg.folds_dir)
    saved = list((tmp_path / "folds").glob("*.csv"))
    assert len(saved) == 1
    # A hand-edited assignment is what later runs get: the file, not a recomputation, is the truth.
    edited = pd.read_csv(saved[0]).assign(fold=lambda d: (d["fold"] + 1) % 5)
    edited.to_csv(saved[0], index=False)
    again = assign_folds(table, cfg.data, cfg.cv, cfg.folds_dir)
    assert ((again["fold"] - first["fold"]) % 5 == 1).all()
    # Another fold scheme gets its own file.
    other = load_config("configs/default.yaml", [f"output_dir={tmp_path}", "cv.seed=7"])
    assign_folds(table, other.data, other.cv, other.folds_dir)
    assert len(list((tmp_path / "folds").glob("*.csv"))) == 2


def test_stratified_group_folds_keep_groups_whole_and_balance_the_chosen_column(table):
    table = table.assign(other=np.random.default_rng(2).normal(size=len(table)))
    cv = CVConfig(scheme="stratified_group", group_column="group", stratify_column="other", n_bins=5)
    folds = make_folds(table, cv, ["target"])
    assert (table.assign(fold=folds).groupby("group")["fold"].nunique() == 1).all()
    assert set(folds) == set(range(5))
    # Stratified on `other`, not on the target: the folds differ from those stratified on the target.
    on_target = make_folds(table, CVConfig(scheme="stratified_group", group_column="group", n_bins=5), ["target"])
    assert (folds != on_target).any()
