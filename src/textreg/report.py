"""Compare experiments without opening W&B: one row per run folder that has a metrics.json."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from textreg import artifacts
from textreg.config import Config, UserError, changed_keys

IGNORED = {"experiment", "folds", "overwrite", "tracking"}


def experiments_table(output_dir: Path, default: Config) -> pd.DataFrame:
    rows = []
    for metrics_path in sorted(output_dir.glob("*/metrics.json")):
        try:
            artifacts.check_run_format(metrics_path.parent)
        except UserError:
            print(f"skipped {metrics_path.parent}: written by another version of the template")
            continue
        metrics = json.loads(metrics_path.read_text())
        config = artifacts.load_run_config(metrics_path.parent).to_dict()  # keys added since get their defaults
        changed = sorted(k for k in changed_keys(default.to_dict(), config) if k.split(".")[0] not in IGNORED)
        rows.append(
            {
                "experiment": metrics["experiment"],
                f"CV {metrics['metric']}": round(metrics["cv_score"], 4),
                "per fold": " ".join(f"{m['score']:.4f}" for m in metrics["folds"].values()),
                "fold std": round(metrics["fold_score_std"], 4),
                "missing folds": ",".join(map(str, metrics["folds_missing"])) or "-",
                "train s": metrics["train_seconds"],
                "differs from default": ", ".join(_describe(k, config) for k in changed) or "-",
            }
        )
    return pd.DataFrame(rows)


def _describe(key: str, config: dict) -> str:
    value = config
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return f"{key}={value}"
