"""Study files and their tables. A study is a grid (settings x seeds, each pair one run) or a search (ranges and
choices that Optuna samples, one run per trial); `textreg.trials` runs them on Optuna.

A grid file (configs/study/*.yaml) lists settings (a config file and overrides; `overrides` at the top apply to
every setting, before the setting's own); each runs once per seed as an ordinary experiment named
`<prefix>-<setting>-seed<seed>`, so its folder, resumption and ensembling are those of `src/train.py`.
A search file names one config, its overrides and seed, and `search:` a trial budget, the parameters to sample
and the pruner; trial n is the experiment `<prefix>-trial<n>`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from textreg.artifacts import RunFolder
from textreg.errors import UserError
from textreg.experiments import curve_stability
from textreg.files import write_json, write_text
from textreg.metrics import Scorer

DEFAULT_CONFIG = "configs/default.yaml"
GRID_KEYS = {"prefix", "overrides", "baseline", "seeds", "settings"}
SEARCH_KEYS = {"prefix", "overrides", "config", "seed", "search"}
PRUNER_KEYS = {"n_startup_trials", "n_warmup_steps"}
# Trial states as Optuna names them; a trial skipped as a duplicate or over the budget counts in none.
STATES = ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")


@dataclass(frozen=True)
class Run:
    name: str  # the experiment name, hence the run folder
    setting: str  # the runs of one setting (its seeds) are summarised together
    config: str
    overrides: tuple[str, ...]
    seed: int = 42


@dataclass(frozen=True)
class Param:
    """One searched key: a range (`low`, `high`, optional `log` or `step`; whole numbers make an integer range)
    or `choices`."""

    key: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple | None = None


@dataclass(frozen=True)
class Search:
    prefix: str
    config: str
    overrides: tuple[str, ...]  # the file's overrides, then its seed
    trials: int  # the budget: trials that complete or are pruned, or still run
    params: tuple[Param, ...]
    pruner: dict | None  # MedianPruner's n_startup_trials and n_warmup_steps (in folds); None: no pruning

    def run(self, number: int, values: dict) -> Run:
        """Trial `number`'s run: the search's overrides, then each sampled value."""
        sampled = tuple(f"{key}={json.dumps(value)}" for key, value in values.items())
        return Run(f"{self.prefix}-trial{number}", f"trial{number}", self.config, (*self.overrides, *sampled))


@dataclass
class Study:
    name: str  # the file's stem: its Optuna study and its table
    baseline: str | None = None
    runs: list[Run] = field(default_factory=list)  # a grid's runs; a search's are made trial by trial
    search: Search | None = None
    scorer: Scorer = Scorer("rmse")  # its runs' metric, which sets the side Optuna optimizes (src/study.py sets it)


def load_study(path: Path) -> Study:
    try:
        spec = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise UserError(f"{path}: cannot be read as YAML ({err})") from err
    if not isinstance(spec, dict) or ("settings" in spec) == ("search" in spec):
        raise UserError(f"{path}: a study file is a mapping with either `settings` (a grid) or `search`")
    allowed = GRID_KEYS if "settings" in spec else SEARCH_KEYS
    if unknown := sorted(set(spec) - allowed):
        raise UserError(
            f"{path}: unknown keys {unknown}; a {'grid' if 'settings' in spec else 'search'} "
            f"study file takes {sorted(allowed)}"
        )
    return _load_grid(path, spec) if "settings" in spec else _load_search(path, spec)


def _load_grid(path: Path, spec: dict) -> Study:
    prefix, seeds, common = spec.get("prefix", path.stem), spec.get("seeds", [42]), spec.get("overrides", [])
    runs = []
    for entry in spec["settings"]:
        for seed in entry.get("seeds", seeds):
            name, config = entry["name"], entry.get("config", DEFAULT_CONFIG)
            overrides = (*common, *entry.get("overrides", []), f"seed={seed}")
            runs.append(Run(f"{prefix}-{name}-seed{seed}", name, config, overrides, seed))
    if spec.get("baseline") not in {run.setting for run in runs}:
        raise UserError(f"{path}: baseline {spec.get('baseline')!r} is not one of its settings")
    return Study(path.stem, spec["baseline"], runs)


def _load_search(path: Path, spec: dict) -> Study:
    search = spec["search"]
    if not isinstance(search, dict) or not isinstance(search.get("params"), dict) or not search["params"]:
        raise UserError(f"{path}: `search` needs `params`: each key with a range (low, high) or choices")
    trials = search.get("trials")
    if not isinstance(trials, int) or trials < 1 or set(search) - {"trials", "params", "pruner"}:
        raise UserError(f"{path}: `search` takes `trials` (a budget of at least 1), `params` and `pruner`")
    pruner = search.get("pruner", {})
    if pruner is not None and (not isinstance(pruner, dict) or set(pruner) - PRUNER_KEYS):
        raise UserError(f"{path}: `pruner` is null (no pruning) or takes {sorted(PRUNER_KEYS)}")
    pruner = None if pruner is None else {"n_startup_trials": 3, "n_warmup_steps": 0, **pruner}
    prefix, config = spec.get("prefix", path.stem), spec.get("config", DEFAULT_CONFIG)
    overrides = (*spec.get("overrides", []), f"seed={spec.get('seed', 42)}")
    params = tuple(_param(path, key, value) for key, value in search["params"].items())
    return Study(path.stem, search=Search(prefix, config, overrides, trials, params, pruner))


def _param(path: Path, key: str, spec: object) -> Param:
    if isinstance(spec, dict) and set(spec) == {"choices"} and isinstance(spec["choices"], list) and spec["choices"]:
        return Param(key, choices=tuple(spec["choices"]))
    if not isinstance(spec, dict) or not {"low", "high"} <= set(spec) <= {"low", "high", "log", "step"}:
        raise UserError(f"{path}: {key}: give {{low, high}} (optional log: true or step) or {{choices: [...]}}")
    try:  # YAML reads 1e-5 (no dot) as a string
        low, high = (spec[end] if isinstance(spec[end], int) else float(spec[end]) for end in ("low", "high"))
        step = None if spec.get("step") is None else float(spec["step"])
    except (TypeError, ValueError) as err:
        raise UserError(f"{path}: {key}: low, high and step must be numbers") from err
    if not low < high or (spec.get("log") and (low <= 0 or step)):
        raise UserError(f"{path}: {key}: needs low < high, and a log range low > 0 and no step")
    return Param(key, low, high, bool(spec.get("log")), step)


def bounds(param: Param) -> list:
    """The values that validating a search tries: each choice, or both ends of the range."""
    return list(param.choices) if param.choices else [param.low, param.high]


def queue(studies: list[Study]) -> list[Run]:
    """Every grid run once, in file order; one name used twice must mean the same run (it is one folder)."""
    runs: dict[str, Run] = {}
    for run in (run for study in studies for run in study.runs):
        if runs.setdefault(run.name, run) != run:
            raise UserError(f"two study settings make the experiment {run.name} with different configs")
    return list(runs.values())


def summarize(study: Study, run_dirs: dict[str, Path]) -> list[dict]:
    """One row per setting over its finished runs: CV (mean over seeds), fold spread over folds and seeds, change
    against the baseline, and the curve stability of `src/report.py`."""
    rows = {}
    for setting in dict.fromkeys(run.setting for run in study.runs):
        started = [run_dirs[run.name] for run in study.runs if run.setting == setting]
        # a run counts once every fold is finished and merged, not before
        finished = {folder: folder.metrics() for folder in map(RunFolder, started) if folder.is_finished()}
        if not finished:
            continue
        metrics = list(finished.values())
        folds = [f for m in metrics for f in m["folds"].values()]
        scorer = Scorer(metrics[0]["metric"])
        final_minus_best, late_wobble = curve_stability([h for f in finished for h in f.fold_histories()], scorer)
        rows[setting] = {
            "setting": setting,
            "metric": metrics[0]["metric"],
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
        row["delta"] = row["folds_better"] = None
        if base:
            pairs = zip(row["fold_scores"], base["fold_scores"], strict=True)
            row["delta"] = row["cv"] - base["cv"]
            row["folds_better"] = sum(Scorer(row["metric"]).better(a, b) for a, b in pairs)
    return list(rows.values())


def cv_label(rows: list[dict]) -> str:
    """The CV column's title: the competition's metric, as the finished runs recorded it."""
    metric = next((row["metric"] for row in rows if row.get("metric")), None)
    return f"CV {metric.upper()}" if metric else "CV"


def markdown(study: Study, rows: list[dict]) -> str:
    lines = [
        f"| {study.name} setting | seeds | {cv_label(rows)} | fold std | vs {study.baseline} | folds better "
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


def state_counts(trials: list[dict]) -> dict[str, int]:
    """Trials by state; a skipped trial (a duplicate, or one over the budget) trained nothing and counts in none."""
    counted = [trial["state"] for trial in trials if not trial["skipped"]]
    return {state.lower(): counted.count(state) for state in STATES}


def search_rows(trials: list[dict], run_dirs: dict[str, Path]) -> list[dict]:
    """One row per trial that trained: its parameters, its fold scores, and its CV once its run is finished (else
    the state: pruned after its last reported fold, failed, running); finished ones first, best first."""
    rows = []
    for trial in (t for t in trials if not t["skipped"] and t["state"] != "WAITING"):
        run = RunFolder(run_dirs[trial["run"]])
        metrics = run.metrics() if run.is_finished() else {}
        last_fold = max(trial["fold_scores"], default=None)
        rows.append({**trial, "cv": metrics.get("cv_score"), "metric": metrics.get("metric"), "last_fold": last_fold})
    loss = {r["number"]: Scorer(r["metric"]).loss(r["cv"]) if r["cv"] is not None else 0.0 for r in rows}
    return sorted(rows, key=lambda r: (r["cv"] is None, loss[r["number"]], r["state"], r["number"]))


def search_markdown(study: Study, rows: list[dict]) -> str:
    keys = [param.key for param in study.search.params]
    lines = [
        f"| {study.name} trial | {' | '.join(keys)} | {cv_label(rows)} | fold scores | state |",
        "| --- |" + " --- |" * (len(keys) + 3),
    ]
    for r in rows:
        values = " | ".join(_short(r["params"].get(key)) for key in keys)
        cv = "" if r["cv"] is None else f"{r['cv']:.4f}"
        state = r["state"].lower() + (f" at fold {r['last_fold']}" if r["state"] == "PRUNED" else "")
        folds = " ".join(f"{score:.4f}" for _, score in sorted(r["fold_scores"].items()))
        lines.append(f"| {r['run']} | {values} | {cv} | {folds} | {state} |")
    if best := next((r for r in rows if r["cv"] is not None), None):
        lines.append(f"\nbest: {best['run']} ({best['cv']:.4f}): " + " ".join(f"{k}={best['params'][k]}" for k in keys))
    return "\n".join(lines)


def _short(value: object) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def write_summaries(
    studies: list[Study], trials: dict[str, list[dict]], run_dirs: dict[str, Path], folder: Path
) -> str:
    """Each study's table, written to <folder>/<study>.md and .json, with its trials' states; returns them all.
    `trials` holds each study's Optuna trials (`textreg.trials.trial_records`); without them, no trial counts."""
    tables = []
    for study in studies:
        known = trials.get(study.name, [])
        rows = search_rows(known, run_dirs) if study.search else summarize(study, run_dirs)
        table = (search_markdown if study.search else markdown)(study, rows)
        counts = state_counts(known) if study.name in trials else None
        if counts:
            table += "\n\ntrials: " + ", ".join(f"{n} {state}" for state, n in counts.items())
        write_json({"rows": rows, "trials": counts}, folder / f"{study.name}.json")
        write_text(table + "\n", folder / f"{study.name}.md")
        tables.append(table)
    return "\n\n".join(tables)
