"""Post-processing: clip, round, ordinal thresholds fitted on OOF rows that never include the rows they score, and
the one application in every path that submits (a run, predict.py, an ensemble, its saved weights)."""

import json

import numpy as np
import pandas as pd
import pytest
from conftest import train_in_process

import ensemble as ensemble_cli
import predict as predict_cli
from textreg import blending, postprocess
from textreg.config import PostprocessConfig, load_config
from textreg.errors import UserError
from textreg.metrics import Scorer

QWK = Scorer("qwk", (1, 6))


def test_clip_and_round_to_the_allowed_scores():
    pred = np.array([[0.2], [2.26], [3.74], [9.0]])
    clipped = postprocess.apply(pred, PostprocessConfig(clip=True), (1, 5), None)
    np.testing.assert_allclose(clipped[:, 0], [1, 2.26, 3.74, 5])
    rounded = postprocess.apply(pred, PostprocessConfig(clip=True, round_to=0.5), (1, 5), None)
    np.testing.assert_allclose(rounded[:, 0], [1, 2.5, 3.5, 5])
    np.testing.assert_allclose(postprocess.labels(PostprocessConfig(round_to=0.5), (1, 3)), [1, 1.5, 2, 2.5, 3])
    with pytest.raises(UserError, match="postprocess.clip and postprocess.thresholds need data.score_range"):
        load_config("configs/debug.yaml", ["postprocess.thresholds=true"])


def test_thresholds_beat_rounding_on_predictions_squeezed_toward_the_mean():
    rng = np.random.default_rng(0)
    truth = rng.integers(1, 7, size=(600, 1)).astype(float)
    pred = 3.5 + 0.4 * (truth - 3.5) + rng.normal(0, 0.3, size=truth.shape)  # a regressor's shrunken scores
    section = PostprocessConfig(thresholds=True)
    thresholds = postprocess.fit(pred, truth, section, QWK)
    cut = postprocess.apply(pred, section, (1, 6), thresholds)
    assert set(np.unique(cut)) <= {1.0, 2.0, 3.0, 4.0, 5.0, 6.0}
    assert QWK.score(truth, cut) > QWK.score(truth, pred) + 0.05


def test_thresholds_never_saw_the_rows_they_score(monkeypatch):
    """Every value a fitted set of thresholds is applied to was absent from the rows it was fitted on: in the run's
    nested CV and in the ensemble's."""
    rng = np.random.default_rng(1)
    truth = rng.integers(1, 7, size=(200, 1)).astype(float)
    members = [truth + rng.normal(0, s, size=truth.shape) for s in (0.6, 0.9)]  # distinct values: rows are traceable
    folds = np.arange(200) % 4
    fitted_on, applied_to = [], []
    fit, apply = postprocess.fit, postprocess.apply

    def spy_fit(pred, truth, section, scorer):
        thresholds = fit(pred, truth, section, scorer)
        fitted_on.append((set(pred.ravel().round(9)), id(thresholds)))
        return thresholds

    def spy_apply(pred, section, score_range, thresholds):
        applied_to.append((set(pred.ravel().round(9)), id(thresholds)))
        return apply(pred, section, score_range, thresholds)

    monkeypatch.setattr(postprocess, "fit", spy_fit)
    monkeypatch.setattr(postprocess, "apply", spy_apply)
    section = PostprocessConfig(thresholds=True)
    postprocess.nested_oof(members[0], truth, folds, section, QWK)
    blending.nested_postprocessed("mean", [np.column_stack([m[:, 0] for m in members])], truth, folds, section, QWK)
    assert len(fitted_on) == len(applied_to) == 8
    for (seen, fitted_id), (scored, applied_id) in zip(fitted_on, applied_to, strict=True):
        assert fitted_id == applied_id and scored and not seen & scored


def integer_scores(competition):
    """The synthetic target as essay scores 1-6."""
    train = pd.read_csv(competition / "train.csv")
    train["target"] = np.clip(np.rint(train["target"] * 1.5 + 3.5), 1, 6)
    train.to_csv(competition / "train.csv", index=False)


def test_a_qwk_run_with_thresholds_submits_scores_through_every_path(make_config, competition, tmp_path, capsys):
    integer_scores(competition)
    keys = ["metric=qwk", "data.score_range=[1, 6]", "postprocess.thresholds=true"]
    config = make_config()
    train_in_process(config, *keys)
    train_in_process(config, *keys, "experiment=tfidf", "model.kind=tfidf_ridge")
    outputs, submissions, scores = tmp_path / "outputs", tmp_path / "submissions", set(range(1, 7))
    metrics = json.loads((outputs / "tiny" / "metrics.json").read_text())
    assert metrics["metric"] == "qwk" and -1 <= metrics["cv_score_postprocessed"] <= 1
    assert len(json.loads((outputs / "tiny" / "postprocess.json").read_text())["thresholds"][0]) == 5
    assert set(pd.read_csv(submissions / "tiny.csv")["target"]) <= scores
    oof = pd.read_csv(outputs / "tiny" / "oof.csv")
    assert not set(oof["target_pred"]) <= scores  # kept raw: the ensemble blends raw predictions

    assert predict_cli.main([str(outputs / "tiny"), "--input", str(competition / "test.csv")]) == 0
    predicted = pd.read_csv(outputs / "tiny" / "predictions" / "test.csv")
    assert set(predicted["target"]) <= scores and not set(predicted["target_fold0"]) <= scores

    args = ["--outputs", str(outputs), "--submissions", str(submissions), "--name", "blend"]
    assert ensemble_cli.main([str(outputs / "tiny"), str(outputs / "tfidf"), *args]) == 0
    assert "kept, post-processed" in capsys.readouterr().out
    report = json.loads((outputs / "ensembles" / "blend" / "weights.json").read_text())
    assert len(report["thresholds"][0]) == 5 and set(pd.read_csv(submissions / "blend.csv")["target"]) <= scores
    again = blending.predict_with_weights(outputs / "ensembles" / "blend" / "weights.json", competition / "test.csv")
    submitted = pd.read_csv(submissions / "blend.csv").set_index("id")["target"]
    np.testing.assert_array_equal(again.set_index("id")["target"].loc[submitted.index], submitted)
