"""The throughput benchmark runs end to end (a smoke run: its numbers are measured by hand, see docs/speed.md)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from opprofile import OperatorProfile, kind_of

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_gpu_script_runs_every_section_anywhere(competition):
    """benchmarks/gpu.sh as a smoke run on the CPU: every row of both sections comes out (its numbers come from a
    GPU, docs/speed.md). In bf16, which autocast runs on any CPU (slowly without bf16); the plain loop and one
    variant of the pipeline stay fp32."""
    overrides = f"data.dir={competition} cv.n_folds=2 cv.n_bins=4 train.batch_size=4 train.mixed_precision=bf16"
    env = dict(os.environ, STEPS="1", LARGE_STEPS="1", ARCHS="tiny-deberta", DEFAULT_ARCH="tiny-deberta", EVAL_ROWS="4")
    env["WARMUP"], env["BENCH_ARGS"] = "1", "--in-process"  # each row in the benchmark's process: a minute quicker
    env["PROFILE_STEPS"] = "1"
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
    speed_sections = result.stdout.split("== 3. ")[0]
    headers = [line for line in speed_sections.splitlines() if " of warm-up) of batch " in line]
    assert sum("random-tiny-deberta" in line for line in headers) == 2  # the default config's section, the shape
    assert "1 steps (after 0 of warm-up)" in headers[0] and "1 steps (after 1 of warm-up)" in headers[1]
    profiles = result.stdout.split("== 3. ")[1].split("== where the time of 'pipeline' went")[1:]
    assert len(profiles) == 2  # the default architecture's and the largest's (both tiny-deberta here)
    for profile in profiles:
        head, kinds, columns, *rows = profile.split("\n", 1)[1].split("\nmatmul peak now")[0].splitlines()
        assert head.startswith("GPU kernels and copies: " if torch.cuda.is_available() else "CPU operators: ")
        assert int(kinds.split("matmul ")[1].split("%")[0]) > 0
        assert any(row.split()[1] == "matmul" for row in rows)  # the operator table, busiest first


def test_operators_fall_into_kinds():
    kinds = {
        "aten::mm": "matmul",
        "aten::addmm": "matmul",
        "aten::_scaled_dot_product_flash_attention_for_cpu_backward": "attention",
        "aten::_scaled_dot_product_efficient_attention": "attention",
        "aten::_fused_adamw_": "optimizer",
        "aten::_foreach_norm": "optimizer",
        "aten::native_layer_norm_backward": "norm+activation",
        "aten::gelu": "norm+activation",
        "aten::embedding_dense_backward": "embedding",
        "aten::_to_copy": "copy+cast",
        "aten::copy_": "copy+cast",
        "Optimizer.step#AdamW.step": "optimizer",
        "enumerate(DataLoader)#_SingleProcessDataLoaderIter.__next__": "data loading",
        "aten::add": "other",
        "aten::mse_loss": "other",
    }
    assert {name: kind_of(name) for name in kinds} == kinds


def test_profile_of_a_bf16_training_step_on_a_cpu():
    """The bf16 path runs on any CPU (slowly without bf16 hardware): the report gives the matmul share, and the
    autocast casts show as their own operator."""
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.GELU(), torch.nn.Linear(256, 1))

    with OperatorProfile(cuda=False) as watch:  # the model is on the CPU, whatever the machine has
        for _ in range(10):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = model(torch.randn(32, 64)).float().pow(2).mean()
            loss.backward()
    head, kinds, columns, *rows = watch.report(rows=1000).splitlines()  # every operator
    operators, wall = (float(part.split(" s")[0]) for part in head.removeprefix("CPU operators: ").split(" in "))
    assert 0 < operators <= wall
    pairs = (part.split() for part in kinds.removeprefix("by kind: ").split(", "))
    shares = {kind: int(share.rstrip("%")) for kind, share in pairs}
    assert shares["matmul"] > 0 and 98 <= sum(shares.values()) <= 102  # rounded shares of one whole
    assert {"aten::addmm", "aten::mm", "aten::_to_copy"} <= {row.split()[0] for row in rows}
