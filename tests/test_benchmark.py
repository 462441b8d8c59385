"""The throughput benchmark runs end to end (a smoke run: its numbers are measured by hand, see README)."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_benchmark_prints_its_table(competition, backbones):
    overrides = [
        f"data.dir={competition}",
        f"model.backbone={backbones['bert']}",
        "model.max_len=32",
        "train.mixed_precision=no",
        "cv.n_folds=2",
        "cv.n_bins=4",
        "train.batch_size=4",
    ]
    cmd = [sys.executable, "benchmarks/throughput.py", "--steps", "2", "--eval-rows", "8", *overrides]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines() if line.split()}
    for method in ("plain", "trainer", "pipeline"):
        assert float(rows[method][1]) > 0 and float(rows[method][3]) > 0  # samples/s, train and inference
    assert rows["plain"][2] == "1.00"
    assert "MFU" in result.stdout
