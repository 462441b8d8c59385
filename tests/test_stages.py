"""Staged training (`train.init_from`): each fold starts from the earlier run's same fold, and only from a run of
the same split."""

import numpy as np
import pandas as pd
import pytest
from conftest import train_in_process

import train
from textreg import engine
from textreg.config import load_config
from textreg.errors import UserError


def test_each_fold_starts_from_its_own_fold_of_the_earlier_run(make_config, tmp_path):
    config = make_config()
    train_in_process(config)
    first = tmp_path / "outputs" / "tiny"
    # A learning rate of almost zero: the second stage keeps what it started from, fold by fold.
    train_in_process(config, "experiment=stage2", f"train.init_from={first}", "train.lr=1e-12")
    before = pd.read_csv(first / "oof.csv").set_index("id").sort_index()
    after = pd.read_csv(tmp_path / "outputs" / "stage2" / "oof.csv").set_index("id").sort_index()
    assert (before["fold"] == after["fold"]).all()
    np.testing.assert_allclose(after["target_pred"], before["target_pred"], atol=1e-4)
    fresh = pd.read_csv(first / "fold1" / "test.csv")["target"]
    assert not np.allclose(pd.read_csv(first / "fold0" / "test.csv")["target"], fresh, atol=1e-3)  # folds differ


def test_an_earlier_run_of_another_split_or_unfinished_folds_is_refused(make_config, tmp_path, capsys):
    config = make_config()
    train_in_process(config, "folds=[0]")
    first = tmp_path / "outputs" / "tiny"
    assert train.main(["--config", str(config), "experiment=b", f"train.init_from={first}", "cv.seed=1"]) == 2
    assert "was trained on other folds" in capsys.readouterr().err
    assert train.main(["--config", str(config), "experiment=c", f"train.init_from={first}"]) == 2
    assert "has not finished folds [1]; a fold starts from its own fold" in capsys.readouterr().err
    assert not (tmp_path / "outputs" / "b").exists() and not (tmp_path / "outputs" / "c").exists()


def test_extra_training_files_train_every_fold_and_are_never_validated(make_config, competition, tmp_path, monkeypatch):
    outside = pd.DataFrame(
        {"id": [f"out{i}" for i in range(5)], "excerpt": ["the cat sat"] * 5, "target": np.arange(5.0)}
    )
    outside.to_csv(competition / "outside.csv", index=False)
    seen = []
    dataset = engine.TextDataset
    monkeypatch.setattr(engine, "TextDataset", lambda *args, **kw: seen.append(args) or dataset(*args, **kw))
    train_in_process(make_config(), "data.extra_train_files=[outside.csv]")
    n = len(pd.read_csv(competition / "train.csv"))
    assert len(seen) == 2  # a training set per fold
    for ids, rows, targets, weights in seen:
        assert len(ids) == n + 5 and set(range(n, n + 5)) <= set(rows)  # the outside rows are in every fold's
        np.testing.assert_allclose(targets[n:, 0], outside["target"])
        assert (weights == 1).all()
    oof = pd.read_csv(tmp_path / "outputs" / "tiny" / "oof.csv")
    assert len(oof) == n and not oof["id"].str.startswith("out").any()  # validated on the competition's rows only
    with pytest.raises(UserError, match="data.extra_train_files trains model.kind=transformer only"):
        load_config(make_config(), ["data.extra_train_files=[outside.csv]", "model.kind=tfidf_ridge"])
