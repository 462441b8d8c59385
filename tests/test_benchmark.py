"""The throughput benchmark runs end to end (a smoke run: its numbers are measured by hand, see docs/speed.md)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
# bf16 autocast runs on any CPU, only slowly without bf16; the fp32 path runs in the GPU script's smoke test below.
@pytest.mark.parametrize("precision", ["bf16"])
def test_benchmark_prints_its_table(competition, backbones, precision):
    overrides = [
        f"data.dir={competition}",
        f"model.backbone={backbones['bert']}",
        "model.max_len=32",
        f"train.mixed_precision={precision}",
        "cv.n_folds=2",
        "cv.n_bins=4",
        "train.batch_size=4",
    ]
    cmd = [sys.executable, "benchmarks/throughput.py", "--steps", "2", "--eval-rows", "8", "--repeats", "1"]
    cmd += ["--variant", "train.length_bucketing=false", *overrides]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    variant = "pipeline train.length_bucketing=false"
    rows = {
        (variant if line.startswith(variant) else line.split()[0]): line.removeprefix(variant).split()
        for line in result.stdout.splitlines()[2:-1]
    }
    assert set(rows) == {"plain", "trainer", "pipeline", variant}
    for method, row in rows.items():
        expected = "no" if method == "plain" else precision  # the plain loop is the fp32 reference
        assert float(row[-9]) > 0 and float(row[-7]) > 0, method  # samples/s, train and inference
        assert row[-1].endswith("%") and float(row[-2]) > 0 and row[-3] == expected, method  # MFU, peak, precision
    assert rows["plain"][-8] == "1.00"


@pytest.mark.slow
def test_the_gpu_script_runs_every_section_anywhere(competition, backbones):
    """benchmarks/gpu.sh as a smoke run on the CPU: every row of both sections comes out (its numbers come from a
    GPU, docs/speed.md)."""
    overrides = f"data.dir={competition} model.backbone={backbones['bert']} cv.n_folds=2 cv.n_bins=4 train.batch_size=4"
    env = dict(os.environ, STEPS="1", LARGE_STEPS="1", ARCHS="tiny-deberta", DEFAULT_ARCH="tiny-deberta", EVAL_ROWS="4")
    env["OVERRIDES"] = overrides
    env["PYTHON"] = sys.executable
    result = subprocess.run(
        ["bash", "benchmarks/gpu.sh"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for row in (
        "plain ",
        "trainer ",
        "pipeline train.mixed_precision=no ",
        "pipeline train.pad_to_multiple_of=64 train.cudnn_attention=false ",
        "pipeline train.gradient_checkpointing=true ",
    ):
        assert any(line.startswith(row) for line in result.stdout.splitlines()), row
    headers = [line for line in result.stdout.splitlines() if " steps of batch " in line]
    assert sum("random-tiny-deberta" in line for line in headers) == 3  # the default config's section, both shapes
    assert result.stdout.count("pipeline train.gradient_checkpointing=true ") == 2
