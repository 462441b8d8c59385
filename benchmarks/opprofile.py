"""Where a run's time goes, by PyTorch operator: `benchmarks/throughput.py --profile` (docs/speed.md).

The time of an operator is its own (`self`) time: on a CPU the wall time of its own code on the thread that ran it,
on CUDA the time of the kernels and copies it launched. Operators are grouped by kind, so that the share outside the
matrix multiplies shows in one line.
"""

from __future__ import annotations

import re
import time

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from textreg.engine import elapsed_since

# First match wins, case aside: attention before matmul (the fused kernels do their own matmuls), optimizer before
# the rest (gradient clipping and the foreach AdamW are elementwise kernels).
KINDS = {
    "attention": r"scaled_dot_product|attention",
    "matmul": r"^aten::(mm|addmm|bmm|baddbmm|_addmm_activation|addmv|mv|dot|_int_mm)$",
    "optimizer": r"adam|_foreach_|clip_grad|optimizer",
    "norm+activation": r"layer_norm|rms_norm|gelu|softmax|tanh|relu|silu|dropout",
    "embedding": r"embedding|index_select|index_add|index_put",
    "copy+cast": r"^aten::(copy_|_to_copy|to|clone|contiguous|cat|stack|pad|constant_pad_nd|fill_|zero_|zeros)$",
    "data loading": r"dataloader",
}


def kind_of(name: str) -> str:
    return next((kind for kind, pattern in KINDS.items() if re.search(pattern, name, re.IGNORECASE)), "other")


class OperatorProfile:
    """A context that profiles what runs in it; `report()` then says where the time went. `cuda`: count the GPU's
    kernel time (default: when there is a GPU) rather than the CPU's operator time."""

    def __init__(self, cuda: bool | None = None) -> None:
        self.cuda = torch.cuda.is_available() if cuda is None else cuda
        activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if self.cuda else [])]
        self.profiler = profile(activities=activities)
        self.tick, self.wall_seconds = 0.0, 0.0

    def __enter__(self) -> OperatorProfile:
        self.profiler.__enter__()
        self.tick = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        device = torch.device("cuda" if self.cuda else "cpu")
        self.wall_seconds = elapsed_since(self.tick, device)  # the queued kernels included
        self.profiler.__exit__(*exc)

    def report(self, rows: int = 15) -> str:
        """The operators' time by kind, and the busiest operators, each as a share of all operator time."""
        seconds: dict[str, float] = {}
        calls: dict[str, int] = {}
        for op in self.profiler.key_averages():
            if op.device_type != DeviceType.CPU:
                continue  # a kernel: counted under the operator that launched it
            own = op.self_device_time_total if self.cuda else op.self_cpu_time_total
            seconds[op.key] = seconds.get(op.key, 0.0) + own / 1e6
            calls[op.key] = calls.get(op.key, 0) + op.count
        total = sum(seconds.values())
        if total <= 0:
            return "no operator time recorded"
        by_kind: dict[str, float] = {}
        for name, value in seconds.items():
            kind = kind_of(name)
            by_kind[kind] = by_kind.get(kind, 0.0) + value
        where = "GPU kernels and copies" if self.cuda else "CPU operators"
        lines = [
            f"{where}: {total:.3f} s in {self.wall_seconds:.3f} s of wall time",
            "by kind: " + ", ".join(f"{k} {v / total:.0%}" for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1])),
            f"{'operator':<60} {'kind':<16} {'seconds':>8} {'share':>6} {'calls':>7}",
        ]
        for name, value in sorted(seconds.items(), key=lambda kv: -kv[1])[:rows]:
            lines.append(f"{name[:60]:<60} {kind_of(name):<16} {value:>8.3f} {value / total:>6.1%} {calls[name]:>7}")
        return "\n".join(lines)
