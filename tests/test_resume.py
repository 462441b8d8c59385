"""Resume inside a fold: checkpoints of the whole training state, written whole or not at all, removed at the end."""

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fake_wandb import fake_wandb_fixture  # noqa: F401 (the fake_wandb fixture)

import train
from textreg import checkpoints
from textreg.artifacts import RunFolder
from textreg.config import load_config
from textreg.errors import UserError

REPO = Path(__file__).resolve().parents[1]


def fold_predictions(run_dir: Path, fold: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    oof = pd.read_csv(run_dir / f"fold{fold}" / "oof.csv").sort_values("id").reset_index(drop=True)
    return oof, pd.read_csv(run_dir / f"fold{fold}" / "test.csv")


def assert_same_predictions(a: Path, b: Path) -> None:
    for x, y in zip(fold_predictions(a), fold_predictions(b), strict=True):
        np.testing.assert_allclose(x["target_pred" if "target_pred" in x else "target"], y[x.columns[-1]], atol=1e-6)


def test_steps_schedule_saves_every_n_steps_counted_over_all_processes():
    schedule = checkpoints.CheckpointSchedule(4, start_step=0, num_processes=2)
    assert [step for step in range(2, 21, 2) if schedule.due(step)] == [4, 8, 12, 16, 20]
    assert not any(checkpoints.CheckpointSchedule(None, 0, 1).due(step) for step in range(1, 100))


def test_minutes_become_steps_from_the_speed_of_the_first_steps(monkeypatch):
    now = {"step": 100}
    monkeypatch.setattr(checkpoints.time, "perf_counter", lambda: now["step"] * 0.5)  # half a second a step
    schedule = checkpoints.CheckpointSchedule("1min", start_step=100, num_processes=1)
    due = []
    for step in range(101, 500):
        now["step"] = step
        due += [step] if schedule.due(step) else []
    assert schedule.interval == 120  # a minute of half-second steps, known after the first CALIBRATION_STEPS
    assert due == [220, 340, 460]


def interrupted_fold(make_config, tmp_path, monkeypatch, **overrides) -> Path:
    """Fold 0 trained up to its end, stopped while its files were being written: its checkpoints are left."""
    steps = {"train__epochs": 3, "train__max_steps": None, "train__eval_every": 2, "train__checkpoint_every": 3}
    config = make_config(**steps, folds=[0], **overrides)

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(RunFolder, "save_fold", disk_full)
        with pytest.raises(OSError):
            train.main(["--config", str(config)])
    return config


@pytest.mark.parametrize("ema_decay", [None, 0.9], ids=["raw weights", "weight average"])
def test_a_rerun_resumes_from_the_last_whole_checkpoint_to_the_same_predictions(
    make_config, tmp_path, monkeypatch, capsys, ema_decay
):
    config = interrupted_fold(make_config, tmp_path, monkeypatch, train__ema_decay=ema_decay)
    fold_dir = tmp_path / "outputs" / "tiny" / "fold0"
    assert [p.name for p in checkpoints.complete(fold_dir)] == ["checkpoint-6"]  # the older one removed
    (fold_dir / "checkpoint-7").mkdir()  # a save killed before its progress file: ignored
    (fold_dir / "checkpoint-7" / "model.safetensors").write_bytes(b"partial")
    capsys.readouterr()

    assert train.main(["--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "fold 0: resuming from" in out and "checkpoint-6 (step 6 of 9)" in out
    assert not list(fold_dir.glob("checkpoint-*"))  # removed once the fold's files are written

    assert train.main(["--config", str(config), "experiment=unbroken"]) == 0
    assert_same_predictions(tmp_path / "outputs" / "tiny", tmp_path / "outputs" / "unbroken")
    resumed, unbroken = (RunFolder(tmp_path / "outputs" / name).fold_metrics(0) for name in ("tiny", "unbroken"))
    assert [e["step"] for e in resumed["history"]] == [e["step"] for e in unbroken["history"]]
    np.testing.assert_allclose(
        [e["val_score"] for e in resumed["history"]], [e["val_score"] for e in unbroken["history"]], atol=1e-6
    )


def test_a_damaged_checkpoint_is_refused_before_anything_is_written(make_config, tmp_path, monkeypatch, capsys):
    config = interrupted_fold(make_config, tmp_path, monkeypatch)
    run_dir = tmp_path / "outputs" / "tiny"
    weights = run_dir / "fold0" / "checkpoint-6" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated
    before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")}
    capsys.readouterr()
    assert train.main(["--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert "checkpoint-6 is damaged" in err and "delete that folder" in err
    assert {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")} == before

    shutil.rmtree(run_dir / "fold0" / "checkpoint-6")  # as the message says: the fold starts over
    assert train.main(["--config", str(config)]) == 0


def test_a_resumed_fold_logs_its_whole_curve_to_its_new_wandb_run(make_config, tmp_path, monkeypatch, fake_wandb):
    tracking = {"mode": "offline", "project": "tests"}
    config = interrupted_fold(make_config, tmp_path, monkeypatch, tracking=tracking)
    killed = fake_wandb.run("tiny-fold0")
    assert killed.exit_code == 1  # the stopped fold's run finished as failed
    fake_wandb.runs.clear()
    assert train.main(["--config", str(config)]) == 0
    resumed = fake_wandb.run("tiny-fold0")
    steps = [row["_step"] for row in resumed.history if "val/rmse" in row]
    assert steps == [row["_step"] for row in killed.history if "val/rmse" in row] == [6, 8, 9]


def test_a_checkpoint_of_another_launch_is_refused(make_config, tmp_path, monkeypatch):
    interrupted_fold(make_config, tmp_path, monkeypatch)
    (folder,) = checkpoints.complete(tmp_path / "outputs" / "tiny" / "fold0")
    plan = {"steps": 9, "steps_per_epoch": 3, "processes": 2}
    with pytest.raises(UserError, match="saved by a run with another step plan or process count"):
        checkpoints.load(None, folder, plan)  # refused before any state is restored


def test_changing_how_often_to_checkpoint_keeps_the_run_folder(make_config, tmp_path):
    config = make_config(folds=[0])
    assert train.main(["--config", str(config)]) == 0
    assert train.main(["--config", str(config), "folds=[1]", "train.checkpoint_every=10min"]) == 0
    assert RunFolder(tmp_path / "outputs" / "tiny").is_finished()
    assert load_config(config).train.checkpoint_every == "15min"


def launch(config: Path, *overrides: str, launcher: tuple[str, ...] = (sys.executable,)) -> subprocess.Popen:
    """A training run, its output in `log` beside its config (a pipe nobody reads would fill and stop it)."""
    cmd = [*launcher, "src/train.py", "--config", str(config), *overrides]
    with (config.parent / "log").open("w") as log:
        return subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)


def kill_after_checkpoint(process: subprocess.Popen, fold_dir: Path, step: int) -> None:
    """SIGKILL every process of the run once checkpoint `step` is whole, a random moment later."""
    deadline = time.time() + 240
    while not (fold_dir / f"checkpoint-{step}" / checkpoints.PROGRESS_FILE).exists():
        assert process.poll() is None and time.time() < deadline, f"never reached checkpoint {step}"
        time.sleep(0.005)
    time.sleep(random.uniform(0, 0.05))
    tree = descendants(process.pid)  # torchrun starts its workers in sessions of their own
    for pid in [process.pid, *tree]:
        os.kill(pid, signal.SIGKILL)
    process.wait()
    while any(Path(f"/proc/{pid}").exists() and "Z" not in state(pid) for pid in tree):
        time.sleep(0.01)
    assert not (fold_dir / "metrics.json").exists(), f"killed too late (after checkpoint {step})"


def descendants(pid: int) -> list[int]:
    children = [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    return [grandchild for child in children for grandchild in (child, *descendants(child))]


def state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return "Z"


def resume_and_compare(config: Path, tmp_path: Path, *launcher: str) -> None:
    rerun = launch(config, launcher=launcher or (sys.executable,))
    assert rerun.wait(timeout=300) == 0, (tmp_path / "log").read_text()[-3000:]
    assert "fold 0: resuming from" in (tmp_path / "log").read_text()
    assert_same_predictions(tmp_path / "outputs" / "tiny", tmp_path / "outputs" / "unbroken")
    assert not list((tmp_path / "outputs" / "tiny" / "fold0").glob("checkpoint-*"))


@pytest.mark.slow
def test_a_fold_killed_at_a_random_step_resumes_to_the_predictions_of_an_unbroken_run(make_config, tmp_path):
    # 24 training rows in batches of 8: 3 steps an epoch, so the kill lands in any epoch and at any batch of it.
    steps = {"train__epochs": 30, "train__max_steps": None, "train__eval_every": 5, "train__checkpoint_every": 2}
    config = make_config(**steps, folds=[0])
    assert launch(config, "experiment=unbroken").wait(timeout=300) == 0, (tmp_path / "log").read_text()[-3000:]
    target = random.Random().randrange(2, 40, 2)  # a checkpoint to wait for, then a moment of no step in particular
    kill_after_checkpoint(launch(config), tmp_path / "outputs" / "tiny" / "fold0", target)
    resume_and_compare(config, tmp_path)


@pytest.mark.slow
def test_two_processes_killed_midway_resume_to_the_predictions_of_an_unbroken_run(make_config, tmp_path):
    # Batches of 4 on each of 2 processes: 3 optimizer steps an epoch, each counting 2.
    steps = {"train__epochs": 8, "train__max_steps": None, "train__batch_size": 4, "train__eval_every": 6}
    config = make_config(**steps, train__checkpoint_every=4, folds=[0])
    torchrun = (str(Path(sys.executable).parent / "torchrun"), "--nproc_per_node", "2")
    unbroken = launch(config, "experiment=unbroken", launcher=torchrun)
    assert unbroken.wait(timeout=300) == 0, (tmp_path / "log").read_text()[-3000:]
    target = random.Random().randrange(4, 28, 4)
    kill_after_checkpoint(launch(config, launcher=torchrun), tmp_path / "outputs" / "tiny" / "fold0", target)
    resume_and_compare(config, tmp_path, *torchrun)
