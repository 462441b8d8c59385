"""What the hardware does well: the precision `auto` picks, and the CPU threads a process gets."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import train_in_process
from transformers import AutoConfig

from textreg import engine, hardware
from textreg.model import fp16_ok

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("setting", "launched", "cuda", "bf16_gpu", "bf16_cpu", "expected"),
    [
        ("no", "bf16", True, True, True, "no"),  # an explicit setting wins over everything
        ("fp16", "no", False, False, False, "fp16"),
        ("auto", "fp16", True, True, True, "fp16"),  # then `accelerate launch --mixed_precision`
        ("auto", "no", True, True, False, "bf16"),  # then the GPU: bf16 where it has it
        ("auto", "no", True, False, True, "fp16"),  # a T4: it emulates bf16, slowly
        ("auto", "no", False, False, True, "bf16"),  # then the CPU: bf16 only with AVX512-BF16 or AMX
        ("auto", "no", False, False, False, "no"),
    ],
)
def test_auto_precision_follows_the_launcher_then_the_hardware(
    monkeypatch, setting, launched, cuda, bf16_gpu, bf16_cpu, expected
):
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", launched)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    # As torch answers on a T4: bf16 "supported" when emulation counts, not natively.
    monkeypatch.setattr(
        torch.cuda, "is_bf16_supported", lambda including_emulation=True: bf16_gpu or including_emulation
    )
    monkeypatch.setattr(hardware, "cpu_supports_bf16", lambda: bf16_cpu)
    assert hardware.choose_mixed_precision(setting) == expected


@pytest.mark.parametrize(("arch", "expected"), [("gemma3_text", "no"), ("bert", "fp16")])
def test_auto_precision_never_picks_fp16_for_a_gemma_backbone(monkeypatch, backbones, arch, expected):
    """On a GPU without bf16 (Kaggle's T4), Gemma trains in fp32: its activations overflow fp16."""
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    config = AutoConfig.from_pretrained(backbones[arch])
    assert hardware.choose_mixed_precision("auto", fp16_ok(config)) == expected


def test_the_cpu_flags_decide_bf16(monkeypatch, tmp_path):
    for flags, expected in (("fpu avx512f avx512_bf16", True), ("fpu amx_bf16 amx_tile", True), ("fpu avx2", False)):
        (tmp_path / "cpuinfo").write_text(f"flags\t\t: {flags}\n")
        monkeypatch.setattr(hardware, "Path", lambda _: tmp_path / "cpuinfo")
        assert hardware.cpu_supports_bf16() is expected


@pytest.mark.parametrize(
    ("allowed", "cpus", "env", "expected"),
    [
        (8, 8, {}, 8),  # one process: every core
        (8, 8, {"LOCAL_WORLD_SIZE": "2"}, 4),  # torchrun: shared among the machine's processes
        (8, 8, {"OMPI_COMM_WORLD_LOCAL_SIZE": "4"}, 2),  # accelerate launch on CPUs (mpirun)
        (4, 64, {"LOCAL_WORLD_SIZE": "2"}, 2),  # a container's 4 cores shared by 2 processes: never oversubscribed
        (1, 8, {"OMPI_COMM_WORLD_LOCAL_SIZE": "2"}, 1),  # pinned to one core each by the launcher
        (2, 2, {"LOCAL_WORLD_SIZE": "4"}, 1),  # never 0
    ],
)
def test_default_threads_share_the_allowed_cores(monkeypatch, allowed, cpus, env, expected):
    for name in hardware.LOCAL_SIZE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(os, "sched_getaffinity", lambda _: set(range(allowed)))
    monkeypatch.setattr(os, "cpu_count", lambda: cpus)
    assert hardware.default_threads() == expected


@pytest.mark.slow
def test_accelerate_launch_trains_on_every_core(make_config):
    """`accelerate launch` sets OMP_NUM_THREADS=1; the run must still use all the cores it may run on."""
    cores = len(os.sched_getaffinity(0))
    accelerate = Path(sys.executable).parent / "accelerate"
    cmd = [str(accelerate), "launch", "--num_processes", "1", "src/train.py", "--config", str(make_config())]
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"with {cores} CPU thread(s) each" in result.stdout


@pytest.mark.parametrize("allowed", [False, True])
def test_cudnn_attention_switches_the_process_wide_flag_and_null_leaves_it(allowed, make_config):
    before = torch.backends.cuda.cudnn_sdp_enabled()
    try:
        torch.backends.cuda.enable_cudnn_sdp(not allowed)
        train_in_process(make_config(folds=[0]), f"train.cudnn_attention={str(allowed).lower()}")
        assert torch.backends.cuda.cudnn_sdp_enabled() is allowed  # the training path set it
        hardware.set_cudnn_attention(None)
        assert torch.backends.cuda.cudnn_sdp_enabled() is allowed
    finally:
        torch.backends.cuda.enable_cudnn_sdp(before)


def test_training_time_is_read_once_the_gpu_has_done_the_queued_work(monkeypatch):
    synced = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: synced.append(device))
    tick = time.perf_counter()
    assert engine.elapsed_since(tick, torch.device("cpu")) >= 0 and synced == []  # a CPU runs in step
    assert engine.elapsed_since(tick, torch.device("cuda", 0)) >= 0
    assert synced == [torch.device("cuda", 0)]
