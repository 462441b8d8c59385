"""The forks of docs/new-competition.md by their configs alone: summaries (two tables, two targets, grouped folds,
MCRMSE, pooling over the summary), essay scoring (QWK, windows, thresholds) and analytic scores (six targets, MCRMSE,
rounding to 0.5)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import train_in_process

import ensemble
import predict
from textreg import blending
from textreg.config import load_config
from textreg.data import load_train, model_inputs

REPO = Path(__file__).resolve().parents[1]
WORDS = ["the", "summary", "says", "author", "argues", "that", "people", "river", "because", "however", "evidence"]


def make_summaries(folder: Path, n_train: int = 64, seed: int = 0) -> Path:
    """The file layout of CommonLit - Evaluate Student Summaries, with targets far from zero and on two scales."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)

    def prompts(ids):
        return pd.DataFrame(
            {"prompt_id": ids, "prompt_question": [f"What does text {p} say?" for p in ids], "prompt_title": ids}
        )

    def summaries(n, prompt_ids, prefix):
        return pd.DataFrame(
            {
                "student_id": [f"{prefix}{i:03d}" for i in range(n)],
                "prompt_id": rng.choice(prompt_ids, size=n),
                "text": [" ".join(rng.choice(WORDS, size=rng.integers(4, 20))) for _ in range(n)],
            }
        )

    train = summaries(n_train, ["p1", "p2", "p3", "p4", "p5"], "s")
    train["content"] = 40 + 5 * rng.normal(size=n_train)
    train["wording"] = -10 + 0.5 * rng.normal(size=n_train)
    test = summaries(6, ["q1", "q2"], "t")
    prompts(["p1", "p2", "p3", "p4", "p5"]).to_csv(folder / "prompts_train.csv", index=False)
    prompts(["q1", "q2"]).to_csv(folder / "prompts_test.csv", index=False)
    train.to_csv(folder / "summaries_train.csv", index=False)
    test.to_csv(folder / "summaries_test.csv", index=False)
    test[["student_id"]].assign(content=0.0, wording=0.0).iloc[::-1].to_csv(
        folder / "sample_submission.csv", index=False
    )
    return folder


@pytest.fixture
def summaries_config(tmp_path, backbones):
    data_dir = make_summaries(tmp_path / "data")
    config = {
        "defaults": [str(REPO / "configs" / "summaries.yaml")],
        "output_dir": str(tmp_path / "outputs"),
        "submission_dir": str(tmp_path / "submissions"),
        "data": {"dir": str(data_dir)},
        "model": {"backbone": str(backbones["bert"]), "max_len": 48},
        "train": {"max_steps": 4, "eval_every": 2, "batch_size": 8, "mixed_precision": "no"},
    }
    path = tmp_path / "summaries-tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_model_input_is_the_template_over_joined_columns(summaries_config):
    cfg = load_config(summaries_config)
    train = load_train(cfg.data, cfg.cv, cfg.seed)
    inputs = model_inputs(train, cfg.data, "[SEP]")
    row = train.iloc[0]
    assert inputs[0] == f"What does text {row['prompt_id']} say?[SEP]{row['text']}"


@pytest.mark.slow
def test_two_targets_grouped_folds_mcrmse_and_submission(summaries_config, tmp_path):
    cmd = [sys.executable, "src/train.py", "--config", str(summaries_config)]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "outputs" / "summaries-minilm"
    train = pd.read_csv(tmp_path / "data" / "summaries_train.csv")

    folds = pd.read_csv(run_dir / "folds.csv").merge(train, on="student_id")
    assert (folds.groupby("prompt_id")["fold"].nunique() == 1).all()  # no prompt split between folds
    assert folds["fold"].nunique() == 4

    oof = pd.read_csv(run_dir / "oof.csv")
    assert sorted(oof["student_id"]) == sorted(train["student_id"])
    for target in ("content", "wording"):
        assert np.isfinite(oof[f"{target}_pred"]).all()
    truth, pred = oof[["content", "wording"]].to_numpy(), oof[["content_pred", "wording_pred"]].to_numpy()
    column_rmse = np.sqrt(((truth - pred) ** 2).mean(axis=0))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["metric"] == "mcrmse"
    assert metrics["cv_score"] == pytest.approx(column_rmse.mean())
    assert metrics["cv_score"] != pytest.approx(np.sqrt(((truth - pred) ** 2).mean()))  # not plain RMSE
    assert metrics["cv_per_target"] == pytest.approx(dict(zip(["content", "wording"], column_rmse, strict=True)))
    # Standardised targets are mapped back to target units: a head that predicts ~0 z-scores lands near
    # each target's mean (40 and -10), not near 0.
    assert column_rmse[0] < 15 and column_rmse[1] < 3

    sample = pd.read_csv(tmp_path / "data" / "sample_submission.csv")
    submission = pd.read_csv(tmp_path / "submissions" / "summaries-minilm.csv")
    assert list(submission.columns) == ["student_id", "content", "wording"]
    assert submission["student_id"].equals(sample["student_id"])
    assert np.isfinite(submission[["content", "wording"]].to_numpy()).all()


@pytest.mark.slow
def test_members_with_two_targets_blend_per_target(summaries_config, tmp_path):
    for overrides in (
        ["experiment=a", "model.kind=tfidf_ridge"],
        ["experiment=b", "model.kind=tfidf_ridge", "model.ridge_alpha=10"],
    ):
        cmd = [sys.executable, "src/train.py", "--config", str(summaries_config), *overrides]
        assert subprocess.run(cmd, cwd=REPO, capture_output=True, timeout=300).returncode == 0
    outputs, submissions = tmp_path / "outputs", tmp_path / "submissions"
    report = blending.build([outputs / "a", outputs / "b"], "ab", outputs, submissions)
    assert set(report["blends"]) == {"content", "wording"}
    assert report["metric"] == "mcrmse"
    submission = pd.read_csv(submissions / "ab.csv")
    assert list(submission.columns) == ["student_id", "content", "wording"]


def make_essays(folder: Path, n_train: int = 48, seed: int = 0) -> Path:
    """The layout of Automated Essay Scoring 2.0: essays of 60 to 200 words, integer scores 1-6."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    score = rng.integers(1, 7, size=n_train + 6)
    texts = [" ".join(rng.choice(WORDS, size=rng.integers(60, 200))) + " evidence" * int(s) for s in score]
    ids = [f"e{i:03d}" for i in range(n_train + 6)]
    pd.DataFrame({"essay_id": ids[:n_train], "full_text": texts[:n_train], "score": score[:n_train]}).to_csv(
        folder / "train.csv", index=False
    )
    pd.DataFrame({"essay_id": ids[n_train:], "full_text": texts[n_train:]}).to_csv(folder / "test.csv", index=False)
    pd.DataFrame({"essay_id": ids[n_train:], "score": 1}).to_csv(folder / "sample_submission.csv", index=False)
    return folder


ANALYTIC = ["cohesion", "syntax", "vocabulary", "phraseology", "grammar", "conventions"]


def make_analytic(folder: Path, n_train: int = 48, seed: int = 0) -> Path:
    """The layout of English Language Learning: essays of about 100 to 300 words, six scores 1-5 in steps of 0.5."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    ids = [f"t{i:03d}" for i in range(n_train + 6)]
    texts = [" ".join(rng.choice(WORDS, size=rng.integers(100, 300))) for _ in ids]
    train = pd.DataFrame({"text_id": ids[:n_train], "full_text": texts[:n_train]})
    for target in ANALYTIC:
        train[target] = rng.integers(2, 11, size=n_train) / 2
    train.to_csv(folder / "train.csv", index=False)
    pd.DataFrame({"text_id": ids[n_train:], "full_text": texts[n_train:]}).to_csv(folder / "test.csv", index=False)
    pd.DataFrame({"text_id": ids[n_train:], **dict.fromkeys(ANALYTIC, 3.0)}).to_csv(
        folder / "sample_submission.csv", index=False
    )
    return folder


FORKS = {  # config, data maker, experiment, targets, the scores a submission may hold
    "essays": ("essays.yaml", make_essays, "essays-minilm", ["score"], set(range(1, 7))),
    "analytic": ("analytic.yaml", make_analytic, "analytic-minilm", ANALYTIC, set(np.arange(2, 11) / 2)),
}


@pytest.mark.slow
@pytest.mark.parametrize("fork", FORKS)
def test_a_fork_trains_predicts_blends_and_submits_from_its_config_alone(fork, tmp_path, backbones):
    file, make_data, experiment, targets, scores = FORKS[fork]
    data_dir = make_data(tmp_path / "data")
    config = tmp_path / f"{fork}-tiny.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "defaults": [str(REPO / "configs" / file)],
                "output_dir": str(tmp_path / "outputs"),
                "submission_dir": str(tmp_path / "submissions"),
                "data": {"dir": str(data_dir)},
                "cv": {"n_folds": 2},
                "model": {"backbone": str(backbones["bert"]), "max_len": 32, "stride": 16},
                "train": {"max_steps": 4, "eval_every": 2, "batch_size": 8, "mixed_precision": "no"},
                "tracking": {"mode": "disabled"},
            }
        )
    )
    train_in_process(config)
    train_in_process(config, "experiment=tfidf", "model.kind=tfidf_ridge")
    outputs, submissions = tmp_path / "outputs", tmp_path / "submissions"
    sample = pd.read_csv(data_dir / "sample_submission.csv")
    submission = pd.read_csv(submissions / f"{experiment}.csv")
    assert list(submission.columns) == list(sample.columns) and set(submission[targets].to_numpy().ravel()) <= scores

    assert predict.main([str(outputs / experiment), "--input", str(data_dir / "test.csv")]) == 0
    predicted = pd.read_csv(outputs / experiment / "predictions" / "test.csv")
    assert set(predicted[targets].to_numpy().ravel()) <= scores

    args = ["--outputs", str(outputs), "--submissions", str(submissions), "--name", "blend"]
    assert ensemble.main([str(outputs / experiment), str(outputs / "tfidf"), *args]) == 0
    blended = pd.read_csv(submissions / "blend.csv")
    assert blended.iloc[:, 0].equals(sample.iloc[:, 0]) and set(blended[targets].to_numpy().ravel()) <= scores
