"""Ensembles: methods recover known weights, nested CV ranks them, members are checked, saved weights reproduce."""

import json
import re
import shutil
from pathlib import Path

import blend_oof
import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import train_in_process, write_config
from fake_wandb import fake_wandb_fixture  # noqa: F401 (the fake_wandb fixture)

import ensemble as ensemble_cli
import predict as predict_cli
from textreg import blending
from textreg.blending import METHODS, default_name, nested_oof
from textreg.errors import UserError
from textreg.submission import check_submission, make_submission


@pytest.fixture
def members():
    """Three members of known quality: noise sd 0.1, 0.3, and one that is only noise around the mean."""
    rng = np.random.default_rng(0)
    y = rng.normal(size=3000)
    x = np.column_stack([y + rng.normal(0, 0.1, 3000), y + rng.normal(0, 0.3, 3000), rng.normal(0, 1, 3000)])
    return x, y, np.arange(3000) % 5


def test_weighting_methods_find_the_inverse_variance_weights(members):
    x, y, _ = members
    best = np.array([1 / 0.1**2, 1 / 0.3**2, 0]) / (1 / 0.1**2 + 1 / 0.3**2)  # [0.9, 0.1, 0]
    for method in ("nonnegative", "hill_climbing", "ridge"):
        weights, intercept = METHODS[method](x, y)
        np.testing.assert_allclose(weights, best, atol=0.04, err_msg=method)
        assert abs(intercept) < 0.02
    weights, _ = METHODS["nonnegative"](x, y)
    assert (weights >= 0).all() and weights.sum() == pytest.approx(1)


def test_nested_cv_ranks_the_methods(members):
    x, y, folds = members
    rmse = {m: np.sqrt(np.mean((nested_oof(m, x, y, folds) - y) ** 2)) for m in METHODS}
    assert rmse["nonnegative"] < rmse["mean"] and rmse["hill_climbing"] < rmse["mean"]
    assert rmse["nonnegative"] == pytest.approx(np.sqrt(1 / (1 / 0.1**2 + 1 / 0.3**2)), rel=0.05)
    # Scored on held-out folds: never better than the weights fitted on all rows.
    w, b = METHODS["nonnegative"](x, y)
    assert rmse["nonnegative"] >= np.sqrt(np.mean((x @ w + b - y) ** 2))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: s.iloc[1:], "predicted ids do not match"),
        (lambda s: pd.concat([s, s.iloc[:1].assign(id="extra")]), "predicted ids do not match"),
        (lambda s: s.assign(target=[np.nan] + [0.0] * (len(s) - 1)), "NaN or infinite"),
    ],
    ids=["missing id", "extra id", "NaN"],
)
def test_a_wrong_submission_is_refused(change, message):
    sample = pd.DataFrame({"id": ["a", "b", "c"], "target": 0.0})
    predictions = change(sample.assign(target=[1.0, 2.0, 3.0]))
    with pytest.raises(UserError, match=message):
        make_submission(sample, predictions["id"], predictions[["target"]].to_numpy(), "id", ["target"])


def test_a_submission_in_another_order_than_the_sample_is_refused():
    sample = pd.DataFrame({"id": ["a", "b", "c"], "target": 0.0})
    with pytest.raises(UserError, match="not the sample submission's ids in the same order"):
        check_submission(pd.DataFrame({"id": ["b", "a", "c"], "target": 1.0}), sample, "id")


def test_a_reordered_submission_is_put_in_the_sample_order():
    sample = pd.DataFrame({"id": ["a", "b", "c"], "target": 0.0})
    sub = make_submission(sample, pd.Series(["c", "a", "b"]), np.array([3.0, 1.0, 2.0]), "id", ["target"])
    assert sub["id"].tolist() == ["a", "b", "c"] and sub["target"].tolist() == [1.0, 2.0, 3.0]


def test_the_default_name_of_many_members_stays_short_and_tells_member_lists_apart():
    few = [Path("outputs/minilm"), Path("outputs/tfidf")]
    assert default_name(few) == "minilm+tfidf"
    many = [Path(f"outputs/study-recipe-reinit-top2_epochs-4-seed{seed}") for seed in range(9)]
    name = default_name(many)
    assert len(name) <= 100 and name.startswith("study-recipe-reinit-top2_epochs-4-seed0+8-more-")
    assert default_name(many[::-1]) != name and default_name(many[:-1] + [Path("other")]) != name


def test_two_experiments_to_a_submission_and_back_from_saved_weights(make_config, competition, tmp_path, capsys):
    config = make_config()
    train_in_process(config)
    train_in_process(config, "experiment=tfidf", "model.kind=tfidf_ridge")
    outputs, submissions = tmp_path / "outputs", tmp_path / "submissions"
    args = ["--outputs", str(outputs), "--submissions", str(submissions)]
    assert ensemble_cli.main([str(outputs / "tiny"), str(outputs / "tfidf"), "--name", "blend", *args]) == 0
    printed = capsys.readouterr().out
    assert "<- kept" in printed and all(m in printed for m in ("mean", "nonnegative", "ridge", "hill_climbing"))
    fitted = pd.read_csv(submissions / "blend.csv")
    assert fitted.equals(pd.read_csv(submissions / "submission.csv"))
    sample = pd.read_csv(competition / "sample_submission.csv")
    assert fitted["id"].equals(sample["id"]) and np.isfinite(fitted["target"]).all()

    # What the Kaggle notebook does: every member predicts the file again from its checkpoints, then the weights.
    again = tmp_path / "again.csv"
    weights = outputs / "ensembles" / "blend" / "weights.json"
    apply_args = ["--weights", str(weights), "--input", str(competition / "test.csv"), "--output", str(again)]
    assert ensemble_cli.main([*apply_args, "--sample", str(competition / "sample_submission.csv")]) == 0
    np.testing.assert_allclose(pd.read_csv(again)["target"], fitted["target"], atol=1e-6)

    # A member's own predictions from its folder alone equal those made at training time.
    assert predict_cli.main([str(outputs / "tiny"), "--input", str(competition / "test.csv")]) == 0
    predicted = pd.read_csv(outputs / "tiny" / "predictions" / "test.csv").set_index("id")
    at_fit = pd.read_csv(outputs / "tiny" / "test_predictions.csv").set_index("id").loc[predicted.index]
    np.testing.assert_allclose(predicted.to_numpy(), at_fit.to_numpy(), atol=1e-5)


def test_the_ensemble_is_a_wandb_run_when_tracking_is_on(make_config, tmp_path, fake_wandb):
    config = make_config(tracking={"mode": "offline"})
    train_in_process(config, "model.kind=tfidf_ridge")
    train_in_process(config, "experiment=tfidf-strong", "model.kind=tfidf_ridge", "model.ridge_alpha=10")
    outputs = tmp_path / "outputs"
    args = ["--name", "blend", "--outputs", str(outputs), "--submissions", str(tmp_path / "submissions")]
    assert ensemble_cli.main([str(outputs / "tiny"), str(outputs / "tfidf-strong"), *args]) == 0
    (run,) = [r for r in fake_wandb.runs if r.job_type == "ensemble"]
    assert run.name == "blend" and run.group == "blend" and run.finished and run.exit_code == 0
    assert set(run.summary) >= {"nested_cv/mean", "nested_cv/ridge", "member/tiny", "member/tfidf-strong"}
    (artifact,) = run.artifacts
    assert artifact.name == "blend-ensemble" and set(artifact.files) == {"weights.json", "oof.csv"}


def test_members_trained_on_other_folds_are_refused(make_config, tmp_path, capsys):
    config = make_config()
    train_in_process(config, "model.kind=tfidf_ridge")
    train_in_process(config, "experiment=other-folds", "model.kind=tfidf_ridge", "cv.seed=1")
    outputs = tmp_path / "outputs"
    code = ensemble_cli.main([str(outputs / "tiny"), str(outputs / "other-folds"), "--outputs", str(outputs)])
    assert code == 2
    assert "other-folds and tiny were trained on different folds" in capsys.readouterr().err
    assert not (outputs / "ensembles").exists()


def test_members_of_one_folder_name_are_refused(make_config, tmp_path, capsys):
    train_in_process(make_config(), "model.kind=tfidf_ridge")
    outputs = tmp_path / "outputs"
    shutil.copytree(outputs / "tiny", tmp_path / "elsewhere" / "tiny")  # the same name in another folder
    for twice in ([outputs / "tiny", outputs / "tiny"], [outputs / "tiny", tmp_path / "elsewhere" / "tiny"]):
        assert ensemble_cli.main([*map(str, twice), "--outputs", str(outputs)]) == 2
        assert "distinct folder names: ['tiny'] given more than once" in capsys.readouterr().err
    assert not (outputs / "ensembles").exists()


@pytest.mark.parametrize(
    ("key", "value"), [("competition", "another-competition"), ("target_columns", ["another_target"])]
)
def test_a_member_of_another_competition_or_target_is_refused(make_config, tmp_path, capsys, key, value):
    train_in_process(make_config(), "model.kind=tfidf_ridge")
    outputs = tmp_path / "outputs"
    shutil.copytree(outputs / "tiny", outputs / "other")
    config = yaml.safe_load((outputs / "other" / "config.yaml").read_text())
    config["data"][key] = value
    (outputs / "other" / "config.yaml").write_text(yaml.safe_dump(config))
    assert ensemble_cli.main([str(outputs / "tiny"), str(outputs / "other"), "--outputs", str(outputs)]) == 2
    assert "other and tiny belong to other competitions, targets or metrics" in capsys.readouterr().err
    assert not (outputs / "ensembles").exists()


@pytest.mark.parametrize("kind", ["tfidf_ridge", "embedding_ridge", "features_gbm"])
def test_classical_members_predict_again_from_their_folder_alone(competition, backbones, tmp_path, kind):
    backbone = tmp_path / "backbone-copy"
    shutil.copytree(backbones["bert"], backbone)
    train_in_process(write_config(tmp_path / "tiny.yaml", competition, backbone), f"model.kind={kind}")
    shutil.rmtree(backbone)  # offline and without the backbone it was trained with, as in a Kaggle kernel
    run_dir = tmp_path / "outputs" / "tiny"
    assert predict_cli.main([str(run_dir), "--input", str(competition / "test.csv")]) == 0
    predicted = pd.read_csv(run_dir / "predictions" / "test.csv").set_index("id")
    at_fit = pd.read_csv(run_dir / "test_predictions.csv").set_index("id").loc[predicted.index]
    np.testing.assert_allclose(predicted.to_numpy(), at_fit.to_numpy(), atol=1e-9)
    oof = pd.read_csv(run_dir / "oof.csv")
    assert sorted(oof["id"]) == sorted(pd.read_csv(competition / "train.csv")["id"])


def test_an_ensemble_file_names_the_members_and_the_ensemble(make_config, tmp_path, capsys):
    config = make_config()
    train_in_process(config, "model.kind=tfidf_ridge")
    train_in_process(config, "experiment=strong", "model.kind=tfidf_ridge", "model.ridge_alpha=10")
    outputs, submissions = tmp_path / "outputs", tmp_path / "submissions"
    spec = tmp_path / "blend.yaml"
    spec.write_text(yaml.safe_dump({"name": "from-file", "members": [str(outputs / "tiny"), str(outputs / "strong")]}))
    args = ["--outputs", str(outputs), "--submissions", str(submissions)]
    assert ensemble_cli.main([str(spec), *args]) == 0
    weights = json.loads((outputs / "ensembles" / "from-file" / "weights.json").read_text())
    assert set(weights["member_dirs"]) == {"tiny", "strong"} and (submissions / "from-file.csv").is_file()
    assert ensemble_cli.main([str(spec), "--name", "renamed", *args]) == 0  # --name wins over the file's
    assert (submissions / "renamed.csv").is_file()

    spec.write_text(yaml.safe_dump({"name": "x", "member": [str(outputs / "tiny")]}))
    assert ensemble_cli.main([str(spec), *args]) == 2
    assert "an ensemble file has `name` and `members` (got ['member', 'name'])" in capsys.readouterr().err


def test_an_unfinished_or_unmerged_member_is_refused(make_config, tmp_path, capsys):
    config = make_config()
    train_in_process(config, "model.kind=tfidf_ridge")
    train_in_process(config, "experiment=half", "model.kind=tfidf_ridge", "folds=[0]")
    outputs = tmp_path / "outputs"
    args = ["--outputs", str(outputs), "--submissions", str(tmp_path / "submissions")]
    assert ensemble_cli.main([str(outputs / "tiny"), str(outputs / "half"), *args]) == 2
    assert "half: folds [1] are not finished; train them (folds=[1])" in capsys.readouterr().err
    assert predict_cli.main([str(outputs / "half"), "--input", str(tmp_path / "data" / "test.csv")]) == 2
    assert "folds [1] are not finished" in capsys.readouterr().err

    train_in_process(config, "experiment=half", "model.kind=tfidf_ridge", "folds=[1]")  # merges both folds
    (outputs / "half" / "metrics.json").unlink()  # as if the merge had not run
    assert ensemble_cli.main([str(outputs / "tiny"), str(outputs / "half"), *args]) == 2
    assert "its folds are not merged; run `python src/merge.py" in capsys.readouterr().err
    assert not (outputs / "ensembles").exists()


def test_an_ensemble_stopped_midway_leaves_whole_files_and_a_rerun_finishes_it(make_config, tmp_path, monkeypatch):
    config = make_config()
    train_in_process(config, "model.kind=tfidf_ridge")
    train_in_process(config, "experiment=strong", "model.kind=tfidf_ridge", "model.ridge_alpha=10")
    outputs, submissions = tmp_path / "outputs", tmp_path / "submissions"
    args = [str(outputs / "tiny"), str(outputs / "strong"), "--name", "b", "--outputs", str(outputs)]
    args += ["--submissions", str(submissions)]
    assert ensemble_cli.main(args) == 0
    written = {p: p.read_bytes() for p in [*outputs.joinpath("ensembles", "b").iterdir(), *submissions.iterdir()]}

    real_write = blending.write_csv

    def preempted(df, path):  # the machine goes away while the second submission file is written
        if path.name == "submission.csv":
            raise OSError("preempted")
        real_write(df, path)

    monkeypatch.setattr(blending, "write_csv", preempted)
    with pytest.raises(OSError, match="preempted"):
        ensemble_cli.main(args)
    assert {p: p.read_bytes() for p in written} == written  # every file whole, none half-written
    assert not list(tmp_path.rglob("*.tmp*"))
    monkeypatch.setattr(blending, "write_csv", real_write)
    assert ensemble_cli.main(args) == 0
    assert {p: p.read_bytes() for p in written} == written  # the rerun makes the same files


def test_blends_scored_from_oof_files_alone_match_the_ensemble(make_config, tmp_path, capsys):
    """benchmarks/blend_oof.py: runs whose fold weights are elsewhere get the nested CV src/ensemble.py gives."""
    config = make_config()
    for name in ("a", "b"):
        train_in_process(config, f"experiment={name}", "model.kind=tfidf_ridge", f"model.ridge_alpha={len(name)}")
    outputs = tmp_path / "outputs"
    assert ensemble_cli.main([str(outputs / "a"), str(outputs / "b"), "--outputs", str(outputs)]) == 0
    nested = json.loads((outputs / "ensembles" / "a+b" / "weights.json").read_text())["nested_cv"]
    capsys.readouterr()
    for weights in outputs.glob("[ab]/fold*/model.*"):
        weights.unlink()
    assert blend_oof.main([str(outputs / "a"), str(outputs / "b")]) == 0
    printed = capsys.readouterr().out
    for method, value in nested.items():
        assert re.search(rf"^{method} +{value:.4f}", printed, re.MULTILINE), printed
