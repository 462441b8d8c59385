"""The whole train path on synthetic data and a tiny backbone: artefacts, single folds, merging, bad input."""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import train_in_process
from safetensors.torch import load_file

import merge
import train
from textreg import engine
from textreg.artifacts import RUN_FORMAT
from textreg.config import ModelConfig, dump, load_config
from textreg.model import build_model, load_backbone_config

REPO = Path(__file__).resolve().parents[1]


def run_train(config: Path, *overrides: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "src/train.py", "--config", str(config), *overrides]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)


def check_run(run_dir: Path, data_dir: Path, submission: Path, n_folds: int = 2) -> None:
    train_df = pd.read_csv(data_dir / "train.csv")
    oof = pd.read_csv(run_dir / "oof.csv")
    assert sorted(oof["id"]) == sorted(train_df["id"])  # exactly one OOF prediction per row
    assert np.isfinite(oof["target_pred"]).all()
    folds = pd.read_csv(run_dir / "folds.csv").set_index("id")["fold"]
    assert (oof.set_index("id")["fold"] == folds.reindex(oof["id"])).all()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    errors = oof["target"] - oof["target_pred"]
    assert metrics["cv_score"] == pytest.approx(float(np.sqrt(np.mean(errors**2))))
    assert sorted(metrics["folds"]) == [str(k) for k in range(n_folds)]
    for k in range(n_folds):
        fold = metrics["folds"][str(k)]
        assert fold["best_step"] > 0 and fold["train_samples_per_second"] > 0
        assert load_file(run_dir / f"fold{k}" / "model.safetensors")  # loads without unpickling anything
    sample = pd.read_csv(data_dir / "sample_submission.csv")
    sub = pd.read_csv(submission)
    assert list(sub.columns) == list(sample.columns) and sub["id"].equals(sample["id"])
    test_pred = pd.read_csv(run_dir / "test_predictions.csv").set_index("id")
    assert np.allclose(sub.set_index("id")["target"], test_pred.loc[sub["id"], "target"])
    assert np.allclose(test_pred["target"], test_pred[[f"target_fold{k}" for k in range(n_folds)]].mean(axis=1))


@pytest.mark.slow
@pytest.mark.parametrize(
    "overrides",
    [
        {"model__pooling": "attention"},
        {
            "model__pooling": "cls",
            "train__grad_accum": 2,
            "train__mixed_precision": "bf16",
            "train__scheduler": "cosine",
            "train__length_bucketing": False,
        },
        {"train__compile": True, "train__fused_optimizer": True, "train__threads": 1},
    ],
    ids=["attention-pooling", "cls-accumulation-bf16-cosine", "compile-fused-1thread"],
)
def test_debug_config_end_to_end(make_config, competition, tmp_path, overrides):
    config = make_config(**overrides)
    result = run_train(config)
    assert result.returncode == 0, result.stderr
    assert "CV rmse" in result.stdout
    precision = overrides.get("train__mixed_precision", "no")
    assert f"mixed precision {precision}" in result.stdout
    check_run(tmp_path / "outputs" / "tiny", competition, tmp_path / "submissions" / "tiny.csv")


def test_single_folds_run_apart_then_merge(make_config, competition, tmp_path):
    config = make_config()
    run_dir = tmp_path / "outputs" / "tiny"
    train_in_process(config, "folds=[1]")
    assert json.loads((run_dir / "metrics.json").read_text())["folds_missing"] == [0]
    assert not (tmp_path / "submissions" / "tiny.csv").exists()  # no submission from half the folds
    fold1_model = (run_dir / "fold1" / "model.safetensors").read_bytes()
    train_in_process(config, "folds=[0]")
    assert (run_dir / "fold1" / "model.safetensors").read_bytes() == fold1_model
    check_run(run_dir, competition, tmp_path / "submissions" / "tiny.csv")
    (run_dir / "metrics.json").unlink()
    assert merge.main([str(run_dir)]) == 0
    check_run(run_dir, competition, tmp_path / "submissions" / "tiny.csv")


def test_late_validation_start_skips_early_validations_and_changes_nothing_else(make_config, tmp_path):
    # Bucketed batch order depends on seed and epoch alone and dropout is off, so validating less often must
    # leave the training path, and the scores at the steps both runs validate, exactly as they were.
    histories = {}
    for start in (0.0, 0.5):
        config = make_config(
            name=f"start{start}.yaml",
            experiment=f"start{start}",
            folds=[0],
            train__epochs=3,
            train__max_steps=8,
            train__eval_every=2,
            train__eval_start=start,
        )
        train_in_process(config)
        fold = json.loads((tmp_path / "outputs" / f"start{start}" / "fold0" / "metrics.json").read_text())
        histories[start] = {event["step"]: event["val_score"] for event in fold["history"]}
    assert list(histories[0.0]) == [2, 4, 6, 8] and list(histories[0.5]) == [4, 6, 8]
    assert all(histories[0.5][step] == histories[0.0][step] for step in (4, 6, 8))


def test_padding_to_a_multiple_changes_the_shapes_not_the_model(make_config, tmp_path):
    """Padded positions are masked: the same training, and so the same predictions, up to float rounding."""
    oof = {}
    for multiple in (1, 16):
        config = make_config(experiment=f"pad{multiple}", folds=[0], train__pad_to_multiple_of=multiple)
        train_in_process(config)
        oof[multiple] = pd.read_csv(tmp_path / "outputs" / f"pad{multiple}" / "fold0" / "oof.csv")["target_pred"]
    np.testing.assert_allclose(oof[16], oof[1], atol=1e-4)
    assert not np.array_equal(oof[1], np.zeros_like(oof[1]))


def test_gradient_checkpointing_recomputes_the_layers_and_changes_no_prediction(make_config, tmp_path, monkeypatch):
    """Each training step runs the inside of a layer twice (again in the backward pass); predictions stay."""
    forwards, oof = {}, {}
    build = engine.build_model

    def counted(*args, **kwargs):
        model = build(*args, **kwargs)
        layer = model.backbone.encoder.layer[0].intermediate  # inside the checkpointed layer
        layer.register_forward_hook(lambda *_: forwards.update(n=forwards["n"] + 1))
        return model

    monkeypatch.setattr(engine, "build_model", counted)
    for on in (False, True):
        forwards["n"] = 0
        train_in_process(make_config(experiment=f"gc-{on}", folds=[0], train__gradient_checkpointing=on))
        forwards[on] = forwards["n"]
        oof[on] = pd.read_csv(tmp_path / "outputs" / f"gc-{on}" / "fold0" / "oof.csv")["target_pred"]
    fold = json.loads((tmp_path / "outputs" / "gc-True" / "fold0" / "metrics.json").read_text())
    assert forwards[True] - forwards[False] == fold["history"][-1]["step"] == 3  # each training step recomputed once
    np.testing.assert_allclose(oof[True], oof[False], atol=1e-5)


def test_a_run_folder_of_another_config_is_refused(make_config, tmp_path, capsys):
    config = make_config()
    run_dir = tmp_path / "outputs" / "tiny"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(dump(load_config(config, ["train.lr=0.5"])))
    saved = (run_dir / "config.yaml").read_text()
    (run_dir / "run.json").write_text(json.dumps({"run_format": RUN_FORMAT, "launches": []}))
    assert train.main(["--config", str(config)]) == 2
    assert "holds a run of another config (differs in train.lr)" in capsys.readouterr().err
    assert (run_dir / "config.yaml").read_text() == saved


def corrupt(data_dir: Path, how: str) -> None:
    df = pd.read_csv(data_dir / "train.csv")
    if how == "no text column":
        df = df.drop(columns="excerpt")
    elif how == "no target column":
        df = df.drop(columns="target")
    elif how == "NaN target":
        df.loc[5, "target"] = np.nan
    elif how == "text target":
        df["target"] = df["target"].astype(object)
        df.loc[5, "target"] = "easy"
    elif how == "empty text":
        df.loc[7, "excerpt"] = "   "
    elif how == "duplicate id":
        df.loc[3, "id"] = df.loc[2, "id"]
    df.to_csv(data_dir / "train.csv", index=False)


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("no text column", r"train.csv: missing column\(s\) \['excerpt'\]"),
        ("no target column", r"train.csv: missing column\(s\) \['target'\]"),
        ("NaN target", r"train.csv: target 'target' is missing or not a number at row 7"),
        ("text target", r"train.csv: target 'target' is missing or not a number at row 7"),
        ("empty text", r"train.csv: empty or non-text \[.excerpt.\] at row 9"),
        ("duplicate id", r"train.csv: duplicate id\(s\) in 'id', e.g. 'tr002'"),
    ],
)
def test_bad_training_data_stops_before_anything_is_written(make_config, competition, tmp_path, capsys, how, message):
    corrupt(competition, how)
    assert train.main(["--config", str(make_config())]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert re.search(message, err), err
    assert not (tmp_path / "outputs").exists()


@pytest.mark.parametrize(
    ("backbone", "message"),
    [
        ("package:no_such_model_package", "package 'no_such_model_package' is not installed"),
        ("/no/such/folder", "cannot be loaded as a local folder, an installed package"),
        ("no-such-org/no-such-model", "cannot be loaded as a local folder, an installed package"),
    ],
)
def test_a_backbone_that_does_not_exist_is_a_clear_error(make_config, tmp_path, capsys, backbone, message):
    assert train.main(["--config", str(make_config()), f"model.backbone={backbone}"]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "outputs").exists()


def test_an_unknown_config_key_is_a_clear_error(make_config, tmp_path, capsys):
    assert train.main(["--config", str(make_config()), "train.learning_rate=1e-3"]) == 2
    assert "train.learning_rate: unknown key; allowed here:" in capsys.readouterr().err
    assert not (tmp_path / "outputs").exists()


def test_merge_refuses_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert merge.main([str(tmp_path)]) == 2
    assert "is not a run folder (no config.yaml)" in capsys.readouterr().err


def test_a_diverged_fold_stops_at_its_first_nan_validation_with_a_reason(make_config, tmp_path, capsys):
    config = make_config(train__lr=1e30, train__eval_every=2, train__eval_start=0.0)
    assert train.main(["--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "error: fold 0: validation rmse is NaN at step 2: training diverged" in err, err
    assert not list((tmp_path / "outputs" / "tiny").glob("fold*/metrics.json"))  # no fold counts as finished


def test_targets_far_from_zero_train_by_default(make_config, competition):
    """Scores of 100 or so: the head starts at their mean (standardized targets), not at zero."""
    train_df = pd.read_csv(competition / "train.csv")
    train_df["target"] += 100
    train_df.to_csv(competition / "train.csv", index=False)
    config = make_config()
    train_in_process(config, "folds=[0]")
    metrics = json.loads((load_config(config).run_dir / "metrics.json").read_text())
    assert metrics["cv_score"] < 2 * train_df["target"].std()  # predicting zero would score about 100


def test_predictions_stay_float32_under_bf16_autocast(backbones):
    cfg = ModelConfig(backbone=str(backbones["bert"]))
    path, config = load_backbone_config(cfg)
    model = build_model(cfg, 2, path, config).eval()
    ids = torch.randint(1000, 2000, (16, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model.to_target_units(model(ids, torch.ones_like(ids)))
    low_bits = out.contiguous().view(torch.int32) & 0xFFFF  # zero in every bf16 value widened to float32
    assert out.dtype == torch.float32 and (low_bits != 0).any()
    assert len(torch.unique(out[:, 0])) == len(out)  # no ties from rounding
