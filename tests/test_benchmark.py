"""The throughput benchmark runs end to end (a smoke run: its numbers are measured by hand, see docs/speed.md)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_gpu_script_runs_every_section_anywhere(competition):
    """benchmarks/gpu.sh as a smoke run on the CPU: every row of both sections comes out (its numbers come from a
    GPU, docs/speed.md). In bf16, which autocast runs on any CPU (slowly without bf16); the plain loop and one
    variant of the pipeline stay fp32."""
    overrides = f"data.dir={competition} cv.n_folds=2 cv.n_bins=4 train.batch_size=4 train.mixed_precision=bf16"
    env = dict(os.environ, STEPS="1", LARGE_STEPS="1", ARCHS="tiny-deberta", DEFAULT_ARCH="tiny-deberta", EVAL_ROWS="4")
    env["WARMUP"], env["BENCH_ARGS"] = "1", "--in-process"  # each row in the benchmark's process: a minute quicker
    env["OVERRIDES"], env["SHAPES"] = overrides, "train.batch_size=4 model.max_len=32"
    env["PYTHON"] = sys.executable
    result = subprocess.run(
        ["bash", "benchmarks/gpu.sh"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    precisions = {
        "plain": "no",  # the fp32 reference
        "trainer": "bf16",
        "pipeline": "bf16",
        "pipeline train.mixed_precision=no": "no",
        "pipeline train.pad_to_multiple_of=1 train.cudnn_attention=null": "bf16",
        "pipeline train.pad_to_multiple_of=1": "bf16",
        "pipeline train.cudnn_attention=null": "bf16",
        "pipeline train.gradient_checkpointing=true": "bf16",
    }
    for name, precision in precisions.items():
        row = next(line.removeprefix(name).split() for line in lines if line.startswith(name + " "))  # the first
        assert float(row[-9]) > 0 and float(row[-7]) > 0, name  # samples/s, train and inference
        assert row[-1].endswith("%") and float(row[-2]) > 0 and row[-3] == precision, name  # MFU, peak, precision
    headers = [line for line in result.stdout.splitlines() if " of warm-up) of batch " in line]
    assert sum("random-tiny-deberta" in line for line in headers) == 2  # the default config's section, the shape
    assert "1 steps (after 0 of warm-up)" in headers[0] and "1 steps (after 1 of warm-up)" in headers[1]
