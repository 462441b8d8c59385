"""The run folder: one folder per experiment, one subfolder per fold, merged into OOF, metrics, submission. This
module alone knows its layout: every other module asks a `RunFolder` for a path, a file or a check.

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
from safetensors.torch import load_file, save_file

from textreg import plots, postprocess
from textreg.config import Config, DataConfig, changed_keys, is_run_key, validate
from textreg.data import load_sample_submission, read_csv
from textreg.errors import UserError
from textreg.files import atomic_write, check_safetensors, folder_lock, read_json, write_csv, write_json, write_text
from textreg.metrics import Scorer
from textreg.records import FoldResult, ValidationEvent, read_history
from textreg.submission import make_submission

RUN_FORMAT = 2  # the layout of a run folder; bump it when that changes, so old folders are refused clearly
FOLD_FILES = ("model.safetensors", "oof.csv", "test.csv", "metrics.json")


def fold_column(target: str, fold: int) -> str:
    return f"{target}_fold{fold}"


def _comparable(cfg: dict, prefix: str = "") -> dict:
    """The config without its RUN_KEYS (dotted keys reach into sections)."""
    return {
        key: _comparable(value, f"{prefix}{key}.") if isinstance(value, dict) else value
        for key, value in cfg.items()
        if not is_run_key(prefix + key)
    }


def _read_json(path: Path) -> dict:
    """run.json or the merged metrics.json; the message names merging again as the remedy, as it always has."""
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UserError(f"{path} is damaged ({err}); run `python src/merge.py {path.parent}` again") from err


class RunFolder:
    """outputs/<experiment>/: the one owner of its layout, its files' formats and what "finished" means."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.name = self.path.name
        self.backbone_dir = self.path / "backbone"
        self.run_file = self.path / "run.json"
        self.folds_file = self.path / "folds.csv"
        self.oof_file = self.path / "oof.csv"
        self.test_predictions_file = self.path / "test_predictions.csv"
        self.metrics_file = self.path / "metrics.json"
        self.postprocess_file = self.path / "postprocess.json"  # the thresholds fitted on all OOF rows

    @classmethod
    def merged_in(cls, folder: Path) -> list[RunFolder]:
        """The run folders in `folder` whose folds have been merged at least once."""
        return [cls(path.parent) for path in sorted(folder.glob("*/metrics.json"))]

    def __str__(self) -> str:
        return str(self.path)

    def fold_dir(self, fold: int) -> Path:
        return self.path / f"fold{fold}"

    def fold_file(self, fold: int, name: str) -> Path:
        return self.fold_dir(fold) / name

    def predictions_file(self, input_path: Path) -> Path:
        """Where `src/predict.py` writes its predictions of a file."""
        return self.path / "predictions" / input_path.name

    def finished_folds(self) -> list[int]:
        """Folds whose last file (metrics.json, written after the others) is there."""
        return sorted(int(p.parent.name.removeprefix("fold")) for p in self.path.glob("fold*/metrics.json"))

    def fold_metrics(self, fold: int) -> dict:
        return read_json(self.fold_file(fold, "metrics.json"))

    def metrics(self) -> dict:
        """The merged metrics (metrics.json at the top of the folder)."""
        return _read_json(self.metrics_file)

    def fold_weights(self, fold: int, device: str = "cpu") -> dict[str, torch.Tensor]:
        return load_file(self.fold_file(fold, "model.safetensors"), device=device)

    def fold_json(self, fold: int, name: str) -> object | None:
        """A member's extra file of a fold (`FoldResult.extra_json`); None when the fold has none of that name."""
        path = self.fold_file(fold, name)
        return read_json(path) if path.is_file() else None

    def load_config(self) -> Config:
        """The saved config, validated (keys added to the template since get their defaults)."""
        try:
            return validate(yaml.safe_load((self.path / "config.yaml").read_text()))
        except yaml.YAMLError as err:
            raise UserError(f"{self.path}/config.yaml is damaged ({err})") from err

    def config(self) -> Config:
        if not (self.path / "config.yaml").is_file():
            raise UserError(f"{self.path} is not a run folder (no config.yaml)")
        self.check_format()
        return self.load_config()

    def check_format(self) -> None:
        found = _read_json(self.run_file).get("run_format") if self.run_file.is_file() else None
        if found != RUN_FORMAT:
            raise UserError(
                f"{self.path} was written by another version of this template (run format {found}, this one reads "
                f"{RUN_FORMAT}); train it again under a new experiment name, or pass overwrite=true"
            )

    def check_fold(self, fold: int) -> None:
        """Every file of a finished fold is there, and the checkpoint's header reads."""
        fold_dir = self.fold_dir(fold)
        again = f"delete {fold_dir} and train the fold again (folds=[{fold}])"
        missing = [name for name in FOLD_FILES if not (fold_dir / name).is_file()]
        if missing:
            raise UserError(f"{fold_dir}: missing {missing}; {again}")
        try:
            check_safetensors(fold_dir / "model.safetensors")
        except Exception as err:  # safetensors raises its own error types for a damaged header
            raise UserError(f"{fold_dir}/model.safetensors is corrupt ({err}); {again}") from err

    def require_finished(self, weights: bool = True) -> Config:
        """The one notion of a finished run: a run folder of this template's format whose every fold is finished
        and whose folds are merged (metrics.json with no fold missing). Returns its config; says what is missing if
        not. `weights=False`: the folds' files need not be here (their predictions are), for runs trained elsewhere."""
        cfg = self.config()
        missing = sorted(set(range(cfg.cv.n_folds)) - set(self.finished_folds()))
        if missing:
            raise UserError(f"{self.path}: folds {missing} are not finished; train them (folds={missing})")
        merged = [self.metrics_file, self.oof_file, self.test_predictions_file]
        if not all(path.is_file() for path in merged) or self.metrics().get("folds_missing") != []:
            raise UserError(f"{self.path}: its folds are not merged; run `python src/merge.py {self.path}`")
        if weights:
            for fold in range(cfg.cv.n_folds):
                self.check_fold(fold)
        return cfg

    def is_finished(self) -> bool:
        try:
            self.require_finished()
        except UserError:
            return False
        return True

    def check_writable(self, config: dict) -> None:
        """Read-only, on every process: may a run of `config` (a resolved config's dict, with `overwrite`) write
        here? Finished folds of the same config are kept (a rerun resumes); another config, or another template
        version, is refused unless `overwrite=true`."""
        if config["overwrite"] or not (self.path / "config.yaml").is_file():
            return
        # validated, so that keys added to the template since get their defaults, as they do in `config`
        saved, current = _comparable(self.config().to_dict()), _comparable(config)
        if saved != current:
            keys = sorted(changed_keys(saved, current))
            raise UserError(
                f"{self.path} holds a run of another config (differs in {', '.join(keys)}); "
                "name a new experiment (experiment=<name>) or pass overwrite=true to replace it"
            )

    # Writing: the main process only.
    def prepare(self, config: dict, environment: dict) -> None:
        """After `check_writable`: create (or with overwrite, replace) the folder; record the config (a resolved
        config's dict) and, for every launch into it, where and with what it ran."""
        if config["overwrite"] and self.path.exists():
            shutil.rmtree(self.path)
        self.path.mkdir(parents=True, exist_ok=True)
        write_text(yaml.safe_dump(config, sort_keys=False), self.path / "config.yaml")
        with folder_lock(self.path):  # launches into one folder at once: each adds its entry to the others'
            launches = json.loads(self.run_file.read_text())["launches"] if self.run_file.is_file() else []
            write_json({"run_format": RUN_FORMAT, "launches": [*launches, environment]}, self.run_file)

    def save_fold(
        self,
        result: FoldResult,
        data: DataConfig,
        scorer: Scorer,
        valid: pd.DataFrame,
        test_ids: pd.Series,
        train_ids: pd.Series,
    ) -> None:
        """A fold's files; metrics.json last, which marks the fold finished."""
        targets, fold_dir = data.target_columns, self.fold_dir(result.fold)
        state = {k: v.contiguous() for k, v in result.state.items()}
        atomic_write(fold_dir / "model.safetensors", lambda tmp: save_file(state, tmp))
        for name, content in result.extra_json.items():
            write_json(content, fold_dir / name)
        if result.fitted_pred is not None:
            fitted = pd.DataFrame(result.fitted_pred, columns=[f"{t}_pred" for t in targets])
            fitted.insert(0, data.id_column, train_ids.to_numpy())
            write_csv(fitted, fold_dir / "fitted.csv")
        oof = valid[[data.id_column, "fold", *targets, "text_length"]].copy()
        oof[[f"{t}_pred" for t in targets]] = result.valid_pred
        write_csv(oof, fold_dir / "oof.csv")
        test = pd.DataFrame(result.test_pred, columns=targets)
        test.insert(0, data.id_column, test_ids.to_numpy())
        write_csv(test, fold_dir / "test.csv")
        write_json(
            {
                "fold": result.fold,
                "metric": scorer.name,
                "score": result.best_score,
                "per_target": _by_target(targets, scorer, valid[targets].to_numpy(), result.valid_pred),
                "best_step": result.best_step,
                "train_seconds": round(result.train_seconds, 1),
                "train_samples_per_second": round(result.train_samples_per_second, 2),
                "history": [event.to_dict() for event in result.history],
            },
            fold_dir / "metrics.json",
        )

    def merge(self) -> dict:
        """Merge the finished folds: OOF, test predictions, metrics; the submission once every fold is there. One
        launch at a time: a launch that saw fewer folds never writes its merge over a later one's."""
        with folder_lock(self.path):
            return self._merge()

    def _merge(self) -> dict:
        cfg = self.config()
        id_col, targets = cfg.data.id_column, cfg.data.target_columns
        done = self.finished_folds()
        if not done:
            raise UserError(f"{self.path} holds no finished fold")
        for k in done:
            self.check_fold(k)
        missing = sorted(set(range(cfg.cv.n_folds)) - set(done))
        oof = pd.concat([read_csv(self.fold_file(k, "oof.csv")) for k in done], ignore_index=True)
        write_csv(oof, self.oof_file)
        tests = [read_csv(self.fold_file(k, "test.csv")) for k in done]
        test_pred = np.mean([t[targets].to_numpy() for t in tests], axis=0)
        merged = tests[0][[id_col]].copy()
        for k, t in zip(done, tests, strict=True):
            merged[[fold_column(c, k) for c in targets]] = t[targets].to_numpy()
        merged[targets] = test_pred
        write_csv(merged, self.test_predictions_file)

        fold_metrics = {k: self.fold_metrics(k) for k in done}
        fold_scores = [m["score"] for m in fold_metrics.values()]
        truth, pred = oof[targets].to_numpy(), oof[[f"{t}_pred" for t in targets]].to_numpy()
        metrics = {
            "experiment": cfg.experiment,
            "metric": cfg.metric,
            "cv_score": cfg.scorer.score(truth, pred),
            "cv_per_target": _by_target(targets, cfg.scorer, truth, pred),
            "fold_score_mean": float(np.mean(fold_scores)),
            "fold_score_std": float(np.std(fold_scores)),
            "folds_done": done,
            "folds_missing": missing,
            "train_seconds": round(sum(m["train_seconds"] for m in fold_metrics.values()), 1),
            "folds": {k: {key: v for key, v in m.items() if key != "history"} for k, m in fold_metrics.items()},
        }
        if postprocess.is_active(cfg.postprocess):
            nested = postprocess.nested_oof(pred, truth, oof["fold"].to_numpy(), cfg.postprocess, cfg.scorer)
            metrics["cv_score_postprocessed"] = cfg.scorer.score(truth, nested)
            write_json({"thresholds": postprocess.fit(pred, truth, cfg.postprocess, cfg.scorer)}, self.postprocess_file)
        if not missing:
            submitted = self.postprocessed(test_pred)
            submission = make_submission(load_sample_submission(cfg.data), merged[id_col], submitted, id_col, targets)
            path = cfg.submission_dir / f"{cfg.experiment}.csv"
            write_csv(submission, path)
            metrics["submission"] = str(path)
        histories = {k: read_history(m) for k, m in fold_metrics.items()}
        metrics["plots"] = {k: str(v) for k, v in plots.save_all(self.path, oof, histories, metrics, targets).items()}
        write_json(metrics, self.metrics_file)
        return metrics

    def postprocessed(self, pred: np.ndarray) -> np.ndarray:
        """What is submitted from the run's raw (rows, targets) predictions: its config's `postprocess`, with the
        thresholds its merge fitted."""
        cfg = self.load_config()
        if not postprocess.is_active(cfg.postprocess):
            return pred
        thresholds = read_json(self.postprocess_file)["thresholds"] if self.postprocess_file.is_file() else None
        return postprocess.apply(pred, cfg.postprocess, cfg.data.score_range, thresholds)

    def fold_histories(self) -> list[list[ValidationEvent]]:
        """The validation curve of each finished fold that the merged metrics count."""
        return [read_history(self.fold_metrics(fold)) for fold in self.metrics()["folds_done"]]


def _by_target(targets: list[str], scorer: Scorer, truth: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    return dict(zip(targets, scorer.per_target(truth, pred).tolist(), strict=True))


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
