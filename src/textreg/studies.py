"""Studies: the runs of one or more study files, several at a time, summarised per setting against a baseline.

A study file (configs/study/*.yaml) lists settings (a config file and overrides; `overrides` at the top apply to
every setting, before the setting's own); each runs once per seed as an ordinary experiment named
`<prefix>-<setting>-seed<seed>`, so its folder, resumption and ensembling are those of `src/train.py`.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from textreg.artifacts import is_finished
from textreg.errors import UserError
from textreg.experiments import curve_stability, fold_histories
from textreg.files import write_json, write_text

TRAIN_SCRIPT = Path(__file__).resolve().parents[1] / "train.py"


@dataclass(frozen=True)
class Run:
    name: str  # the experiment name, hence the run folder
    setting: str  # the runs of one setting (its seeds) are summarised together
    config: str
    overrides: tuple[str, ...]


@dataclass
class Study:
    name: str
    baseline: str
    runs: list[Run]


def load_study(path: Path) -> Study:
    spec = yaml.safe_load(path.read_text())
    prefix, seeds, common = spec.get("prefix", path.stem), spec.get("seeds", [42]), spec.get("overrides", [])
    runs = [
        Run(
            f"{prefix}-{entry['name']}-seed{seed}",
            entry["name"],
            entry.get("config", "configs/default.yaml"),
            (*common, *entry.get("overrides", []), f"seed={seed}"),
        )
        for entry in spec["settings"]
        for seed in entry.get("seeds", seeds)
    ]
    if spec["baseline"] not in {run.setting for run in runs}:
        raise UserError(f"{path}: baseline {spec['baseline']!r} is not one of its settings")
    return Study(path.stem, spec["baseline"], runs)


def queue(studies: list[Study]) -> list[Run]:
    """Every run once, in file order; one name used twice must mean the same run (it is one folder)."""
    runs: dict[str, Run] = {}
    for run in (run for study in studies for run in study.runs):
        if runs.setdefault(run.name, run) != run:
            raise UserError(f"two study settings make the experiment {run.name} with different configs")
    return list(runs.values())


def run_all(
    runs: list[Run], parallel: int, overrides: list[str], log_dir: Path, on_finish: Callable[[], object] | None = None
) -> dict[str, int]:
    """Train the runs, `parallel` processes at a time; return each run's exit code. A failed run stops no other."""
    log_dir.mkdir(parents=True, exist_ok=True)
    pending, running, codes = list(runs), {}, {}
    while pending or running:
        while pending and len(running) < parallel:
            run = pending.pop(0)
            cmd = [sys.executable, str(TRAIN_SCRIPT), "--config", run.config, f"experiment={run.name}"]
            log = (log_dir / f"{run.name}.log").open("w")
            running[run.name] = (subprocess.Popen([*cmd, *run.overrides, *overrides], stdout=log, stderr=log), log)
            print(f"started  {run.name}", flush=True)
        time.sleep(1)
        for name, (process, log) in list(running.items()):
            if process.poll() is not None:
                log.close()
                del running[name]
                codes[name] = process.returncode
                print(f"finished {name}: exit {codes[name]}", flush=True)
                if on_finish:
                    on_finish()
    return codes


def summarize(study: Study, run_dirs: dict[str, Path]) -> list[dict]:
    """One row per setting over its finished runs: CV (mean over seeds), fold spread over folds and seeds, change
    against the baseline, and the curve stability of `src/report.py`."""
    rows = {}
    for setting in dict.fromkeys(run.setting for run in study.runs):
        started = [run_dirs[run.name] for run in study.runs if run.setting == setting]
        # a run counts once every fold is finished and merged, not before
        finished = {d: json.loads((d / "metrics.json").read_text()) for d in started if is_finished(d)}
        if not finished:
            continue
        metrics = list(finished.values())
        folds = [f for m in metrics for f in m["folds"].values()]
        final_minus_best, late_wobble = curve_stability([h for d, m in finished.items() for h in fold_histories(d, m)])
        rows[setting] = {
            "setting": setting,
            "seeds": len(metrics),
            "cv": float(np.mean([m["cv_score"] for m in metrics])),
            "cv_seed_std": float(np.std([m["cv_score"] for m in metrics])),
            "fold_scores": np.mean([[f["score"] for f in m["folds"].values()] for m in metrics], axis=0).tolist(),
            "fold_std": float(np.std([f["score"] for f in folds])),
            "final_minus_best": final_minus_best,
            "late_wobble": late_wobble,
            "best_steps": sorted({f["best_step"] for f in folds}),
            "train_seconds": float(np.mean([m["train_seconds"] for m in metrics])),
        }
    base = rows.get(study.baseline)
    for row in rows.values():
        row["delta"] = row["cv"] - base["cv"] if base else None
        row["folds_better"] = (
            sum(a < b for a, b in zip(row["fold_scores"], base["fold_scores"], strict=True)) if base else None
        )
    return list(rows.values())


def markdown(study: Study, rows: list[dict]) -> str:
    lines = [
        f"| {study.name} setting | seeds | CV RMSE | fold std | vs {study.baseline} | folds better "
        "| final - best | late wobble | best steps | train s / run |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        delta = "" if r["delta"] is None else f"{r['delta']:+.4f}"
        better = "" if r["folds_better"] is None else f"{r['folds_better']}/{len(r['fold_scores'])}"
        steps = f"{r['best_steps'][0]}-{r['best_steps'][-1]}"
        cv = f"{r['cv']:.4f}" + (f" ± {r['cv_seed_std']:.4f}" if r["seeds"] > 1 else "")
        lines.append(
            f"| {r['setting']} | {r['seeds']} | {cv} | {r['fold_std']:.4f} | {delta} | {better} "
            f"| {r['final_minus_best']:.4f} | {r['late_wobble']:.4f} | {steps} | {r['train_seconds']:.0f} |"
        )
    return "\n".join(lines)


def write_summaries(studies: list[Study], run_dirs: dict[str, Path], folder: Path) -> str:
    """Each study's table, written to <folder>/<study>.md and .json; returns them all."""
    tables = []
    for study in studies:
        rows = summarize(study, run_dirs)
        write_json(rows, folder / f"{study.name}.json")
        tables.append(markdown(study, rows))
        write_text(tables[-1] + "\n", folder / f"{study.name}.md")
    return "\n\n".join(tables)
