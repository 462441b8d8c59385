"""W&B tracking, read back from a stand-in `wandb` (tests/fake_wandb.py) and one offline run of the real one; plots;
the report command."""

import inspect
import json
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
from conftest import train_in_process
from fake_wandb import (  # noqa: F401 (fake_wandb_fixture: the fake_wandb fixture)
    Artifact,
    FakeWandb,
    Image,
    Run,
    Settings,
    Table,
    fake_wandb_fixture,
    offline_run_folders,
)

import report
from textreg.config import load_config
from textreg.experiments import experiments_table
from textreg.records import ValidationEvent
from textreg.tracking import Tracker

REPO = Path(__file__).resolve().parents[1]


def test_every_fold_is_a_run_of_the_experiment_group_plus_a_cv_run(make_config, tmp_path, fake_wandb):
    train_in_process(make_config(tracking={"mode": "offline", "project": "tests"}))
    runs = fake_wandb.runs
    metrics = json.loads((tmp_path / "outputs" / "tiny" / "metrics.json").read_text())
    assert sorted(r.name for r in runs) == ["tiny-cv", "tiny-fold0", "tiny-fold1"]
    assert {r.group for r in runs} == {"tiny"}
    for run in runs:
        assert run.project == "tests" and run.mode == "offline"
        assert run.finished and run.exit_code == 0
        assert run.config["train"]["max_steps"] == 4
    for fold in (0, 1):
        run = fake_wandb.run(f"tiny-fold{fold}")
        assert run.job_type == "fold" and run.config["fold"] == fold
        logged = [h for h in run.history if "val/rmse" in h]
        # 24 training rows, batch 8, 1 epoch: 3 steps, validated at step 2 (eval_every) and at the end
        assert [h["_step"] for h in logged] == [2, 3]
        for row in logged:
            assert {"train/loss", "train/lr", "train/samples_per_second", "train/epoch"} <= set(row)
        assert run.summary["best_val_rmse"] == pytest.approx(metrics["folds"][str(fold)]["score"])
        assert run.summary["best_val_rmse"] == pytest.approx(min(h["val/rmse"] for h in logged))
    cv = fake_wandb.run("tiny-cv")
    assert cv.job_type == "cv" and "fold" not in cv.config
    assert cv.summary["cv/rmse"] == pytest.approx(metrics["cv_score"])
    (table,) = [h["folds"] for h in cv.history if "folds" in h]
    assert [row[0] for row in table.data] == [0, 1]
    (artifact,) = cv.artifacts
    assert artifact.name == "tiny-predictions"
    assert set(artifact.files) == {"oof.csv", "folds.csv", "test_predictions.csv", "submission.csv"}


@pytest.mark.parametrize("how", ["config", "environment"])
def test_disabled_tracking_writes_nothing(make_config, tmp_path, fake_wandb, monkeypatch, how):
    if how == "config":
        config = make_config(tracking={"mode": "disabled"})
    else:
        config = make_config(tracking={"mode": "offline"})
        monkeypatch.setenv("WANDB_MODE", "disabled")
    train_in_process(config)
    assert (tmp_path / "outputs" / "tiny" / "metrics.json").is_file()  # it did train
    assert fake_wandb.runs == []
    assert not (tmp_path / "outputs" / "wandb").exists()
    assert not list(tmp_path.rglob("*.wandb"))


def test_a_failing_fold_still_finishes_its_run(make_config, fake_wandb):
    cfg = load_config(make_config(tracking={"mode": "offline"}))
    tracker = Tracker(cfg.tracking, cfg.experiment, cfg.output_dir, is_main_process=True)
    with pytest.raises(RuntimeError, match="boom"), tracker.fold_run(0, cfg.to_dict()):
        tracker.log({"val/rmse": 1.0}, step=1)
        raise RuntimeError("boom")
    (run,) = fake_wandb.runs
    assert run.name == "tiny-fold0" and run.finished and run.exit_code == 1
    assert run.history == [{"_step": 1, "val/rmse": 1.0}]
    assert tracker.run is None


def test_only_the_main_process_tracks(make_config, fake_wandb):
    cfg = load_config(make_config(tracking={"mode": "offline"}))
    assert Tracker(cfg.tracking, cfg.experiment, cfg.output_dir, is_main_process=True).enabled
    other = Tracker(cfg.tracking, cfg.experiment, cfg.output_dir, is_main_process=False)
    assert not other.enabled
    with other.fold_run(0, cfg.to_dict()) as run:
        assert run is None
        other.log({"val/rmse": 1.0}, step=1)
        other.summarize({"best_val_rmse": 1.0})
    other.log_cv({"metric": "rmse"}, {}, {}, cfg.to_dict())
    assert fake_wandb.runs == []


def test_the_stand_in_accepts_no_more_than_the_real_wandb():
    """Each keyword the stand-in takes, the real API takes too; a misspelt one fails in both."""
    real = pytest.importorskip("wandb")
    assert not isinstance(real, FakeWandb)
    pairs = [
        (FakeWandb.init, real.init),
        (Run.log, real.Run.log),
        (Run.finish, real.Run.finish),
        (Run.log_artifact, real.Run.log_artifact),
        (Table.__init__, real.Table.__init__),
        (Image.__init__, real.Image.__init__),
        (Artifact.__init__, real.Artifact.__init__),
        (Artifact.add_file, real.Artifact.add_file),
    ]
    for fake, original in pairs:
        extra = set(inspect.signature(fake).parameters) - set(inspect.signature(original).parameters) - {"self"}
        assert not extra, f"{fake.__qualname__} takes {extra}, which wandb does not"
    assert set(inspect.signature(Settings).parameters) <= set(real.Settings.model_fields)
    with pytest.raises(TypeError):
        FakeWandb().init(projcet="tests")
    with pytest.raises(TypeError):
        Settings(consle="off")


@pytest.mark.slow
def test_the_real_wandb_writes_one_offline_run_per_fold_and_the_cv_run(make_config, tmp_path):
    """End to end with the real wandb, in a process of its own; only what it leaves on disk is checked, never its
    private file format."""
    config = make_config(tracking={"mode": "offline", "project": "tests"})
    cmd = [sys.executable, "src/train.py", "--config", str(config)]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    folders = offline_run_folders(tmp_path / "outputs" / "wandb")
    assert len(folders) == 3, folders  # fold 0, fold 1, cv
    for folder in folders:
        (run_file,) = folder.glob("run-*.wandb")
        assert run_file.stat().st_size > 0


def test_plots_exist_and_are_not_blank(make_config, tmp_path):
    train_in_process(make_config())
    plots = json.loads((tmp_path / "outputs" / "tiny" / "metrics.json").read_text())["plots"]
    assert set(plots) == {"oof_vs_target", "validation_curves", "residual_by_length"}
    for path in plots.values():
        image = matplotlib.image.imread(path)
        assert image.shape[0] > 200 and image.std() > 0.01


def test_report_lists_experiments_and_what_differs(make_config, tmp_path, capsys):
    config = make_config()
    train_in_process(config)
    train_in_process(config, "experiment=tiny-lr", "train.lr=0.001")
    (tmp_path / "outputs" / "old").mkdir()
    (tmp_path / "outputs" / "old" / "metrics.json").write_text('{"cv_rmse": 0.5}')  # no run.json: another version
    capsys.readouterr()  # what the training runs printed
    assert report.main(["--outputs", str(tmp_path / "outputs"), "--default", str(config)]) == 0
    out = capsys.readouterr().out
    assert "skipped" in out.splitlines()[0] and "another version" in out.splitlines()[0]
    lines = {line.split()[0]: line for line in out.splitlines()[2:]}
    assert set(lines) == {"tiny", "tiny-lr"}
    assert "train.lr=0.001" in lines["tiny-lr"] and "train.lr" not in lines["tiny"]
    for name in ("tiny", "tiny-lr"):
        score = json.loads((tmp_path / "outputs" / name / "metrics.json").read_text())["cv_score"]
        assert f"{score:.4f}" in lines[name]


def test_report_shows_every_score_to_four_decimals():
    event = ValidationEvent(step=1, epoch=1.0, val_score=0.5, val_per_target=[0.5], samples_per_second=1.0)
    fold = {"score": 0.5, "train_seconds": 1.0}
    metrics = {"experiment": "x", "metric": "rmse", "cv_score": 1.122, "fold_score_std": 0.05, "folds_missing": []}
    run = {"metrics": {**metrics, "folds": {"0": fold}, "train_seconds": 1.0}, "histories": [[event]], "changed": []}
    (row,) = experiments_table([{**run, "config": {}}]).to_dict("records")
    assert (row["CV rmse"], row["per fold"], row["fold std"]) == ("1.1220", "0.5000", "0.0500")  # not 1.122


def test_report_pools_seeds_of_one_recipe(make_config, tmp_path, capsys):
    config = make_config()
    for seed in (1, 2):
        train_in_process(config, f"experiment=tiny-seed{seed}", f"seed={seed}", "train.lr=0.001", "folds=[0]")
    train_in_process(config, "experiment=other", "train.lr=0.002", "folds=[0]")  # one seed only: no pooled row
    assert report.main(["--outputs", str(tmp_path / "outputs"), "--default", str(config)]) == 0
    out = capsys.readouterr().out
    pooled = out.split("Over seeds")[1].splitlines()[2:]
    assert len(pooled) == 1 and pooled[0].split()[0] == "train.lr=0.001"
    scores = [
        fold["score"]
        for seed in (1, 2)
        for fold in json.loads((tmp_path / "outputs" / f"tiny-seed{seed}" / "metrics.json").read_text())[
            "folds"
        ].values()
    ]
    recipe, seed_a, seed_b, n, mean, std = pooled[0].split()[:6]
    assert (seed_a, seed_b, int(n)) == ("1", "2", len(scores))
    assert float(mean) == pytest.approx(np.mean(scores), abs=1e-4)
    assert float(std) == pytest.approx(np.std(scores), abs=1e-4)
