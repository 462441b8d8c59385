"""Read back what W&B wrote in offline mode: the records of each `offline-run-*/run-*.wandb` file.

The file is a LevelDB-style log (a 7-byte file header, then 32 KiB blocks of records, each with a 7-byte header:
checksum, length, type) of `wandb_internal_pb2.Record` messages.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from wandb.proto import wandb_internal_pb2

BLOCK = 32768
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path) -> list:
    raw = path.read_bytes()
    assert raw[:4] == b":W&B", f"{path} is not a W&B run file"
    out, pending, pos = [], b"", 7
    while pos + 7 <= len(raw):
        left = BLOCK - pos % BLOCK
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", raw[pos : pos + 7])
        data, pos = raw[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == FULL:
            out.append(data)
        elif kind == FIRST:
            pending = data
        elif kind == MIDDLE:
            pending += data
        elif kind == LAST:
            out.append(pending + data)
    parsed = []
    for data in out:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(data)
        parsed.append(record)
    return parsed


def _items(items) -> dict:
    return {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in items}


def read_run(path: Path) -> dict:
    """group, job_type, name, config, history (list of dicts), summary (last values), exit code."""
    run = {"history": [], "summary": {}, "exit_code": None}
    for record in records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            r = record.run
            run.update(group=r.run_group, job_type=r.job_type, name=r.display_name, config=_items(r.config.update))
        elif kind == "history":
            run["history"].append(_items(record.history.item))
        elif kind == "summary":
            run["summary"].update(_items(record.summary.update))
        elif kind == "exit":
            run["exit_code"] = record.exit.exit_code
    return run


def read_runs(wandb_dir: Path) -> list[dict]:
    return [read_run(p) for p in sorted(wandb_dir.glob("offline-run-*/run-*.wandb"))]
