"""Studies on Optuna: one Optuna study per study file in a shared storage, workers that take its trials one at a
time, and each trial an ordinary training run in a subprocess whose folds are reported as they finish.

Exactly once: every grid pair is enqueued as a WAITING trial (skipped if it already has one that is not failed);
a worker pops a trial atomically (RDB row locks; on one machine, pops are also serialised through a lock file, as
SQLite does not lock rows). Two workers that enqueue at the same moment may make two trials for one run: the one
with the lowest number that has not failed is the run's trial, and any other is skipped without training. A run
folder that is already finished is never trained again. A killed worker stops beating; its trial is failed and
enqueued again (Optuna's heartbeat and RetryHeartbeatStaleTrialCallback), and its run resumes from its finished
folds.

Workers call ask and tell, not study.optimize, which can neither pop its trial inside the lock file and beat for it
from that moment nor skip a trial without training it.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import optuna
import psutil
from optuna.storages import BaseStorage, JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from textreg.artifacts import RunFolder
from textreg.errors import UserError
from textreg.files import locked
from textreg.studies import Param, Run, Study

TRAIN_SCRIPT = Path(__file__).resolve().parents[1] / "train.py"
MAX_RETRIES = 3  # a trial whose worker dies this often is left failed
optuna.logging.set_verbosity(optuna.logging.WARNING)


class Skipped(Exception):
    """A trial that trains nothing: a second trial for one run, or one over the search's budget."""


class TrainingFailed(Exception):
    """A trial's training exited with an error or left its run unfinished: the trial fails, the study goes on."""


@dataclass(frozen=True)
class Launch:
    """How a worker trains a trial: `launcher src/train.py --config ... experiment=<run> <overrides>`."""

    launcher: tuple[str, ...]  # e.g. ("accelerate", "launch")
    overrides: tuple[str, ...]  # the command line's, after each run's own
    output_dir: Path
    log_dir: Path
    poll_seconds: float = 0.2  # how soon a finished fold is reported (and a pruned training stopped)


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence the warnings of the experimental heartbeat, used outside study.optimize (which cannot skip a trial)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", "Heartbeat of storage is supposed to be used with Study.optimize")
        yield


def resolve_launcher(text: str) -> tuple[str, ...]:
    """The launcher's words, its program found beside this Python first (the venv's `accelerate`, `python`)."""
    words = shlex.split(text) or [""]
    beside = Path(sys.executable).parent / words[0]
    found = str(beside) if words[0] and beside.is_file() else shutil.which(words[0])
    if not words[0] or not found:
        raise UserError(f"--launcher {text!r}: no such program")
    return (found, *words[1:])


def open_storage(url: str, heartbeat: int) -> BaseStorage:
    """An Optuna storage: `journal:<file>` (a journal file on a shared file system; Optuna has no heartbeat for it),
    else an RDB URL (sqlite:///..., postgresql://..., mysql://...) with a heartbeat every `heartbeat` seconds."""
    if url.startswith("journal:"):
        return JournalStorage(JournalFileBackend(url.removeprefix("journal:")))
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    with _quiet():
        return RDBStorage(
            url,
            engine_kwargs=engine,
            heartbeat_interval=heartbeat,
            grace_period=3 * heartbeat,
            heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(MAX_RETRIES),
        )


def heartbeat_seconds(storage: BaseStorage) -> int | None:
    """The storage's heartbeat interval; None where it has none (a journal file)."""
    return storage.get_heartbeat_interval() if isinstance(storage, RDBStorage) else None


def storage_trial_id(storage: BaseStorage, study_db: optuna.Study, trial: optuna.Trial) -> int:
    """The id the storage knows a trial by, which its heartbeats and its stored record (with the system attributes
    that mark a retry) go by. optuna.Trial does not show it: the storage's public methods find it from the study's
    name and the trial's number (tests/test_study.py pins that heartbeats recorded for it keep the trial alive)."""
    study_id = storage.get_study_id_from_name(study_db.study_name)
    return storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)


def optuna_study(study: Study, storage: BaseStorage) -> optuna.Study:
    """The study file's Optuna study, made on first use, on the side of its metric. A search samples with TPE and
    prunes on fold scores."""
    search = study.search
    pruner = optuna.pruners.MedianPruner(**search.pruner) if search and search.pruner else optuna.pruners.NopPruner()
    sampler = optuna.samplers.TPESampler() if search else optuna.samplers.RandomSampler()
    direction = "maximize" if study.scorer.higher_is_better else "minimize"
    return optuna.create_study(
        study_name=study.name, storage=storage, sampler=sampler, pruner=pruner, direction=direction, load_if_exists=True
    )


def enqueue_grid(study: Study, runs: list[Run], storage: BaseStorage) -> None:
    """One WAITING trial for each of `runs` that has no trial but failed ones: a failed run is tried again."""
    study_db = optuna_study(study, storage)
    present = {t.user_attrs.get("run") for t in study_db.get_trials(deepcopy=False) if t.state != TrialState.FAIL}
    for run in runs:
        if run.name not in present:
            study_db.enqueue_trial({"setting": run.setting, "seed": run.seed}, user_attrs={"run": run.name})


def trial_records(study: Study, storage: BaseStorage) -> list[dict]:
    """The study's trials as the tables read them; none if the storage does not hold the study yet."""
    try:
        trials = optuna.load_study(study_name=study.name, storage=storage).get_trials(deepcopy=False)
    except KeyError:
        return []
    return [
        {
            "number": t.number,
            "run": t.user_attrs.get("run"),
            "state": t.state.name,
            "params": t.params,
            "fold_scores": t.intermediate_values,
            "skipped": t.user_attrs.get("skipped"),
        }
        for t in trials
    ]


def failed_runs(studies: list[Study], storage: BaseStorage, since: datetime) -> list[str]:
    """Runs whose last trial that trained failed after `since` (a failed grid run is tried again next time)."""
    failed = []
    for study in studies:
        trials = optuna_study(study, storage).get_trials(deepcopy=False)
        last = {t.user_attrs["run"]: t for t in trials if t.user_attrs.get("run") and not t.user_attrs.get("skipped")}
        failed += [
            run
            for run, trial in last.items()
            if trial.state == TrialState.FAIL and trial.datetime_start and trial.datetime_start >= since
        ]
    return failed


def work(studies: list[Study], grid_runs: dict[str, Run], storage: BaseStorage, launch: Launch, lock: Path) -> None:
    """Take trials, the study files in order, until none is left; while another worker's trial runs, wait: if
    that worker dies, its trial comes back."""
    study_dbs = [(study, optuna_study(study, storage)) for study in studies]
    interval = heartbeat_seconds(storage)
    with _quiet():
        while True:
            for study, study_db in study_dbs:
                with locked(lock):  # workers on one machine take trials one at a time (SQLite has no row locks)
                    if interval:
                        optuna.storages.fail_stale_trials(study_db)
                    trial = _next_trial(study, study_db)
                    if trial:
                        trial_id = storage_trial_id(storage, study_db, trial)
                        if interval:  # before the lock goes: a worker killed from now on leaves a stale trial
                            storage.record_heartbeat(trial_id)
                if trial:
                    with _heartbeat(storage, trial_id):
                        _run_trial(study, study_db, trial, storage.get_trial(trial_id), grid_runs, launch)
                    break
            else:
                running = any(db.get_trials(deepcopy=False, states=(TrialState.RUNNING,)) for _, db in study_dbs)
                if not (running and interval):
                    return
                time.sleep(min(interval, 5))


def _next_trial(study: Study, study_db: optuna.Study) -> optuna.Trial | None:
    """A WAITING trial (a grid pair, or a search trial to retry), else a new search trial within the budget."""
    trials = study_db.get_trials(deepcopy=False)
    waiting = any(t.state == TrialState.WAITING for t in trials)
    counted = [t for t in trials if t.state != TrialState.FAIL and not t.user_attrs.get("skipped")]
    return study_db.ask() if waiting or (study.search and len(counted) < study.search.trials) else None


def _run_trial(
    study: Study,
    study_db: optuna.Study,
    trial: optuna.Trial,
    stored: FrozenTrial,
    grid_runs: dict[str, Run],
    launch: Launch,
) -> None:
    try:
        value = train(trial, _trial_run(study, study_db, trial, stored, grid_runs), launch)
    except Skipped as reason:
        trial.set_user_attr("skipped", str(reason))
        study_db.tell(trial, state=TrialState.FAIL)
    except optuna.TrialPruned:
        study_db.tell(trial, state=TrialState.PRUNED)
    except TrainingFailed as err:
        print(f"failed   {err}", flush=True)
        study_db.tell(trial, state=TrialState.FAIL)
    else:
        study_db.tell(trial, value)


def _trial_run(
    study: Study, study_db: optuna.Study, trial: optuna.Trial, stored: FrozenTrial, grid_runs: dict[str, Run]
) -> Run:
    """The trial's run; Skipped when the trial is not the one that trains it. `stored` is the trial as the storage
    holds it (optuna.Trial shows no system attributes, where a retry is marked). A grid trial names its run in the
    user attribute it was enqueued with, which a retry copies; a trial that ask() made because another worker had
    taken the waiting one has none."""
    if study.search:
        run = _search_run(study, study_db, trial, RetryHeartbeatStaleTrialCallback.retried_trial_number(stored))
    elif trial.user_attrs.get("run") not in grid_runs:
        raise Skipped("not a waiting pair of the study file as this command reads it")
    else:
        run = grid_runs[trial.user_attrs["run"]]
        # every trial of a study gives a parameter the same choices, as Optuna requires
        trial.suggest_categorical("setting", sorted({r.setting for r in study.runs}))
        trial.suggest_categorical("seed", sorted({r.seed for r in study.runs}))
    trials = study_db.get_trials(deepcopy=False)
    owner = min(t.number for t in trials if t.user_attrs.get("run") == run.name and t.state != TrialState.FAIL)
    if owner != trial.number:
        raise Skipped(f"trial {owner} trains {run.name}")
    return run


def _search_run(study: Study, study_db: optuna.Study, trial: optuna.Trial, retried: int | None) -> Run:
    search = study.search
    values = {p.key: _suggest(trial, p) for p in search.params}
    earlier = [
        t
        for t in study_db.get_trials(deepcopy=False)
        if t.number < trial.number and t.state != TrialState.FAIL and not t.user_attrs.get("skipped")
    ]
    if retried is None and len(earlier) >= search.trials:  # two workers asked for the last trial at once
        raise Skipped(f"over the budget of {search.trials} trials")
    # a retried trial trains into the run folder of the trial it retries, resuming its finished folds
    run = search.run(trial.number if retried is None else retried, values)
    trial.set_user_attr("run", run.name)
    return run


def _suggest(trial: optuna.Trial, param: Param) -> object:
    if param.choices:
        return trial.suggest_categorical(param.key, list(param.choices))
    if isinstance(param.low, int) and isinstance(param.high, int) and (param.step or 1) == int(param.step or 1):
        return trial.suggest_int(param.key, param.low, param.high, step=int(param.step or 1), log=param.log)
    return trial.suggest_float(param.key, param.low, param.high, step=param.step, log=param.log)


def train(trial: optuna.Trial, run: Run, launch: Launch) -> float:
    """Train the run in a subprocess (nothing if its folder is finished), reporting each fold's score as it
    finishes; a pruned trial's training is stopped. Returns the run's CV score."""
    folder = RunFolder(launch.output_dir / run.name)
    reported: set[int] = set()
    if folder.is_finished():
        _report_folds(trial, folder, reported)
        return folder.metrics()["cv_score"]
    command = [*launch.launcher, str(TRAIN_SCRIPT), "--config", run.config, f"experiment={run.name}"]
    launch.log_dir.mkdir(parents=True, exist_ok=True)
    print(f"started  {run.name} (trial {trial.number})", flush=True)
    with (launch.log_dir / f"{run.name}.log").open("a") as log:
        try:
            process = subprocess.Popen([*command, *run.overrides, *launch.overrides], stdout=log, stderr=log)
        except OSError as err:
            raise TrainingFailed(f"{run.name}: {' '.join(launch.launcher)} cannot be started ({err})") from err
        try:
            while process.poll() is None:
                time.sleep(launch.poll_seconds)
                _report_folds(trial, folder, reported, prune=True)
        finally:
            _stop(process)
    _report_folds(trial, folder, reported)  # a run that finished is not pruned
    if process.returncode != 0 or not folder.is_finished():
        raise TrainingFailed(f"{run.name}: exit {process.returncode} (log: {launch.log_dir / run.name}.log)")
    cv = folder.metrics()["cv_score"]
    print(f"finished {run.name}: CV {cv:.4f}", flush=True)
    return cv


def _report_folds(trial: optuna.Trial, run: RunFolder, reported: set[int], prune: bool = False) -> None:
    """Report the folds finished since the last call, one at a time (step = fold number, so that trials compare
    fold by fold); with `prune`, raise TrialPruned at the first fold the pruner stops."""
    for fold in (fold for fold in run.finished_folds() if fold not in reported):
        trial.report(run.fold_metrics(fold)["score"], step=fold)
        reported.add(fold)
        if prune and trial.should_prune():
            print(f"pruned   {run.name} after fold {fold}", flush=True)
            raise optuna.TrialPruned()


def _stop(process: subprocess.Popen) -> None:
    """Stop a training and every process it started (accelerate launch starts the trainers as its children)."""
    if process.poll() is not None:
        return
    try:
        family = [*psutil.Process(process.pid).children(recursive=True), psutil.Process(process.pid)]
    except psutil.NoSuchProcess:
        return
    for member in family:
        member.kill()
    psutil.wait_procs(family, timeout=30)
    process.wait()


@contextmanager
def _heartbeat(storage: BaseStorage, trial_id: int) -> Iterator[None]:
    """Beat for the trial while it runs (Optuna beats only inside study.optimize, which cannot skip a trial)."""
    interval = heartbeat_seconds(storage)
    if not interval:
        yield
        return
    stop = threading.Event()

    def beat() -> None:
        while True:
            storage.record_heartbeat(trial_id)
            if stop.wait(interval):
                return

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def worker_environment(index: int, workers: int, gpus: list[str]) -> tuple[dict[str, str], set[int]]:
    """Worker `index` of `workers` on this machine: a GPU round-robin (CUDA_VISIBLE_DEVICES) where there are any,
    and its share of the CPU cores (its trainings' default threads follow their affinity)."""
    env = dict(os.environ)
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = gpus[index % len(gpus)]
    cores = sorted(os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1))
    share = max(1, len(cores) // workers)
    start = (index * share) % len(cores)
    return env, set(cores[start : start + share])
