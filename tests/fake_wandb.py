"""A stand-in for the part of the `wandb` API that src/textreg/tracking.py uses, recording every run in memory.

Tests that want it take the `fake_wandb` fixture (their module imports `fake_wandb_fixture`, which pytest registers
under that name). tracking.py
imports wandb inside its functions, so the stand-in only has to be in `sys.modules` while the test runs: the tests
train in their own process and read back exactly what the project passed to W&B, instead of W&B's private file format.

Every signature is explicit and keyword names are a subset of the real ones (test_tracking checks that against the
installed wandb), so a misspelt or unknown argument fails here as it would against W&B.
"""

from __future__ import annotations

import copy
import importlib.machinery
import sys
import types
from pathlib import Path
from typing import Any

import pytest

MODES = ("online", "offline", "disabled", "shared")


class Settings:
    def __init__(self, *, console: str = "auto", silent: bool = False) -> None:
        self.console, self.silent = console, silent


class Table:
    def __init__(self, columns: list | None = None, data: list | None = None) -> None:
        self.columns = list(columns or [])
        self.data = [list(row) for row in data or []]
        if any(len(row) != len(self.columns) for row in self.data):
            raise ValueError(f"a row of another length than the columns {self.columns}")


class Image:
    def __init__(self, data_or_path: Any, caption: str | None = None) -> None:
        if isinstance(data_or_path, str | Path) and not Path(data_or_path).is_file():
            raise FileNotFoundError(data_or_path)
        self.data_or_path, self.caption = data_or_path, caption


class Artifact:
    def __init__(self, name: str, type: str, description: str | None = None, metadata: dict | None = None) -> None:
        self.name, self.type, self.description, self.metadata = name, type, description, metadata
        self.files: dict[str, Path] = {}  # name in the artifact -> local file

    def add_file(self, local_path: str, name: str | None = None) -> None:
        path = Path(local_path)
        if not path.is_file():
            raise ValueError(f"Path is not a file: {local_path}")
        name = name or path.name
        if name in self.files:
            raise ValueError(f"File with name {name!r} already added to the artifact")
        self.files[name] = path


class Summary(dict):
    """A run's summary: the last value of each key, as `run.summary.update({...})` leaves it."""


class Run:
    """One `wandb.init()`: its arguments, every `log` call (with its `_step`), summary, artifacts and exit code."""

    def __init__(self, init: dict) -> None:
        self.init = init
        self.history: list[dict] = []
        self.summary = Summary()
        self.artifacts: list[Artifact] = []
        self.exit_code: int | None = None
        self.finished = False
        self._step = 0

    project = property(lambda self: self.init["project"])
    group = property(lambda self: self.init["group"])
    job_type = property(lambda self: self.init["job_type"])
    name = property(lambda self: self.init["name"])
    config = property(lambda self: self.init["config"])
    mode = property(lambda self: self.init["mode"])

    def __repr__(self) -> str:
        return f"Run(name={self.name!r}, job_type={self.job_type!r}, exit_code={self.exit_code!r})"

    def _check_open(self, call: str) -> None:
        if self.finished:
            raise RuntimeError(f"{call} on the finished run {self.name!r}")

    def log(self, data: dict, step: int | None = None, commit: bool | None = None) -> None:
        self._check_open("log")
        if not isinstance(data, dict):
            raise ValueError("wandb.log must be passed a dictionary")
        if not all(isinstance(key, str) for key in data):
            raise TypeError("Key values passed to `wandb.log` must be strings.")
        if step is None:
            step = self._step
            self._step += 1
        elif step < self._step:  # real W&B drops such a row with only a warning; here it fails the test
            raise ValueError(f"step {step} logged after step {self._step} in run {self.name!r}")
        else:
            self._step = step
        self.history.append({"_step": step, **copy.deepcopy(data)})

    def finish(self, exit_code: int | None = None) -> None:
        self._check_open("finish")
        self.finished, self.exit_code = True, 0 if exit_code is None else exit_code

    def log_artifact(
        self,
        artifact_or_path: Artifact,
        name: str | None = None,
        type: str | None = None,
        aliases: list[str] | None = None,
        tags: list[str] | None = None,
    ) -> Artifact:
        self._check_open("log_artifact")
        if not isinstance(artifact_or_path, Artifact):
            raise TypeError("the stand-in takes only an Artifact")
        self.artifacts.append(artifact_or_path)
        return artifact_or_path


class FakeWandb(types.ModuleType):
    """The `wandb` module as the project sees it; `runs` holds every run opened, in order."""

    Settings = Settings
    Table = Table
    Image = Image
    Artifact = Artifact

    def __init__(self) -> None:
        super().__init__("wandb")
        # A spec, so that importlib.util.find_spec("wandb") (transformers, accelerate) answers instead of raising.
        self.__spec__ = importlib.machinery.ModuleSpec("wandb", None)
        self.runs: list[Run] = []

    def init(
        self,
        *,
        entity: str | None = None,
        project: str | None = None,
        dir: str | None = None,
        name: str | None = None,
        config: dict | None = None,
        group: str | None = None,
        job_type: str | None = None,
        mode: str | None = None,
        reinit: bool | str | None = None,
        settings: Settings | dict | None = None,
    ) -> Run:
        if mode is not None and mode not in MODES:
            raise ValueError(f"mode={mode!r}: one of {MODES}")
        if settings is not None and not isinstance(settings, Settings | dict):
            raise TypeError(f"settings: a wandb.Settings or a dict, not {type(settings).__name__}")
        if any(not run.finished for run in self.runs) and reinit not in ("create_new", "finish_previous", True):
            raise RuntimeError("wandb.init() while another run is open, without reinit")
        init = dict(
            entity=entity,
            project=project,
            dir=dir,
            name=name,
            config=copy.deepcopy(config or {}),
            group=group,
            job_type=job_type,
            mode=mode,
            reinit=reinit,
            settings=settings,
        )
        run = Run(init)
        self.runs.append(run)
        return run

    def run(self, name: str) -> Run:
        """The one run of that name."""
        (run,) = [r for r in self.runs if r.name == name]
        return run


@pytest.fixture(name="fake_wandb")
def fake_wandb_fixture(monkeypatch) -> FakeWandb:
    """The stand-in as `wandb` for this test; the real module (if imported before) is back afterwards."""
    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    return fake


def offline_run_folders(wandb_dir: Path) -> list[Path]:
    """What the real wandb leaves on disk in offline mode, read only as far as it is stable: one `offline-run-*`
    folder per run, each with a `run-*.wandb` file (whose private format the tests never parse)."""
    return sorted(p for p in wandb_dir.glob("offline-run-*") if p.is_dir())
