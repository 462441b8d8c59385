"""Plots of a finished run, saved as PNG in `<run>/plots/`: where a person would rather look than read numbers."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from matplotlib.figure import Figure

from textreg.files import atomic_write
from textreg.records import ValidationEvent


def _subplots(ncols: int = 1, width: float = 6) -> tuple[Figure, list]:
    # Figures without pyplot: no backend, no display, no global state. Imported here: matplotlib adds most of a
    # second to the start of every run, and only a finished fold draws.
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, 4.5))
    return fig, [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]


def _save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110))
    return path


def oof_scatter(oof: pd.DataFrame, targets: list[str], metric: str, scores: dict, path: Path) -> Path:
    fig, axes = _subplots(len(targets), width=5)
    for ax, target in zip(axes, targets, strict=True):
        truth, pred = oof[target], oof[f"{target}_pred"]
        ax.scatter(truth, pred, s=6, alpha=0.4)
        low, high = min(truth.min(), pred.min()), max(truth.max(), pred.max())
        ax.plot([low, high], [low, high], color="grey", linewidth=1)
        ax.set(xlabel=f"{target} (truth)", ylabel="OOF prediction", title=f"{target}: {metric} {scores[target]:.4f}")
    return _save(fig, path)


def validation_curves(histories: dict[int, list[ValidationEvent]], metric: str, path: Path) -> Path:
    fig, (ax,) = _subplots()
    for fold, history in sorted(histories.items()):
        ax.plot([e.step for e in history], [e.val_score for e in history], marker=".", label=f"fold {fold}")
    ax.set(xlabel="optimizer step", ylabel=f"validation {metric}", title="validation curves")
    ax.legend()
    return _save(fig, path)


def residual_by_length(oof: pd.DataFrame, targets: list[str], path: Path) -> Path:
    fig, (ax,) = _subplots()
    residual = np.mean([oof[f"{t}_pred"] - oof[t] for t in targets], axis=0)
    ax.scatter(oof["text_length"], residual, s=6, alpha=0.4)
    ax.axhline(0, color="grey", linewidth=1)
    ax.set(xlabel="model input length (characters)", ylabel="prediction - truth", title="residual by length")
    return _save(fig, path)


def save_all(
    run_dir: Path, oof: pd.DataFrame, histories: dict[int, list[ValidationEvent]], metrics: dict, targets: list[str]
) -> dict:
    folder = run_dir / "plots"
    metric = metrics["metric"]
    return {
        "oof_vs_target": oof_scatter(oof, targets, metric, metrics["cv_per_target"], folder / "oof_vs_target.png"),
        "validation_curves": validation_curves(histories, metric, folder / "validation_curves.png"),
        "residual_by_length": residual_by_length(oof, targets, folder / "residual_by_length.png"),
    }
