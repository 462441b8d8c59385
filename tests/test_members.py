"""A member kind is one class and one `register` call: a toy kind, defined here alone, trains through the fold loop,
predicts from its run folder, and joins an ensemble."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import train_in_process

import ensemble as ensemble_cli
import predict as predict_cli
from textreg import members
from textreg.artifacts import RunFolder
from textreg.classical import ClassicalMember
from textreg.config import load_config
from textreg.errors import UserError


class LongerIsHarder(ClassicalMember):
    """Predicts each target from the number of words alone: a least-squares line fitted on the fold's rows."""

    uses_backbone = False

    @classmethod
    def inputs(cls, model, train, backbone, texts):
        return np.array([[len(text.split()), 1.0] for text in texts])

    def fit(self, inputs, targets):
        coef, *_ = np.linalg.lstsq(inputs, targets, rcond=None)
        return {"coef": torch.from_numpy(coef)}, {}

    @classmethod
    def predict(cls, state, extra, inputs):
        return inputs @ state["coef"].numpy()


@pytest.fixture
def registered(monkeypatch):
    monkeypatch.setattr(members, "KINDS", dict(members.KINDS))  # the registry as it was, after the test
    members.register("words", LongerIsHarder)


def test_a_kind_registered_in_a_test_file_trains_predicts_and_blends(registered, make_config, competition, tmp_path):
    config = make_config()
    train_in_process(config, "experiment=words", "model.kind=words")
    train_in_process(config, "experiment=tfidf", "model.kind=tfidf_ridge")
    outputs = tmp_path / "outputs"
    run = RunFolder(outputs / "words")
    cfg = run.require_finished()

    # trained fold by fold: each fold's line is fitted on its own training rows, so the folds' lines differ
    lines = [run.fold_weights(fold)["coef"].numpy() for fold in range(cfg.cv.n_folds)]
    assert not np.allclose(lines[0], lines[1])
    oof = pd.read_csv(run.oof_file)
    words = oof["id"].map(pd.read_csv(competition / "train.csv").set_index("id")["excerpt"].str.split().str.len())
    for fold, line in enumerate(lines):
        rows = oof["fold"] == fold
        np.testing.assert_allclose(oof.loc[rows, "target_pred"], words[rows] * line[0, 0] + line[1, 0], rtol=1e-9)

    # predicted again from the run folder alone: the same numbers as at training time
    assert predict_cli.main([str(run.path), "--input", str(competition / "test.csv")]) == 0
    again = pd.read_csv(run.predictions_file(competition / "test.csv")).set_index("id")
    at_fit = pd.read_csv(run.test_predictions_file).set_index("id").loc[again.index]
    np.testing.assert_allclose(again.to_numpy(), at_fit.to_numpy(), atol=1e-9)

    # and blended with another kind, its weight fitted on the OOF predictions
    args = ["--outputs", str(outputs), "--submissions", str(tmp_path / "submissions"), "--name", "blend"]
    assert ensemble_cli.main([str(run.path), str(outputs / "tfidf"), *args]) == 0
    blend = json.loads((outputs / "ensembles" / "blend" / "weights.json").read_text())
    assert set(blend["blends"]["target"]["weights"]) == {"words", "tfidf"}
    assert blend["members"]["words"] == pytest.approx(RunFolder(run.path).metrics()["cv_score"])


def test_an_unregistered_kind_is_refused_naming_the_registered_ones(make_config):
    with pytest.raises(UserError, match="unknown member kind 'words'; registered: transformer, tfidf_ridge"):
        load_config(make_config(), ["model.kind=words"])


def test_pseudo_labels_are_refused_for_a_kind_that_cannot_learn_them(registered, make_config, tmp_path):
    pseudo = [f"data.pseudo_label.teacher={tmp_path}", f"data.pseudo_label.texts={tmp_path / 'x.csv'}"]
    with pytest.raises(UserError, match="data.pseudo_label trains model.kind=transformer only"):
        load_config(make_config(), ["model.kind=words", *pseudo])
