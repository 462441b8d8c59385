"""Distillation: a teacher's fold models save their fitted predictions, a student fold learns from the teacher fold
that never saw it, and its CV stays honest."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import make_competition, train_in_process, write_config

import predict as predict_cli
import train
from textreg import classical, engine
from textreg.losses import training_loss

TFIDF = ("model.kind=tfidf_ridge", "cv.scheme=kfold")


def teacher_and_student_configs(tmp_path, data_dir, backbone, name: str = "run.yaml"):
    config = write_config(tmp_path / name, data_dir, backbone)
    teacher = tmp_path / "outputs" / "teacher"
    student = ("experiment=student", f"train.distill.teacher={teacher}", "train.distill.weight=0.5")
    return config, teacher, student


def test_fitted_predictions_are_the_fold_models_predictions_of_their_training_rows(make_config, competition, tmp_path):
    config = make_config()
    train_in_process(config, "experiment=teacher", "train.save_fitted=true")
    run_dir = tmp_path / "outputs" / "teacher"
    assert predict_cli.main([str(run_dir), "--input", str(competition / "train.csv")]) == 0
    again = pd.read_csv(run_dir / "predictions" / "train.csv").set_index("id")
    folds = pd.read_csv(run_dir / "folds.csv").set_index("id")["fold"]
    for k in sorted(folds.unique()):
        fitted = pd.read_csv(run_dir / f"fold{k}" / "fitted.csv").set_index("id")
        assert sorted(fitted.index) == sorted(folds.index[folds != k])  # the fold's training rows, no others
        np.testing.assert_allclose(fitted["target_pred"], again.loc[fitted.index, f"target_fold{k}"], atol=1e-5)


def test_a_student_fold_trains_on_the_blend_with_its_own_teacher_fold(tmp_path, competition, backbones, monkeypatch):
    config, teacher, student = teacher_and_student_configs(tmp_path, competition, backbones["bert"])
    train_in_process(config, "experiment=teacher", "train.save_fitted=true", *TFIDF)
    seen = []
    fit = classical.TfidfRidge.fit
    monkeypatch.setattr(classical.TfidfRidge, "fit", lambda self, x, y: seen.append(y) or fit(self, x, y))
    train_in_process(config, *student, *TFIDF)
    truth = pd.read_csv(competition / "train.csv").set_index("id")["target"]
    folds = pd.read_csv(teacher / "folds.csv")
    for k, targets in enumerate(seen):
        ids = folds["id"][folds["fold"] != k]  # training rows in the table's order, as the fold loop takes them
        fitted = pd.read_csv(teacher / f"fold{k}" / "fitted.csv").set_index("id").loc[ids, "target_pred"]
        np.testing.assert_allclose(targets[:, 0], 0.5 * truth.loc[ids] + 0.5 * fitted, atol=1e-9)
    # validation is on the truth: the student's OOF file keeps the true targets
    oof = pd.read_csv(tmp_path / "outputs" / "student" / "oof.csv").set_index("id")
    np.testing.assert_allclose(oof["target"], truth.loc[oof.index])


def test_the_students_cv_never_sees_its_validation_targets(tmp_path, backbones):
    """Two competitions that differ only in fold 0's targets. The teachers differ (their OOF predictions of the
    other folds too: that is the leak a student on OOF predictions would learn from), yet the students' fold 0,
    trained on what their teachers' fold 0 predicted, predicts its validation rows the same."""
    data_a = make_competition(tmp_path / "a")
    data_b = make_competition(tmp_path / "b")
    runs = {}
    for name, data in (("a", data_a), ("b", data_b)):
        config, teacher, student = teacher_and_student_configs(tmp_path / name, data, backbones["bert"])
        if name == "b":  # fold 0's rows get other targets; kfold folds do not depend on the targets
            train_in_process(config, "experiment=folds-only", *TFIDF)
            folds = pd.read_csv(tmp_path / name / "outputs" / "folds-only" / "folds.csv")
            table = pd.read_csv(data / "train.csv")
            in_fold0 = table["id"].isin(folds["id"][folds["fold"] == 0])
            table.loc[in_fold0, "target"] = np.random.default_rng(1).normal(0, 3, in_fold0.sum())
            table.to_csv(data / "train.csv", index=False)
        train_in_process(config, "experiment=teacher", "train.save_fitted=true", *TFIDF)
        train_in_process(config, *student, *TFIDF)
        runs[name] = tmp_path / name / "outputs"
    oof = {name: pd.read_csv(out / "teacher" / "oof.csv").set_index("id") for name, out in runs.items()}
    other_folds = oof["a"]["fold"] != 0
    assert not np.allclose(oof["a"]["target_pred"][other_folds], oof["b"].loc[oof["a"].index[other_folds]].target_pred)
    student = {name: pd.read_csv(out / "student" / "fold0" / "oof.csv").set_index("id") for name, out in runs.items()}
    np.testing.assert_allclose(student["a"]["target_pred"], student["b"].loc[student["a"].index, "target_pred"])


def test_a_transformer_student_trains_on_the_blend(tmp_path, competition, backbones, monkeypatch):
    config, teacher, student = teacher_and_student_configs(tmp_path, competition, backbones["bert"])
    train_in_process(config, "experiment=teacher", "train.save_fitted=true", *TFIDF)
    seen = []
    dataset = engine.TextDataset
    monkeypatch.setattr(
        engine, "TextDataset", lambda ids, rows, y, *a, **kw: seen.append((rows, y)) or dataset(ids, rows, y, *a, **kw)
    )
    train_in_process(config, *student, "cv.scheme=kfold", "folds=[1]")
    ((rows, targets),) = seen
    ids = pd.read_csv(teacher / "folds.csv")["id"].to_numpy()[rows]
    truth = pd.read_csv(competition / "train.csv").set_index("id").loc[ids, "target"]
    fitted = pd.read_csv(teacher / "fold1" / "fitted.csv").set_index("id").loc[ids, "target_pred"]
    np.testing.assert_allclose(targets[rows, 0], 0.5 * truth + 0.5 * fitted, atol=1e-6)


@pytest.mark.parametrize(
    "teacher_args, student_args, message",
    [
        ((), (), "train the teacher with train.save_fitted=true"),
        (("train.save_fitted=true", "cv.seed=1"), (), "was trained on other folds"),
        (("train.save_fitted=true", "folds=[0]"), (), "fold 1 is not finished"),
    ],
)
def test_a_teacher_that_cannot_teach_honestly_is_refused_before_anything_is_written(
    tmp_path, competition, backbones, capsys, teacher_args, student_args, message
):
    config, _, student = teacher_and_student_configs(tmp_path, competition, backbones["bert"])
    train_in_process(config, "experiment=teacher", *TFIDF, *teacher_args)
    assert train.main(["--config", str(config), *student, *TFIDF, *student_args]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "outputs" / "student").exists()


def unlabeled_rows(folder, n: int = 6):
    rows = pd.DataFrame(
        {"id": [f"un{i:03d}" for i in range(n)], "excerpt": [f"the cat sat {'river ' * i}" for i in range(n)]}
    )
    path = folder / "unlabeled.csv"
    rows.to_csv(path, index=False)
    return path


def test_pseudo_labelled_rows_train_each_fold_with_that_folds_teacher_and_weight(
    tmp_path, competition, backbones, monkeypatch
):
    config, teacher, _ = teacher_and_student_configs(tmp_path, competition, backbones["bert"])
    train_in_process(config, "experiment=teacher", *TFIDF)
    texts = unlabeled_rows(tmp_path)
    assert predict_cli.main([str(teacher), "--input", str(texts)]) == 0
    seen = []
    dataset = engine.TextDataset
    monkeypatch.setattr(engine, "TextDataset", lambda *args, **kw: seen.append(args) or dataset(*args, **kw))
    pseudo = f"data.pseudo_label={{teacher: {teacher}, texts: {texts}, weight: 0.3}}"
    train_in_process(config, "experiment=student", "cv.scheme=kfold", pseudo)
    scored = pd.read_csv(teacher / "predictions" / "unlabeled.csv")
    folds = pd.read_csv(teacher / "folds.csv")["fold"].to_numpy()
    n = len(folds)  # the labelled texts, then the pseudo-labelled ones, a window each
    for fold, (ids, rows, targets, weights) in enumerate(seen):
        assert len(ids) == n + 6 and set(rows[rows >= n]) == set(range(n, n + 6))
        assert not set(rows[rows < n]) & set(np.flatnonzero(folds == fold))  # no validation row is trained on
        np.testing.assert_allclose(targets[n:, 0], scored[f"target_fold{fold}"], atol=1e-6)
        assert (weights[:n] == 1).all() and np.allclose(weights[n:], 0.3)
    oof = pd.read_csv(tmp_path / "outputs" / "student" / "oof.csv")
    assert len(oof) == len(folds) and not oof["id"].str.startswith("un").any()  # validated on labelled rows only


def test_the_weighted_loss_is_the_weighted_mean_of_squared_errors():
    pred, target = torch.tensor([[1.0], [3.0]]), torch.tensor([[0.0], [0.0]])
    assert training_loss("mse", pred, target, None) == 5.0
    assert training_loss("mse", pred, target, torch.tensor([1.0, 1.0])) == 5.0
    assert training_loss("mse", pred, target, torch.tensor([1.0, 0.5])) == pytest.approx((1 + 0.5 * 9) / 1.5)


def test_pseudo_labels_without_their_scores_or_with_training_rows_are_refused(tmp_path, competition, backbones, capsys):
    config, teacher, _ = teacher_and_student_configs(tmp_path, competition, backbones["bert"])
    train_in_process(config, "experiment=teacher", *TFIDF)
    texts = unlabeled_rows(tmp_path)
    student = ["--config", str(config), "experiment=student", "cv.scheme=kfold"]
    pseudo = f"data.pseudo_label={{teacher: {teacher}, texts: {texts}}}"
    assert train.main([*student, pseudo]) == 2
    assert f"score the rows first: python src/predict.py {teacher} --input {texts}" in capsys.readouterr().err
    leaky = tmp_path / "leaky.csv"
    pd.read_csv(competition / "train.csv")[["id", "excerpt"]].head(3).to_csv(leaky, index=False)
    assert predict_cli.main([str(teacher), "--input", str(leaky)]) == 0
    assert train.main([*student, f"data.pseudo_label={{teacher: {teacher}, texts: {leaky}}}"]) == 2
    assert "holds training rows" in capsys.readouterr().err
    assert train.main([*student, pseudo, "model.kind=tfidf_ridge"]) == 2
    assert "model.kind=transformer" in capsys.readouterr().err
    assert not (tmp_path / "outputs" / "student").exists()
