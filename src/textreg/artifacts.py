"""Artefacts of a run: one folder per experiment, one subfolder per fold, merged into OOF, metrics, submission.

outputs/<experiment>/config.yaml          resolved config
                    folds.csv            fold assignment (id, fold)
                    backbone/            what predicting needs besides the folds: the tokenizer and config of a
                                         fine-tuned backbone; the tokenizer (and the weights, for embeddings)
                                         of a classical member's backbone
                    fold<k>/model.safetensors, oof.csv, test.csv, metrics.json
                         (fitted.csv: the fold's predictions of its own training rows, with train.save_fitted)
                    oof.csv              id, fold, targets, <target>_pred (merged over folds)
                    test_predictions.csv id, <target>_fold<k> and their mean <target>
                    metrics.json         per-fold and overall CV RMSE, best steps, times
submissions/<experiment>.csv             the sample submission's format, mean over folds
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import save_file

from textreg import plots
from textreg.config import Config, changed_keys, is_run_key, save_config, validate
from textreg.data import load_sample_submission, read_csv
from textreg.errors import UserError
from textreg.files import atomic_write, folder_lock, write_csv, write_json
from textreg.metrics import per_target, score
from textreg.records import FoldResult, read_history
from textreg.submission import make_submission

RUN_FORMAT = 1  # the layout of a run folder; bump it when that changes, so old folders are refused clearly
FOLD_FILES = ("model.safetensors", "oof.csv", "test.csv", "metrics.json")


def _comparable(cfg: dict, prefix: str = "") -> dict:
    """The config without its RUN_KEYS (dotted keys reach into sections)."""
    return {
        key: _comparable(value, f"{prefix}{key}.") if isinstance(value, dict) else value
        for key, value in cfg.items()
        if not is_run_key(prefix + key)
    }


def check_run_dir(cfg: Config) -> None:
    """Read-only, on every process: may this run write into its folder? Finished folds of the same config are
    kept (a rerun resumes); another config, or another template version, is refused unless `overwrite=true`."""
    run_dir, saved_path = cfg.run_dir, cfg.run_dir / "config.yaml"
    if cfg.overwrite or not saved_path.is_file():
        return
    check_run_format(run_dir)
    # validated, so that keys added to the template since get their defaults, as they do in `cfg`
    saved, current = _comparable(load_run_config(run_dir).to_dict()), _comparable(cfg.to_dict())
    if saved != current:
        keys = sorted(changed_keys(saved, current))
        raise UserError(
            f"{run_dir} holds a run of another config (differs in {', '.join(keys)}); "
            "name a new experiment (experiment=<name>) or pass overwrite=true to replace it"
        )


def check_run_format(run_dir: Path) -> None:
    path = run_dir / "run.json"
    found = _read_json(path).get("run_format") if path.is_file() else None
    if found != RUN_FORMAT:
        raise UserError(
            f"{run_dir} was written by another version of this template (run format {found}, this one reads "
            f"{RUN_FORMAT}); train it again under a new experiment name, or pass overwrite=true"
        )


def prepare_run_dir(cfg: Config, environment: dict) -> None:
    """Main process only, after `check_run_dir`: create (or with overwrite, replace) the folder; record the
    config and, for every launch into it, where and with what it ran."""
    run_dir = cfg.run_dir
    if cfg.overwrite and run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    path = run_dir / "run.json"
    with folder_lock(run_dir):  # launches into one folder at once: each adds its entry to the others'
        launches = json.loads(path.read_text())["launches"] if path.is_file() else []
        write_json({"run_format": RUN_FORMAT, "launches": [*launches, environment]}, path)


def describe_environment(folds: list[int], launch: dict) -> dict:
    """What a number depends on besides the config: code version, packages, hardware."""
    repo = Path(__file__).resolve().parents[2]

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    status = git("status", "--porcelain", "--untracked-files=no")
    packages = ("torch", "transformers", "accelerate", "tokenizers", "numpy", "pandas", "scikit-learn")
    return {
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
        "folds": folds,
        "git_commit": git("rev-parse", "HEAD"),
        "git_dirty": None if status is None else bool(status),
        "python": platform.python_version(),
        "packages": {name: importlib.metadata.version(name) for name in packages},
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        **launch,
    }


def save_fold(
    run_dir: Path, cfg: Config, result: FoldResult, valid: pd.DataFrame, test_ids: pd.Series, train_ids: pd.Series
) -> None:
    targets = cfg.data.target_columns
    fold_dir = run_dir / f"fold{result.fold}"
    state = {k: v.contiguous() for k, v in result.state.items()}
    atomic_write(fold_dir / "model.safetensors", lambda tmp: save_file(state, tmp))
    for name, content in result.extra_json.items():
        write_json(content, fold_dir / name)
    if result.fitted_pred is not None:
        fitted = pd.DataFrame(result.fitted_pred, columns=[f"{t}_pred" for t in targets])
        fitted.insert(0, cfg.data.id_column, train_ids.to_numpy())
        write_csv(fitted, fold_dir / "fitted.csv")
    oof = valid[[cfg.data.id_column, "fold", *targets, "text_length"]].copy()
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
            "history": [event.to_dict() for event in result.history],
        },
        fold_dir / "metrics.json",
    )


def _by_target(cfg: Config, truth: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    return dict(zip(cfg.data.target_columns, per_target(cfg.metric, truth, pred).tolist(), strict=True))


def finished_folds(run_dir: Path) -> list[int]:
    """Folds whose last file (metrics.json, written after the others) is there."""
    return sorted(int(p.parent.name[4:]) for p in run_dir.glob("fold*/metrics.json"))


def open_run(run_dir: Path) -> Config:
    """The config of a run folder of this template's format."""
    if not (run_dir / "config.yaml").is_file():
        raise UserError(f"{run_dir} is not a run folder (no config.yaml)")
    check_run_format(run_dir)
    return load_run_config(run_dir)


def require_finished(run_dir: Path, weights: bool = True) -> Config:
    """The one notion of a finished run: a run folder of this template's format whose every fold is finished and
    whose folds are merged (metrics.json with no fold missing). Returns its config; says what is missing if not.
    `weights=False`: the folds' files need not be here (their predictions are), for runs trained elsewhere."""
    cfg = open_run(run_dir)
    missing = sorted(set(range(cfg.cv.n_folds)) - set(finished_folds(run_dir)))
    if missing:
        raise UserError(f"{run_dir}: folds {missing} are not finished; train them (folds={missing})")
    merged = [run_dir / name for name in ("metrics.json", "oof.csv", "test_predictions.csv")]
    if not all(path.is_file() for path in merged) or _read_json(merged[0]).get("folds_missing") != []:
        raise UserError(f"{run_dir}: its folds are not merged; run `python src/merge.py {run_dir}`")
    if weights:
        for fold in range(cfg.cv.n_folds):
            check_fold_dir(run_dir / f"fold{fold}")
    return cfg


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UserError(f"{path} is damaged ({err}); run `python src/merge.py {path.parent}` again") from err


def is_finished(run_dir: Path) -> bool:
    try:
        require_finished(run_dir)
    except UserError:
        return False
    return True


def check_fold_dir(fold_dir: Path) -> None:
    """Every file of a finished fold is there, and the checkpoint's header reads."""
    missing = [name for name in FOLD_FILES if not (fold_dir / name).is_file()]
    if missing:
        raise UserError(f"{fold_dir}: missing {missing}; {_train_again(fold_dir)}")
    try:
        with safe_open(fold_dir / "model.safetensors", framework="pt") as checkpoint:
            checkpoint.keys()
    except Exception as err:  # safetensors raises its own error types for a damaged header
        raise UserError(f"{fold_dir}/model.safetensors is corrupt ({err}); {_train_again(fold_dir)}") from err


def _train_again(fold_dir: Path) -> str:
    return f"delete {fold_dir} and train the fold again (folds=[{fold_dir.name[4:]}])"


def load_run_config(run_dir: Path) -> Config:
    try:
        return validate(yaml.safe_load((run_dir / "config.yaml").read_text()))
    except yaml.YAMLError as err:
        raise UserError(f"{run_dir}/config.yaml is damaged ({err})") from err


def finalize(run_dir: Path) -> dict:
    """Merge the finished folds: OOF, test predictions, metrics; the submission once every fold is there. One
    launch at a time: a launch that saw fewer folds never writes its merge over a later one's."""
    with folder_lock(run_dir):
        return _merge(run_dir)


def _merge(run_dir: Path) -> dict:
    cfg = open_run(run_dir)
    id_col, targets = cfg.data.id_column, cfg.data.target_columns
    done = finished_folds(run_dir)
    if not done:
        raise UserError(f"{run_dir} holds no finished fold")
    for k in done:
        check_fold_dir(run_dir / f"fold{k}")
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
        path = cfg.submission_dir / f"{cfg.experiment}.csv"
        write_csv(submission, path)
        metrics["submission"] = str(path)
    histories = {k: read_history(m) for k, m in fold_metrics.items()}
    metrics["plots"] = {k: str(v) for k, v in plots.save_all(run_dir, oof, histories, metrics, targets).items()}
    write_json(metrics, run_dir / "metrics.json")
    return metrics
