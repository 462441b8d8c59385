"""Two CPU processes: through `accelerate launch --config_file configs/accelerate/cpu_2proc.yaml` (mpirun),
and through torchrun, which needs no MPI."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_train import check_run
from wandb_offline import read_runs

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
LAUNCHERS = {
    "accelerate-mpirun": [str(BIN / "accelerate"), "launch", "--config_file", "configs/accelerate/cpu_2proc.yaml"],
    "torchrun": [str(BIN / "torchrun"), "--nproc_per_node", "2"],
}


@pytest.mark.parametrize("launcher", LAUNCHERS)
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
    # Only the main process talks to W&B: one run per fold plus the cv run, none twice.
    runs = read_runs(tmp_path / "outputs" / "wandb")
    assert sorted(r["name"] for r in runs) == ["tiny-cv", "tiny-fold0", "tiny-fold1"]
    assert all(r["exit_code"] == 0 for r in runs)
