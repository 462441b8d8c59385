"""Ensembles: blend weights fitted on OOF predictions, scored by nested CV, applied to any test file.

Every method is a linear blend per target (`prediction = members @ weights + intercept`), so saved weights are
a small JSON file. Nested CV: for each fold, weights are fitted on the other folds' OOF rows and scored on the
held-out fold, so that a method is not rewarded for fitting the OOF noise.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import minimize
from sklearn.linear_model import Ridge

from textreg import postprocess
from textreg.artifacts import RunFolder
from textreg.config import Config, PostprocessConfig, TrackingConfig
from textreg.data import load_sample_submission, read_csv
from textreg.errors import UserError
from textreg.files import read_json, write_csv, write_json
from textreg.inference import predict_file
from textreg.metrics import Scorer
from textreg.submission import make_submission
from textreg.tracking import Tracker

Blend = tuple[np.ndarray, float]  # weights per member, intercept


def blend_mean(x: np.ndarray, y: np.ndarray) -> Blend:
    return np.full(x.shape[1], 1 / x.shape[1]), 0.0


def blend_nonnegative(x: np.ndarray, y: np.ndarray) -> Blend:
    """Non-negative weights summing to one, least squares."""
    m = x.shape[1]
    result = minimize(
        lambda w: np.mean((x @ w - y) ** 2),
        np.full(m, 1 / m),
        jac=lambda w: 2 * x.T @ (x @ w - y) / len(y),
        bounds=[(0, 1)] * m,
        constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1}],
        method="SLSQP",
    )
    weights = np.clip(result.x, 0, None)
    return weights / weights.sum(), 0.0


def blend_ridge(x: np.ndarray, y: np.ndarray) -> Blend:
    model = Ridge(alpha=1.0).fit(x, y)
    return model.coef_, float(model.intercept_)


def blend_hill_climbing(x: np.ndarray, y: np.ndarray, rounds: int = 100) -> Blend:
    """Greedy selection with replacement (Caruana et al.): each round adds the member that lowers the error
    most (or raises it least); the weights are the member counts of the best round."""
    counts, current = np.zeros(x.shape[1]), np.zeros(len(y))
    best_error, best_counts = np.inf, counts
    for size in range(1, rounds + 1):
        errors = [np.mean(((current * (size - 1) + x[:, j]) / size - y) ** 2) for j in range(x.shape[1])]
        pick = int(np.argmin(errors))
        counts = counts.copy()
        counts[pick] += 1
        current = (current * (size - 1) + x[:, pick]) / size
        if errors[pick] < best_error:
            best_error, best_counts = errors[pick], counts
    return best_counts / best_counts.sum(), 0.0


METHODS: dict[str, Callable[[np.ndarray, np.ndarray], Blend]] = {
    "mean": blend_mean,
    "nonnegative": blend_nonnegative,
    "ridge": blend_ridge,
    "hill_climbing": blend_hill_climbing,
}


@dataclass
class MemberRun:
    """A finished run in an ensemble: its OOF and test predictions, keyed by its folder name."""

    name: str
    run_dir: Path
    cfg: Config
    oof: pd.DataFrame  # indexed by id: fold, targets, <target>_pred
    test: pd.DataFrame  # indexed by id: <target>


def load_members(run_dirs: list[Path], weights: bool = True) -> list[MemberRun]:
    """Finished experiments trained on the same folds, with the same ids and targets; `weights=False`: their fold
    weights need not be here (a blend scored from predictions alone cannot predict new files)."""
    _check_names(run_dirs)
    members = []
    for run_dir in run_dirs:
        cfg = RunFolder(run_dir).require_finished(weights)
        id_col = cfg.data.id_column
        oof = read_csv(run_dir / "oof.csv").set_index(id_col).sort_index()
        test = read_csv(run_dir / "test_predictions.csv").set_index(id_col)
        members.append(MemberRun(run_dir.name, run_dir, cfg, oof, test))
    _check_blendable(members)
    return members


def _check_names(run_dirs: list[Path]) -> None:
    """Two members at least, each of its own folder name (members are keyed by it in weights.json)."""
    if len(run_dirs) < 2:
        raise UserError("an ensemble needs at least two experiment folders")
    names = [run_dir.name for run_dir in run_dirs]
    if twice := sorted({name for name in names if names.count(name) > 1}):
        raise UserError(f"an ensemble's members need distinct folder names: {twice} given more than once")


def _check_blendable(members: list[MemberRun]) -> None:
    """One competition, target and metric, OOF predictions of the same ids, each row in the same fold."""
    first = members[0]
    for other in members[1:]:
        theirs, ours = ((c.data.competition, c.data.target_columns, c.metric) for c in (other.cfg, first.cfg))
        if theirs != ours:
            raise UserError(f"{other.name} and {first.name} belong to other competitions, targets or metrics")
        if not other.oof.index.equals(first.oof.index):
            raise UserError(f"{other.name} and {first.name} have OOF predictions for different ids")
        if differ := int((other.oof["fold"] != first.oof["fold"]).sum()):
            raise UserError(
                f"{other.name} and {first.name} were trained on different folds ({differ} rows in another fold): "
                "their OOF predictions cannot be blended honestly; train them with the same cv settings"
            )


def nested_oof(method: str, x: np.ndarray, y: np.ndarray, folds: np.ndarray) -> np.ndarray:
    pred = np.zeros(len(y))
    for fold in np.unique(folds):
        held_out = folds == fold
        weights, intercept = METHODS[method](x[~held_out], y[~held_out])
        pred[held_out] = x[held_out] @ weights + intercept
    return pred


def nested_postprocessed(
    method: str, x: list[np.ndarray], truth: np.ndarray, folds: np.ndarray, section: PostprocessConfig, scorer: Scorer
) -> np.ndarray:
    """Each fold's rows blended and post-processed with weights and thresholds fitted on the other folds alone."""
    out = np.zeros_like(truth)
    for fold in np.unique(folds):
        held_out = folds == fold
        fitted = [METHODS[method](x_t[~held_out], truth[~held_out, k]) for k, x_t in enumerate(x)]
        blended = np.column_stack([x_t @ w + b for x_t, (w, b) in zip(x, fitted, strict=True)])
        thresholds = postprocess.fit(blended[~held_out], truth[~held_out], section, scorer)
        out[held_out] = postprocess.apply(blended[held_out], section, scorer.score_range, thresholds)
    return out


def fit(members: list[MemberRun]) -> dict:
    """Nested-CV score of every method, the best one refitted on all OOF rows, and each member's own score; with
    post-processing, the best method's nested-CV score post-processed and the thresholds fitted on all OOF rows."""
    cfg, oof = members[0].cfg, members[0].oof
    targets, folds = cfg.data.target_columns, oof["fold"].to_numpy()
    truth, names = oof[targets].to_numpy(), [m.name for m in members]
    x = {t: np.column_stack([m.oof[f"{t}_pred"].to_numpy() for m in members]) for t in targets}  # members' predictions
    nested = {}
    for method in METHODS:
        pred = np.column_stack([nested_oof(method, x[t], oof[t].to_numpy(), folds) for t in targets])
        nested[method] = cfg.scorer.score(truth, pred)
    best = min(nested, key=lambda method: cfg.scorer.loss(nested[method]))
    blends = {}
    for t in targets:
        weights, intercept = METHODS[best](x[t], oof[t].to_numpy())
        blends[t] = {"weights": dict(zip(names, weights.tolist(), strict=True)), "intercept": intercept}
    member_scores = {m.name: cfg.scorer.score(truth, m.oof[[f"{t}_pred" for t in targets]].to_numpy()) for m in members}
    report = {"metric": cfg.metric, "method": best, "nested_cv": nested, "members": member_scores, "blends": blends}
    if postprocess.is_active(section := cfg.postprocess):
        xs = [x[t] for t in targets]
        processed = nested_postprocessed(best, xs, truth, folds, section, cfg.scorer)
        report["nested_cv_postprocessed"] = cfg.scorer.score(truth, processed)
        blended = apply(blends, {m.name: _predictions(m.oof, targets) for m in members}, targets)
        report["thresholds"] = postprocess.fit(blended, truth, section, cfg.scorer)
    return report


def _predictions(oof: pd.DataFrame, targets: list[str]) -> pd.DataFrame:
    """A member's OOF predictions under the target names, as `apply` takes them."""
    return oof[[f"{t}_pred" for t in targets]].set_axis(targets, axis=1)


def apply(blends: dict, member_predictions: dict[str, pd.DataFrame], targets: list[str]) -> np.ndarray:
    """Blend each member's predictions (frames with one column per target, rows in the same order)."""
    columns = []
    for t in targets:
        blended = sum(w * member_predictions[name][t].to_numpy() for name, w in blends[t]["weights"].items())
        columns.append(blended + blends[t]["intercept"])
    return np.column_stack(columns)


def default_name(run_dirs: list[Path], limit: int = 100) -> str:
    """The members' names joined by '+'; for many members the first name, the count and a digest of them all
    (file names have a length limit, and two different member lists must not share a folder)."""
    joined = "+".join(p.name for p in run_dirs)
    if len(joined) <= limit:
        return joined
    return f"{run_dirs[0].name[: limit // 2]}+{len(run_dirs) - 1}-more-{hashlib.sha1(joined.encode()).hexdigest()[:8]}"


def build(run_dirs: list[Path], name: str, output_dir: Path, submission_dir: Path) -> dict:
    """Fit, write weights.json and the ensemble's OOF, and make the submission from the members' test files."""
    members = load_members(run_dirs)
    report = {"name": name, "member_dirs": {m.name: str(m.run_dir) for m in members}, **fit(members)}
    cfg, targets = members[0].cfg, members[0].cfg.data.target_columns
    folder = output_dir / "ensembles" / name
    oof = members[0].oof[["fold", *targets]].copy()
    oof[[f"{t}_pred" for t in targets]] = apply(
        report["blends"], {m.name: _predictions(m.oof, targets) for m in members}, targets
    )
    write_csv(oof.reset_index(), folder / "oof.csv")
    ids = members[0].test.index
    blended = apply(report["blends"], {m.name: m.test.loc[ids] for m in members}, targets)
    blended = postprocess.apply(blended, cfg.postprocess, cfg.data.score_range, report.get("thresholds"))
    submission = make_submission(load_sample_submission(cfg.data), pd.Series(ids), blended, cfg.data.id_column, targets)
    for path in (submission_dir / f"{name}.csv", submission_dir / "submission.csv"):
        write_csv(submission, path)
    write_json(report, folder / "weights.json")
    _track(cfg.tracking, cfg.output_dir, report, folder)
    return report


def _track(tracking: TrackingConfig, output_dir: Path, report: dict, folder: Path) -> None:
    """The ensemble as a W&B run of its own group (job_type "ensemble"), when tracking is on."""
    tracker = Tracker(tracking, report["name"], output_dir, is_main_process=True)
    if not tracker.enabled:
        return
    with tracker.open_run("ensemble", report["name"], {"members": report["member_dirs"], "method": report["method"]}):
        tracker.summarize({f"nested_cv/{m}": v for m, v in report["nested_cv"].items()})
        tracker.summarize({f"member/{m}": v for m, v in report["members"].items()})
        tracker.log_files("ensemble", {"weights.json": folder / "weights.json", "oof.csv": folder / "oof.csv"})


def predict_with_weights(weights_path: Path, input_path: Path, members_root: Path | None = None) -> pd.DataFrame:
    """What a Kaggle notebook does with the hidden test set: every member predicts the file, then the saved
    weights blend them. `members_root`: the folder that holds the member folders, when they have moved (a
    Kaggle dataset). Columns: id, then the targets."""
    report = read_json(weights_path)
    dirs = {name: members_root / name if members_root else Path(path) for name, path in report["member_dirs"].items()}
    per_member = {name: predict_file(run_dir, input_path) for name, run_dir in dirs.items()}
    cfg = RunFolder(next(iter(dirs.values()))).load_config()
    targets = cfg.data.target_columns
    result = next(iter(per_member.values()))[[cfg.data.id_column]].copy()
    blended = apply(report["blends"], per_member, targets)
    result[targets] = postprocess.apply(blended, cfg.postprocess, cfg.data.score_range, report.get("thresholds"))
    if not np.isfinite(result[targets].to_numpy()).all():
        raise UserError("the blended predictions hold a NaN or infinite value")
    return result


def check_against_sample(result: pd.DataFrame, sample_path: Path, id_column: str) -> pd.DataFrame:
    targets = list(result.columns.drop(id_column))
    return make_submission(read_csv(sample_path), result[id_column], result[targets].to_numpy(), id_column, targets)
