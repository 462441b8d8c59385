"""Studies: several runs at a time, one table per study against its baseline, seeds pooled, failures reported."""

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file

import study
from textreg.artifacts import RUN_FORMAT
from textreg.config import load_config, save_config
from textreg.errors import UserError
from textreg.files import write_json
from textreg.records import ValidationEvent
from textreg.studies import Run, Study, load_study, queue, summarize

REPO = Path(__file__).resolve().parents[1]


def write_study(path: Path, settings: list[dict], baseline: str = "base", seeds: tuple = (42,)) -> Path:
    path.write_text(yaml.safe_dump({"prefix": "s", "baseline": baseline, "seeds": list(seeds), "settings": settings}))
    return path


@pytest.mark.slow
def test_a_study_trains_its_runs_side_by_side_and_tables_them_against_the_baseline(make_config, tmp_path, capsys):
    config = str(make_config())
    file = write_study(
        tmp_path / "mini.yaml",
        [
            {"name": "base", "config": config},
            {"name": "fast", "config": config, "overrides": ["train.lr=3e-3"]},
            {"name": "broken", "config": config, "overrides": ["model.backbone=/no/such/folder"]},
        ],
    )
    assert study.main([str(file), "--parallel", "3", "train.max_steps=3"]) == 2
    err = capsys.readouterr().err
    assert "runs failed" in err and "s-broken-seed42" in err
    outputs = tmp_path / "outputs"
    assert "cannot be loaded" in (outputs / "studies" / "logs" / "s-broken-seed42.log").read_text()
    rows = {row["setting"]: row for row in json.loads((outputs / "studies" / "mini.json").read_text())}
    assert set(rows) == {"base", "fast"}  # the broken run has no row, and stopped neither of the others
    base, fast = (json.loads((outputs / f"s-{name}-seed42" / "metrics.json").read_text()) for name in ("base", "fast"))
    fold0 = json.loads((outputs / "s-fast-seed42" / "fold0" / "metrics.json").read_text())
    assert fold0["history"][-1]["step"] == 3  # the common override reached every run
    assert rows["base"]["cv"] == base["cv_score"] and rows["base"]["delta"] == 0
    assert rows["fast"]["delta"] == pytest.approx(fast["cv_score"] - base["cv_score"])
    fold_pairs = zip(fast["folds"].values(), base["folds"].values(), strict=True)
    assert rows["fast"]["folds_better"] == sum(f["score"] < b["score"] for f, b in fold_pairs)
    assert "| fast | 1 |" in (outputs / "studies" / "mini.md").read_text()


def fake_run(run_dir: Path, curves: list[list[float]], n_folds: int | None = None) -> None:
    """A run folder whose folds' validation curves are `curves` (best = lowest, as RMSE); `n_folds` beyond the
    curves leaves the rest unfinished."""
    cfg = load_config(REPO / "configs" / "debug.yaml", [f"cv.n_folds={n_folds or len(curves)}"])
    run_dir.mkdir(parents=True)
    save_config(cfg, run_dir / "config.yaml")
    write_json({"run_format": RUN_FORMAT, "launches": []}, run_dir / "run.json")
    folds = {}
    for k, curve in enumerate(curves):
        folds[str(k)] = {"score": min(curve), "best_step": curve.index(min(curve)) + 1, "train_seconds": 10.0}
        history = [ValidationEvent(i + 1, 1.0, v, [v], 1.0).to_dict() for i, v in enumerate(curve)]
        fold_dir = run_dir / f"fold{k}"
        fold_dir.mkdir()
        save_file({"w": torch.zeros(1)}, fold_dir / "model.safetensors")
        for name in ("oof.csv", "test.csv"):
            (fold_dir / name).write_text("id\n")
        write_json({**folds[str(k)], "history": history}, fold_dir / "metrics.json")
    for name in ("oof.csv", "test_predictions.csv"):
        (run_dir / name).write_text("id\n")
    done = list(range(len(curves)))
    summary = {
        "cv_score": sum(min(c) for c in curves) / len(curves),
        "folds": folds,
        "folds_done": done,
        "folds_missing": sorted(set(range(cfg.cv.n_folds)) - set(done)),
        "train_seconds": 10.0 * len(curves),
    }
    write_json(summary, run_dir / "metrics.json")


def test_the_seeds_of_a_setting_are_pooled_and_unfinished_runs_left_out(tmp_path):
    runs = [Run(f"r{i}", setting, "c.yaml", ()) for i, setting in enumerate(["base", "base", "base"])]
    fake_run(tmp_path / "r0", [[0.7, 0.5, 0.6], [0.8, 0.6, 0.6]])  # CV 0.55
    fake_run(tmp_path / "r1", [[0.7, 0.3, 0.3], [0.8, 0.6, 0.7]])  # CV 0.45
    fake_run(tmp_path / "r2", [[0.9, 0.8]], n_folds=2)  # one fold of two: not counted
    rows = summarize(Study("t", "base", runs), {run.name: tmp_path / run.name for run in runs})
    assert len(rows) == 1
    row = rows[0]
    assert row["seeds"] == 2
    assert row["cv"] == pytest.approx(0.5) and row["cv_seed_std"] == pytest.approx(0.05)
    assert row["fold_scores"] == pytest.approx([0.4, 0.6])  # per fold, the mean over seeds
    assert row["final_minus_best"] == pytest.approx((0.1 + 0 + 0 + 0.1) / 4)
    assert row["best_steps"] == [2]


def test_the_study_overrides_come_before_each_settings_own(tmp_path):
    file = write_study(tmp_path / "s.yaml", [{"name": "base", "overrides": ["train.lr=1e-3"]}], seeds=(1, 2))
    file.write_text(file.read_text() + "overrides: [train.lr=5e-4, train.epochs=1]\n")
    runs = load_study(file).runs
    assert [run.name for run in runs] == ["s-base-seed1", "s-base-seed2"]
    assert runs[0].overrides == ("train.lr=5e-4", "train.epochs=1", "train.lr=1e-3", "seed=1")


def test_one_name_for_two_different_runs_and_a_missing_baseline_are_refused(tmp_path):
    one = load_study(write_study(tmp_path / "one.yaml", [{"name": "base"}]))
    other = load_study(write_study(tmp_path / "other.yaml", [{"name": "base", "overrides": ["train.lr=1e-3"]}]))
    assert [run.name for run in queue([one, one])] == ["s-base-seed42"]  # the same run twice is one run
    with pytest.raises(UserError, match="s-base-seed42 with different configs"):
        queue([one, other])
    with pytest.raises(UserError, match="baseline 'missing' is not one of its settings"):
        load_study(write_study(tmp_path / "bad.yaml", [{"name": "base"}], baseline="missing"))


@pytest.mark.parametrize("file", sorted((REPO / "configs" / "study").glob("*.yaml")), ids=lambda p: p.name)
def test_every_committed_study_makes_valid_configs(file):
    runs = queue([load_study(file)])
    for run in runs:
        cfg = load_config(str(REPO / run.config), [f"experiment={run.name}", *run.overrides])
        assert cfg.experiment == run.name
    assert len({run.name for run in runs}) == len(runs)


def test_summary_tables_what_is_finished_and_trains_nothing(make_config, tmp_path, capsys):
    config = str(make_config())
    file = write_study(tmp_path / "mini.yaml", [{"name": "base", "config": config}, {"name": "lr", "config": config}])
    outputs = tmp_path / "outputs"
    fake_run(outputs / "s-base-seed42", [[0.7, 0.6], [0.8, 0.5]])  # CV 0.55
    fake_run(outputs / "s-lr-seed42", [[0.7, 0.5], [0.6, 0.5]])  # CV 0.5
    assert study.main([str(file), "--summary"]) == 0
    table = capsys.readouterr().out
    assert "| base | 1 | 0.5500 |" in table and "| lr | 1 | 0.5000 |" in table and "-0.0500 | 1/2 |" in table
    assert (outputs / "studies" / "mini.md").read_text().strip() == table.strip()
    assert not (outputs / "studies" / "logs").exists()  # nothing was started
