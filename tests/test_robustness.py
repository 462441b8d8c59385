"""Nothing lost: resume after SIGKILL, reproducible runs, provenance, clear errors that leave nothing behind."""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import train_in_process

import merge
import predict
import train
from textreg.artifacts import RUN_FORMAT, RunFolder
from textreg.config import load_config

REPO = Path(__file__).resolve().parents[1]


def launch(config: Path, *overrides: str) -> subprocess.Popen:
    cmd = [sys.executable, "src/train.py", "--config", str(config), *overrides]
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_a_killed_run_resumes_without_retraining_finished_folds(make_config, competition, tmp_path):
    # Fold 1 is long enough (200 steps) to be killed in the middle of it.
    config = make_config(train__max_steps=200, train__eval_every=100)
    run_dir = tmp_path / "outputs" / "tiny"
    process = launch(config)
    deadline = time.time() + 240
    while not (run_dir / "fold0" / "metrics.json").exists():
        assert process.poll() is None and time.time() < deadline, "fold 0 never finished"
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (run_dir / "fold1" / "metrics.json").exists(), "killed too late: fold 1 had finished"
    fold0 = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in (run_dir / "fold0").iterdir()}

    rerun = launch(config)
    out, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err[-3000:]
    assert "fold 0: finished before, kept" in out
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in (run_dir / "fold0").iterdir()} == fold0
    oof = pd.read_csv(run_dir / "oof.csv")
    assert sorted(oof["id"]) == sorted(pd.read_csv(competition / "train.csv")["id"])
    assert not list(run_dir.rglob("*.tmp*"))  # no temporary left behind
    assert len(json.loads((run_dir / "run.json").read_text())["launches"]) == 2


@pytest.mark.slow
def test_same_config_and_seed_give_the_same_predictions(make_config, tmp_path):
    config = make_config(train__max_steps=6, train__eval_every=3)
    # One run in a process of its own, one in the test's: nothing but the config and the seed is shared.
    result = subprocess.run(
        [sys.executable, "src/train.py", "--config", str(config), "experiment=first"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    train_in_process(config, "experiment=second")
    runs = [tmp_path / "outputs" / name for name in ("first", "second")]
    first, second = (pd.read_csv(r / "oof.csv").sort_values("id").reset_index(drop=True) for r in runs)
    assert first["fold"].equals(second["fold"])
    np.testing.assert_allclose(first["target_pred"], second["target_pred"], atol=1e-6, rtol=0)
    # ... and a different seed gives different ones: the comparison above can fail.
    train_in_process(config, "experiment=third", "seed=7")
    third = pd.read_csv(tmp_path / "outputs" / "third" / "oof.csv").sort_values("id").reset_index(drop=True)
    assert not np.allclose(first["target_pred"], third["target_pred"], atol=1e-6)

    launch_record = json.loads((runs[0] / "run.json").read_text())["launches"][0]
    assert len(launch_record["git_commit"]) == 40 and isinstance(launch_record["git_dirty"], bool)
    assert launch_record["packages"]["torch"].startswith("2.13.0")
    assert launch_record["cpu_count"] >= 1 and launch_record["processes"] == 1
    assert yaml.safe_load((runs[0] / "config.yaml").read_text())["seed"] == 42


def write_bytes(path: Path, data: bytes) -> None:
    path.write_bytes(data)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (
            lambda d: (
                pd.read_csv(d / "sample_submission.csv").iloc[1:].to_csv(d / "sample_submission.csv", index=False)
            ),
            r"the test file and the sample submission hold different ids \(in the sample only: \[\], in the test "
            r"file only: \['te004'\]\)",
        ),
        (
            lambda d: write_bytes(d / "train.csv", "id,excerpt,target\nx1,caf\xe9 au lait,1.0\n".encode("latin-1")),
            r"train.csv: cannot be read as CSV: 'utf-8' codec can't decode",
        ),
        (
            lambda d: write_bytes(d / "test.csv", b"id,excerpt\nx1,some text\nx2,a,b,c\n"),
            r"test.csv: cannot be read as CSV: Error tokenizing data",
        ),
        (lambda d: (d / "test.csv").unlink(), r"data file not found: .*test.csv \(run `make data`"),
        (
            lambda d: write_bytes(d / "train.csv", b"id,excerpt,target,excerpt\nx1,a text,1.0,another\n"),
            r"train.csv: column name\(s\) \['excerpt'\] appear more than once in the header",
        ),
        (lambda d: write_bytes(d / "test.csv", b"id,excerpt\n"), r"test.csv: holds no rows, only the header"),
        (lambda d: write_bytes(d / "test.csv", b""), r"test.csv: cannot be read as CSV: No columns to parse"),
    ],
    ids=[
        "test ids differ from sample",
        "not UTF-8",
        "unparsable",
        "missing file",
        "duplicate column",
        "header only",
        "empty file",
    ],
)
def test_bad_files_stop_the_run_before_anything_is_written(make_config, competition, tmp_path, capsys, damage, message):
    damage(competition)
    assert train.main(["--config", str(make_config())]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert re.search(message, err), err
    assert not (tmp_path / "outputs" / "tiny").exists()


def test_a_batch_larger_than_a_fold_is_refused(make_config, tmp_path, capsys):
    assert train.main(["--config", str(make_config()), "train.batch_size=25"]) == 2
    err = capsys.readouterr().err
    assert "train.batch_size=25 is larger than a fold's 24 training rows (48 rows, 2 folds)" in err
    assert not (tmp_path / "outputs").exists()


def test_a_text_of_200000_characters_trains_and_predicts_truncated(make_config, competition, tmp_path):
    long_text = ("The river ran past the house. " * 7000)[:200_000]
    for name in ("train.csv", "test.csv"):
        df = pd.read_csv(competition / name)
        df.loc[1, "excerpt"] = long_text
        df.to_csv(competition / name, index=False)
    train_in_process(make_config(), "model.max_len=64")
    run_dir = tmp_path / "outputs" / "tiny"
    oof = pd.read_csv(run_dir / "oof.csv").set_index("id")
    assert oof.loc["tr001", "text_length"] == 200_000 and np.isfinite(oof.loc["tr001", "target_pred"])
    assert predict.main([str(run_dir), "--input", str(competition / "test.csv")]) == 0
    assert np.isfinite(pd.read_csv(run_dir / "predictions" / "test.csv").set_index("id").loc["te001", "target"])


def test_empty_test_texts_are_predicted_with_a_warning_that_names_their_rows(
    make_config, competition, tmp_path, capsys
):
    test = pd.read_csv(competition / "test.csv")
    test.loc[1, "excerpt"], test.loc[3, "excerpt"] = "", "   "  # an empty cell is read back as NaN
    test.to_csv(competition / "test.csv", index=False)
    train_in_process(make_config())
    assert "test.csv: empty or non-text ['excerpt'] at rows 3, 5 (lines in the file)" in capsys.readouterr().err
    submission = pd.read_csv(tmp_path / "submissions" / "tiny.csv")
    assert len(submission) == len(test) and np.isfinite(submission["target"]).all()
    assert predict.main([str(tmp_path / "outputs" / "tiny"), "--input", str(competition / "test.csv")]) == 0
    assert "at rows 3, 5" in capsys.readouterr().err
    predicted = pd.read_csv(tmp_path / "outputs" / "tiny" / "predictions" / "test.csv")
    assert sorted(predicted["id"]) == sorted(test["id"]) and np.isfinite(predicted["target"]).all()


def test_more_bins_than_the_data_allows_is_refused(make_config, tmp_path, capsys):
    assert train.main(["--config", str(make_config()), "cv.n_bins=30"]) == 2
    assert "cv.n_bins=30 x cv.n_folds=2 is more than the 48 rows" in capsys.readouterr().err
    assert not (tmp_path / "outputs" / "tiny").exists()


@pytest.fixture
def finished_run(make_config, tmp_path):
    result = subprocess.run(
        [sys.executable, "src/train.py", "--config", str(make_config())],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return tmp_path / "outputs" / "tiny"


def test_merge_refuses_damaged_folds_and_other_versions_writing_nothing(finished_run, capsys):
    oof_before = (finished_run / "oof.csv").read_bytes()
    (finished_run / "oof.csv").unlink()

    (finished_run / "fold1" / "test.csv").rename(finished_run / "test.csv.bak")
    assert merge.main([str(finished_run)]) == 2
    assert "fold1: missing ['test.csv']; delete " in capsys.readouterr().err
    (finished_run / "test.csv.bak").rename(finished_run / "fold1" / "test.csv")

    checkpoint = finished_run / "fold0" / "model.safetensors"
    good = checkpoint.read_bytes()
    checkpoint.write_bytes(b"\x00" * 64)
    assert merge.main([str(finished_run)]) == 2
    assert "fold0/model.safetensors is corrupt" in capsys.readouterr().err
    launches = (finished_run / "run.json").read_text()
    assert train.main(["--config", str(finished_run / "config.yaml")]) == 2  # a rerun reads it first, too
    assert "fold0/model.safetensors is corrupt" in capsys.readouterr().err
    assert (finished_run / "run.json").read_text() == launches
    checkpoint.write_bytes(good)

    run_json = finished_run / "run.json"
    run_json.write_text(json.dumps({"run_format": 0, "launches": []}))
    assert merge.main([str(finished_run)]) == 2
    assert "was written by another version of this template (run format 0" in capsys.readouterr().err
    assert not (finished_run / "oof.csv").exists()  # nothing half-written by any refused merge

    run_json.write_text(json.dumps({"run_format": RUN_FORMAT, "launches": []}))
    assert merge.main([str(finished_run)]) == 0
    assert (finished_run / "oof.csv").read_bytes() == oof_before


def test_training_into_a_folder_of_another_version_is_refused(finished_run, make_config, capsys):
    (finished_run / "run.json").write_text(json.dumps({"run_format": 0, "launches": []}))
    assert train.main(["--config", str(make_config())]) == 2
    assert "was written by another version of this template" in capsys.readouterr().err


def test_a_run_folder_without_a_key_added_since_resumes(make_config, tmp_path):
    """A key added to the template gets its default in a saved config too: the folder is not 'another config'."""
    config = make_config(folds=[0])
    train_in_process(config)
    saved = tmp_path / "outputs" / "tiny" / "config.yaml"
    raw = yaml.safe_load(saved.read_text())
    del raw["train"]["pad_to_multiple_of"]
    saved.write_text(yaml.safe_dump(raw))
    train_in_process(config, "folds=[1]")  # accepted as the same config: fold 1 joins fold 0
    assert json.loads((tmp_path / "outputs" / "tiny" / "metrics.json").read_text())["folds_missing"] == []


@pytest.mark.parametrize(
    ("overrides", "env", "message"),
    [
        (["model.kind=embedding_ridge", "model.backbone=/no/such/folder"], {}, "cannot be loaded as a local folder"),
        (["model.kind=tfidf_ridge"], {"WORLD_SIZE": "2"}, "fits in one process: run it with `python src/train.py`"),
    ],
    ids=["bad-backbone", "several-processes"],
)
def test_a_classical_member_that_cannot_run_stops_before_writing(
    make_config, tmp_path, capsys, monkeypatch, overrides, env, message
):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert train.main(["--config", str(make_config()), *overrides]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "outputs" / "tiny").exists()


def test_a_damaged_merge_is_refused_by_prediction(finished_run, competition, capsys):
    (finished_run / "metrics.json").write_text('{"cv_sco')
    assert predict.main([str(finished_run), "--input", str(competition / "test.csv")]) == 2
    assert "metrics.json is damaged" in capsys.readouterr().err


@pytest.mark.slow
def test_runs_started_at_once_on_a_fresh_outputs_folder_share_one_whole_folds_file(make_config, tmp_path):
    """Every run needs outputs/folds/<scheme>.csv; the first ones write it at the same moment, the others read it."""
    config = make_config()
    names = [f"run{i}" for i in range(4)]
    processes = [launch(config, f"experiment={name}", "model.kind=tfidf_ridge") for name in names]
    for process in processes:
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0, err[-3000:]
    outputs = tmp_path / "outputs"
    (folds_file,) = (outputs / "folds").iterdir()
    shared = pd.read_csv(folds_file)
    assert len(shared) == 48 and set(shared["fold"]) == {0, 1}
    for name in names:
        assert pd.read_csv(outputs / name / "folds.csv").equals(shared)
    assert not list(outputs.rglob("*.tmp*"))


def test_launches_into_one_run_folder_at_once_each_keep_their_record(tmp_path):
    cfg = load_config(REPO / "configs" / "debug.yaml", [f"output_dir={tmp_path}"])

    def launches(worker: int) -> None:
        for n in range(20):
            RunFolder(cfg.run_dir).prepare(cfg.to_dict(), {"worker": worker, "n": n})

    threads = [threading.Thread(target=launches, args=(worker,)) for worker in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    records = json.loads((cfg.run_dir / "run.json").read_text())["launches"]
    assert sorted((r["worker"], r["n"]) for r in records) == [(w, n) for w in range(6) for n in range(20)]
