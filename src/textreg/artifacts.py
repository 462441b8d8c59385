"""Artefacts of a run: one folder per experiment, one subfolder per fold, merged into OOF, metrics, submission.

outputs/<experiment>/config.yaml          resolved config
                    folds.csv            fold assignment (id, fold)
                    backbone/            tokenizer and backbone config (to predict offline)
                    fold<k>/model.safetensors, oof.csv, test.csv, metrics.json
                    oof.csv              id, fold, targets, <target>_pred (merged over folds)
                    test_predictions.csv id, <target>_fold<k> and their mean <target>
                    metrics.json         per-fold and overall CV RMSE, best steps, times
submissions/<experiment>.csv             the sample submission's format, mean over folds
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from safetensors.torch import save_file

from textreg.config import Config, UserError, save_config, validate
from textreg.data import load_sample_submission, read_csv
from textreg.engine import FoldResult
from textreg.metrics import per_target, score
from textreg.submission import make_submission

IGNORED_KEYS = ("folds", "overwrite")  # may differ between runs that share one folder


def write_csv(df: pd.DataFrame, path: Path) -> None:
    """Whole or not at all: write beside, then rename."""
    tmp = path.with_name(path.name + ".tmp")
    df.to_csv(tmp, index=False)
    tmp.replace(path)


def write_json(obj: dict, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    tmp.replace(path)


def _comparable(cfg: dict) -> dict:
    return {k: v for k, v in cfg.items() if k not in IGNORED_KEYS}


def prepare_run_dir(cfg: Config) -> Path:
    """Create the run folder; refuse one that holds a run of another config unless `overwrite=true`."""
    run_dir = cfg.run_dir
    saved_path = run_dir / "config.yaml"
    if saved_path.is_file():
        saved = _comparable(yaml.safe_load(saved_path.read_text()))
        current = _comparable(cfg.to_dict())
        if saved != current and not cfg.overwrite:
            keys = sorted(_changed_keys(saved, current))
            raise UserError(
                f"{run_dir} holds a run of another config (differs in {', '.join(keys)}); "
                "name a new experiment (experiment=<name>) or pass overwrite=true to replace it"
            )
        if saved != current:
            shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, saved_path)
    return run_dir


def _changed_keys(a: dict, b: dict, prefix: str = "") -> list[str]:
    changed = []
    for key in set(a) | set(b):
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) and isinstance(y, dict):
            changed += _changed_keys(x, y, f"{prefix}{key}.")
        elif x != y:
            changed.append(prefix + key)
    return changed


def save_fold(run_dir: Path, cfg: Config, result: FoldResult, valid: pd.DataFrame, test_ids: pd.Series) -> None:
    targets = cfg.data.target_columns
    fold_dir = run_dir / f"fold{result.fold}"
    fold_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in result.best_state.items()}, fold_dir / "model.safetensors.tmp")
    (fold_dir / "model.safetensors.tmp").replace(fold_dir / "model.safetensors")
    oof = valid[[cfg.data.id_column, "fold", *targets]].copy()
    oof[[f"{t}_pred" for t in targets]] = result.valid_pred
    write_csv(oof, fold_dir / "oof.csv")
    test = pd.DataFrame(result.test_pred, columns=targets)
    test.insert(0, cfg.data.id_column, test_ids.to_numpy())
    write_csv(test, fold_dir / "test.csv")
    write_json(
        {
            "fold": result.fold,
            "metric": cfg.metric,
            "score": result.best_score,
            "per_target": _by_target(cfg, valid[targets].to_numpy(), result.valid_pred),
            "best_step": result.best_step,
            "train_seconds": round(result.train_seconds, 1),
            "train_samples_per_second": round(result.train_samples_per_second, 2),
            "history": result.history,
        },
        fold_dir / "metrics.json",
    )


def _by_target(cfg: Config, truth: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    return dict(zip(cfg.data.target_columns, per_target(cfg.metric, truth, pred).tolist(), strict=True))


def finished_folds(run_dir: Path) -> list[int]:
    return sorted(int(p.parent.name[4:]) for p in run_dir.glob("fold*/metrics.json"))


def finalize(run_dir: Path) -> dict:
    """Merge the finished folds: OOF, test predictions, metrics; the submission once every fold is there."""
    if not (run_dir / "config.yaml").is_file():
        raise UserError(f"{run_dir} is not a run folder (no config.yaml)")
    cfg = validate(yaml.safe_load((run_dir / "config.yaml").read_text()))
    id_col, targets = cfg.data.id_column, cfg.data.target_columns
    done = finished_folds(run_dir)
    if not done:
        raise UserError(f"{run_dir} holds no finished fold")
    missing = sorted(set(range(cfg.cv.n_folds)) - set(done))
    oof = pd.concat([read_csv(run_dir / f"fold{k}" / "oof.csv") for k in done], ignore_index=True)
    write_csv(oof, run_dir / "oof.csv")
    tests = [read_csv(run_dir / f"fold{k}" / "test.csv") for k in done]
    test_pred = np.mean([t[targets].to_numpy() for t in tests], axis=0)
    merged = tests[0][[id_col]].copy()
    for k, t in zip(done, tests, strict=True):
        merged[[f"{c}_fold{k}" for c in targets]] = t[targets].to_numpy()
    merged[targets] = test_pred
    write_csv(merged, run_dir / "test_predictions.csv")

    fold_metrics = {k: json.loads((run_dir / f"fold{k}" / "metrics.json").read_text()) for k in done}
    fold_scores = [m["score"] for m in fold_metrics.values()]
    truth, pred = oof[targets].to_numpy(), oof[[f"{t}_pred" for t in targets]].to_numpy()
    metrics = {
        "experiment": cfg.experiment,
        "metric": cfg.metric,
        "cv_score": score(cfg.metric, truth, pred),
        "cv_per_target": _by_target(cfg, truth, pred),
        "fold_score_mean": float(np.mean(fold_scores)),
        "fold_score_std": float(np.std(fold_scores)),
        "folds_done": done,
        "folds_missing": missing,
        "train_seconds": round(sum(m["train_seconds"] for m in fold_metrics.values()), 1),
        "folds": {k: {key: v for key, v in m.items() if key != "history"} for k, m in fold_metrics.items()},
    }
    if not missing:
        sample = load_sample_submission(cfg)
        submission = make_submission(sample, merged[id_col], test_pred, id_col, targets)
        cfg.submission_dir.mkdir(parents=True, exist_ok=True)
        path = cfg.submission_dir / f"{cfg.experiment}.csv"
        write_csv(submission, path)
        metrics["submission"] = str(path)
    write_json(metrics, run_dir / "metrics.json")
    return metrics
