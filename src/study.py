"""Studies on Optuna: `python src/study.py configs/study/dropout.yaml [more files] [--workers 2] [--storage URL]
[key=value ...]`.

Each study file is an Optuna study in one storage (default: a SQLite file in <output_dir>/studies/): a grid's every
(setting, seed) pair is one trial, run once; a search's trials are sampled by TPE and pruned on their fold scores.
Each trial is an ordinary experiment (`accelerate launch src/train.py ...`, overrides after the files apply to
all) with its own log. The same command on another machine, or again on this one, joins as one more worker.
Then one table per study goes to <output_dir>/studies/. --summary prints the tables only.
"""

import argparse
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import torch

from textreg import trials
from textreg.config import Config, load_config
from textreg.errors import UserError, run_reporting_user_errors
from textreg.studies import Study, bounds, load_study, queue, write_summaries


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("items", nargs="+", help="study files (.yaml), then overrides such as train.threads=2")
    parser.add_argument("--storage", help="Optuna storage: sqlite:///file, postgresql://..., mysql://..., journal:file")
    parser.add_argument("--workers", type=int, default=1, help="worker processes on this machine (GPUs round-robin)")
    parser.add_argument("--launcher", default="accelerate launch", help="what runs src/train.py for each trial")
    parser.add_argument("--heartbeat", type=int, default=60, help="seconds between a trial's heartbeats")
    parser.add_argument("--summary", action="store_true", help="print the tables of what is finished; train nothing")
    parser.add_argument("--worker-cpus", help=argparse.SUPPRESS)  # set for the worker processes of --workers N
    args = parser.parse_intermixed_args(argv)
    files = [item for item in args.items if "=" not in item]
    overrides = [item for item in args.items if "=" in item]

    def study() -> None:
        if args.workers < 1 or args.heartbeat < 1:
            raise UserError("--workers and --heartbeat take a whole number of at least 1")
        started = datetime.now()
        studies = [load_study(Path(file)) for file in files]
        configs = validate_configs(studies, overrides)
        folder = configs[0].output_dir / "studies"
        database = folder / "optuna.db"
        url = args.storage or f"sqlite:///{database.resolve()}"
        if args.summary and not args.storage and not database.is_file():
            print(tables(studies, configs, None, folder))  # nothing was ever started here
            return
        folder.mkdir(parents=True, exist_ok=True)  # the default storage's folder
        storage = trials.open_storage(url, args.heartbeat)
        if args.summary:
            print(tables(studies, configs, storage, folder))
            return
        grid_runs = {run.name: run for run in queue(studies)}
        launcher = trials.resolve_launcher(args.launcher)
        launch = trials.Launch(launcher, tuple(overrides), configs[0].output_dir, folder / "logs")
        if args.worker_cpus:  # one of the workers of --workers N: take trials, leave the tables to the command
            if hasattr(os, "sched_setaffinity"):  # Linux
                os.sched_setaffinity(0, {int(cpu) for cpu in args.worker_cpus.split(",")})
            trials.work(studies, grid_runs, storage, launch, folder / ".trials.lock")
            return
        owned = set()
        for entry in studies:  # a run that two files share is a trial of the first
            trials.enqueue_grid(entry, [run for run in entry.runs if run.name not in owned], storage)
            owned |= {run.name for run in entry.runs}
        codes = start_workers(args, url, files, overrides) if args.workers > 1 else [0]
        if args.workers == 1:
            trials.work(studies, grid_runs, storage, launch, folder / ".trials.lock")
        print(tables(studies, configs, storage, folder))
        if any(codes):
            raise UserError(f"workers exited with {codes}; their errors are above")
        if failed := trials.failed_runs(studies, storage, started):
            raise UserError(f"runs failed (their logs are in {folder / 'logs'}): {' '.join(failed)}")

    return run_reporting_user_errors(study)


def validate_configs(studies: list[Study], overrides: list[str]) -> list[Config]:
    """Every grid run's config, and a search's config at each end of each range and each choice: all are
    validated before anything trains. Each study optimizes the one metric its runs share."""
    queue(studies)  # one name, one run
    configs = []
    for entry in studies:
        runs = list(entry.runs)
        if search := entry.search:
            runs += [search.run(0, {param.key: value}) for param in search.params for value in bounds(param)]
        loaded = [load_config(run.config, [f"experiment={run.name}", *run.overrides, *overrides]) for run in runs]
        if len({cfg.scorer for cfg in loaded}) > 1:
            raise UserError(f"study {entry.name}: its runs are scored by different metrics; give them one")
        entry.scorer, configs = loaded[0].scorer, configs + loaded
    return configs


def tables(studies: list[Study], configs: list[Config], storage, folder: Path) -> str:
    records = {entry.name: trials.trial_records(entry, storage) for entry in studies} if storage else {}
    run_dirs = {cfg.experiment: cfg.run_dir for cfg in configs}
    run_dirs |= {t["run"]: configs[0].output_dir / t["run"] for listed in records.values() for t in listed if t["run"]}
    return write_summaries(studies, records, run_dirs, folder)


def start_workers(args: argparse.Namespace, url: str, files: list[str], overrides: list[str]) -> list[int]:
    """N workers of this same command; each takes a GPU round-robin and its share of the CPU cores. Returns their
    exit codes."""
    visible = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d]
    gpus = visible or [str(i) for i in range(torch.cuda.device_count())]
    processes = []
    for index in range(args.workers):
        env, cores = trials.worker_environment(index, args.workers, gpus)
        command = [sys.executable, __file__, *files, *overrides, "--storage", url, "--launcher", args.launcher]
        command += ["--heartbeat", str(args.heartbeat), "--worker-cpus", ",".join(map(str, sorted(cores)))]
        processes.append(subprocess.Popen(command, env=env))
    return [process.wait() for process in processes]


if __name__ == "__main__":
    sys.exit(main())
