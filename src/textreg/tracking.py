"""Tracking: every fold a Weights & Biases run, grouped by experiment, and one "cv" run for the whole experiment.

Only the main process talks to W&B. `tracking.mode: auto` is online when the user is logged in and offline
otherwise (sync later with `wandb sync`); `disabled` (or WANDB_MODE=disabled) writes nothing at all.
"""

from __future__ import annotations

import netrc
import os
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from textreg.config import TrackingConfig


def logged_in() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def resolve_mode(setting: str) -> str:
    env = os.environ.get("WANDB_MODE")
    if setting == "disabled" or env == "disabled":
        return "disabled"
    if setting != "auto":
        return setting
    if env in ("online", "offline"):
        return env
    return "online" if logged_in() else "offline"


class Tracker:
    """Opens, logs to and always finishes W&B runs of one `group` (an experiment, a pretraining, an ensemble), their
    local files under `folder`; does nothing off the main process or when disabled."""

    def __init__(self, tracking: TrackingConfig, group: str, folder: Path, is_main_process: bool) -> None:
        self.tracking, self.group, self.folder = tracking, group, folder
        self.mode = resolve_mode(tracking.mode) if is_main_process else "disabled"
        self.run = None

    @property
    def enabled(self) -> bool:
        return self.mode != "disabled"

    @contextmanager
    def open_run(self, job_type: str, name: str, config: dict) -> Iterator[object | None]:
        if not self.enabled:
            yield None
            return
        import wandb  # imported only when used: it is slow to import and starts a service

        self.folder.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            project=self.tracking.project,
            entity=self.tracking.entity,
            group=self.group,
            job_type=job_type,
            name=name,
            config=config,
            mode=self.mode,
            dir=str(self.folder),
            reinit="create_new",
            settings=wandb.Settings(console="off", silent=True),
        )
        exit_code = 1  # a fold that raises still finishes its run, marked as failed
        try:
            yield self.run
            exit_code = 0
        finally:
            self.run.finish(exit_code=exit_code)
            self.run = None

    def fold_run(self, fold: int, config: dict) -> AbstractContextManager:
        return self.open_run("fold", f"{self.group}-fold{fold}", {**config, "fold": fold})

    def log(self, values: dict, step: int) -> None:
        if self.run is not None:
            self.run.log(values, step=step)

    def summarize(self, values: dict) -> None:
        if self.run is not None:
            self.run.summary.update(values)

    def log_cv(self, metrics: dict, files: dict[str, Path], plots: dict[str, Path], config: dict) -> None:
        """The experiment's own run: overall score, a per-fold table, plots, and its files as an artifact."""
        if not self.enabled:
            return
        import wandb

        metric = metrics["metric"]
        with self.open_run("cv", f"{self.group}-cv", config) as run:
            summary = {f"cv/{metric}": metrics["cv_score"], "cv/fold_std": metrics["fold_score_std"]}
            summary.update({f"cv/{metric}_{t}": v for t, v in metrics["cv_per_target"].items()})
            columns = ["fold", metric, "best_step", "train_seconds"]
            rows = [[int(k), m["score"], m["best_step"], m["train_seconds"]] for k, m in metrics["folds"].items()]
            run.log({**summary, "folds": wandb.Table(columns=columns, data=rows)})
            run.log({f"plots/{name}": wandb.Image(str(path)) for name, path in plots.items()})
            run.summary.update(summary)
            self.log_files("predictions", files)

    def log_files(self, kind: str, files: dict[str, Path]) -> None:
        """Files of the open run as one W&B artifact named after the experiment."""
        import wandb

        artifact = wandb.Artifact(f"{self.group}-{kind}", type=kind)
        for name, path in files.items():
            if path.is_file():
                artifact.add_file(str(path), name=name)
        self.run.log_artifact(artifact)
