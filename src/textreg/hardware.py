"""What the hardware does well: the mixed precision to train in, and how many CPU threads each process gets."""

from __future__ import annotations

import os
from pathlib import Path

import torch

# Where launchers say how many processes share this machine: torchrun, Open MPI (accelerate launch on CPUs), MPICH.
LOCAL_SIZE_VARIABLES = ("LOCAL_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS")


def cpu_supports_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def choose_mixed_precision(setting: str, fp16_ok: bool = True) -> str:
    """`auto`: what `accelerate launch --mixed_precision` asked for, else the fastest the hardware does well; fp32
    rather than fp16 for a backbone that overflows in fp16 (`fp16_ok=False`)."""
    if setting != "auto":
        return setting
    launched = os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
    if launched != "no":
        return launched
    if torch.cuda.is_available():
        # including_emulation=False: a T4 emulates bf16, slowly; it gets fp16 (or fp32 for a backbone without it)
        return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16" if fp16_ok else "no"
    return "bf16" if cpu_supports_bf16() else "no"


def processes_set_by_launcher(variables: tuple[str, ...]) -> int:
    for name in variables:
        if os.environ.get(name, "").isdigit():
            return max(1, int(os.environ[name]))
    return 1


def default_threads() -> int:
    """The cores this process may run on, shared among the processes of this machine. `accelerate launch` sets
    OMP_NUM_THREADS=1, which torch would otherwise follow: one core for the whole run. Dividing never
    oversubscribes: processes that share one set of cores split it, and a process pinned to its own core keeps 1."""
    allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, allowed // processes_set_by_launcher(LOCAL_SIZE_VARIABLES))


def launched_processes() -> int:
    """Processes of the whole run, on every machine (torchrun's WORLD_SIZE, Open MPI's, MPICH's)."""
    return processes_set_by_launcher(("WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE"))


def set_threads(threads: int | None) -> int:
    """Set torch's intra-op threads (`train.threads`, or `default_threads()` for null); return the number."""
    count = threads or default_threads()
    torch.set_num_threads(count)
    return count


def set_cudnn_attention(allowed: bool | None) -> None:
    """`train.cudnn_attention`: on Hopper GPUs PyTorch prefers cuDNN's fused attention in fp16/bf16, which builds an
    execution plan for every new (batch, length) shape; false lets scaled_dot_product_attention pick another
    kernel. None leaves PyTorch's choice. A process-wide switch, read when attention runs, harmless on a CPU."""
    if allowed is not None:
        torch.backends.cuda.enable_cudnn_sdp(allowed)
