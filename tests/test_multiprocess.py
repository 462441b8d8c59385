"""Two CPU processes: through `accelerate launch --config_file configs/accelerate/cpu_2proc.yaml` (mpirun),
and through torchrun, which needs no MPI."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from fake_wandb import offline_run_folders
from test_train import check_run

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
LAUNCHERS = {
    "accelerate-mpirun": [str(BIN / "accelerate"), "launch", "--config_file", "configs/accelerate/cpu_2proc.yaml"],
    "torchrun": [str(BIN / "torchrun"), "--nproc_per_node", "2"],
}


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["accelerate-mpirun"])  # torchrun: the step arithmetic and resume tests
def test_two_processes_write_one_prediction_per_row(make_config, competition, tmp_path, launcher):
    if launcher == "accelerate-mpirun" and shutil.which("mpirun") is None:
        pytest.skip("needs mpirun: apt-get install openmpi-bin")
    # 24 validation rows a fold, split over 2 processes: gather_for_metrics must drop the padding duplicates.
    config = make_config(train__max_steps=6, train__eval_every=2, tracking={"mode": "offline"})
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    cmd = [*LAUNCHERS[launcher], "src/train.py", "--config", str(config)]
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("2 process(es)") == 1  # one run in one process group, announced once
    check_run(tmp_path / "outputs" / "tiny", competition, tmp_path / "submissions" / "tiny.csv")
    # Only the main process talks to W&B: one offline run per fold plus the cv run, none twice.
    folders = offline_run_folders(tmp_path / "outputs" / "wandb")
    assert len(folders) == 3, folders
    for folder in folders:
        (run_file,) = folder.glob("run-*.wandb")
        assert run_file.stat().st_size > 0


@pytest.mark.slow
def test_step_arithmetic_is_the_same_on_one_process_and_two_with_accumulation(make_config, tmp_path):
    """24 training rows in batches of 3 with 2 batches accumulated: 4 optimizer steps an epoch on any process count.
    Validation every 2 steps from half-way: steps 2 and 4, the second at the end of the epoch."""
    config = make_config(train__batch_size=3, train__grad_accum=2, train__eval_every=2, train__max_steps=None)
    for launcher, name in (([sys.executable], "one"), (LAUNCHERS["torchrun"], "two")):
        cmd = [*launcher, "src/train.py", "--config", str(config), f"experiment={name}", "folds=[0]"]
        result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        assert "4 optimizer steps an epoch, 4 in all, validation every 2 steps from step 2" in result.stdout
        fold = json.loads((tmp_path / "outputs" / name / "fold0" / "metrics.json").read_text())
        assert [(event["step"], event["epoch"]) for event in fold["history"]] == [(2, 0.5), (4, 1.0)], name
    # Batches of 5: 5 batches, 3 on each process (the second starts the epoch again), which steps after its second
    # and its last: 2 steps a process, 4 in all, and the epoch ends at step 4, not cut short at 3.
    cmd = [*LAUNCHERS["torchrun"], "src/train.py", "--config", str(config), "experiment=uneven", "folds=[0]"]
    result = subprocess.run([*cmd, "train.batch_size=5"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "4 optimizer steps an epoch, 4 in all, validation every 2 steps from step 2" in result.stdout
    fold = json.loads((tmp_path / "outputs" / "uneven" / "fold0" / "metrics.json").read_text())
    assert [(event["step"], event["epoch"]) for event in fold["history"]] == [(2, 0.5), (4, 1.0)]
