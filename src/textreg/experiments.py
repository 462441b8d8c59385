"""Compare experiments without opening W&B: one row per run folder that has a metrics.json, and one row per recipe
run with several seeds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from textreg.artifacts import RunFolder
from textreg.config import changed_keys, is_run_key
from textreg.errors import UserError
from textreg.metrics import Scorer
from textreg.records import ValidationEvent


def load_runs(output_dir: Path, default: dict) -> list[dict]:
    """Each finished run's metrics, its fold histories and the config keys in which it differs from `default`."""
    runs = []
    for run in RunFolder.merged_in(output_dir):
        try:
            run.check_format()
        except UserError:
            print(f"skipped {run}: written by another version of the template")
            continue
        config = run.load_config().to_dict()  # keys added since get their defaults
        changed = sorted(k for k in changed_keys(default, config) if not is_run_key(k))
        runs.append({"metrics": run.metrics(), "config": config, "changed": changed, "histories": run.fold_histories()})
    return runs


def curve_stability(histories: list[list[ValidationEvent]], scorer: Scorer) -> tuple[float, float]:
    """Mean over folds of how much worse the final validation score is than the best, and of the mean step-to-step
    change of the validation score over the second half of training: both 0 for a curve that settles."""
    gaps, wobbles = [], []
    for history in histories:
        scores = np.array([scorer.loss(event.val_score) for event in history])
        gaps.append(scores[-1] - scores.min())
        late = scores[len(scores) // 2 :]
        wobbles.append(np.abs(np.diff(late)).mean() if len(late) > 1 else 0.0)
    return float(np.mean(gaps)), float(np.mean(wobbles))


def experiments_table(runs: list[dict]) -> pd.DataFrame:
    rows = []
    for run in runs:
        metrics = run["metrics"]
        gap, wobble = curve_stability(run["histories"], Scorer(metrics["metric"]))
        rows.append(
            {
                "experiment": metrics["experiment"],
                f"CV {metrics['metric']}": f"{metrics['cv_score']:.4f}",
                "per fold": " ".join(f"{m['score']:.4f}" for m in metrics["folds"].values()),
                "fold std": f"{metrics['fold_score_std']:.4f}",
                "missing folds": ",".join(map(str, metrics["folds_missing"])) or "-",
                "final-best": f"{gap:.4f}",
                "late wobble": f"{wobble:.4f}",
                "train s": metrics["train_seconds"],
                "differs from default": ", ".join(_describe(k, run["config"]) for k in run["changed"]) or "-",
            }
        )
    return pd.DataFrame(rows)


def seeds_table(runs: list[dict]) -> pd.DataFrame:
    """Runs that differ only in `seed` pooled: mean and std of the fold scores over every fold of every seed."""
    recipes: dict[str, list[dict]] = {}
    for run in runs:
        recipe = ", ".join(_describe(k, run["config"]) for k in run["changed"] if k != "seed") or "default"
        recipes.setdefault(recipe, []).append(run)
    rows = []
    for recipe, members in recipes.items():
        if len({run["config"]["seed"] for run in members}) < 2:
            continue
        scores = [fold["score"] for run in members for fold in run["metrics"]["folds"].values()]
        scorer = Scorer(members[0]["metrics"]["metric"])
        gap, wobble = curve_stability([h for run in members for h in run["histories"]], scorer)
        rows.append(
            {
                "recipe": recipe,
                "seeds": " ".join(str(run["config"]["seed"]) for run in members),
                "folds x seeds": len(scores),
                "mean fold score": f"{float(np.mean(scores)):.4f}",
                "std": f"{float(np.std(scores)):.4f}",
                "final-best": f"{gap:.4f}",
                "late wobble": f"{wobble:.4f}",
                "train s per fold": round(sum(run["metrics"]["train_seconds"] for run in members) / len(scores), 1),
            }
        )
    return pd.DataFrame(rows)


def _describe(key: str, config: dict) -> str:
    value = config
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return f"{key}={value}"
