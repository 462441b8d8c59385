"""Studies: several runs at a time, one table per study against its baseline, seeds pooled, failures reported."""

import json
from pathlib import Path

import pytest
import yaml

import study
from textreg.config import UserError, load_config
from textreg.study import Run, Study, load_study, queue, summarize

REPO = Path(__file__).resolve().parents[1]


def write_study(path: Path, settings: list[dict], baseline: str = "base", seeds: tuple = (42,)) -> Path:
    path.write_text(yaml.safe_dump({"prefix": "s", "baseline": baseline, "seeds": list(seeds), "settings": settings}))
    return path


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


def fake_run(run_dir: Path, curves: list[list[float]]) -> None:
    """A finished run whose folds' validation curves are `curves` (best = lowest, as RMSE)."""
    folds = {}
    for k, curve in enumerate(curves):
        folds[str(k)] = {"score": min(curve), "best_step": curve.index(min(curve)) + 1, "train_seconds": 10.0}
        history = [{"step": i + 1, "val_score": v} for i, v in enumerate(curve)]
        (run_dir / f"fold{k}").mkdir(parents=True)
        (run_dir / f"fold{k}" / "metrics.json").write_text(json.dumps({**folds[str(k)], "history": history}))
    cv = sum(min(c) for c in curves) / len(curves)
    done = list(range(len(curves)))
    summary = {
        "cv_score": cv,
        "folds": folds,
        "folds_done": done,
        "folds_missing": [],
        "train_seconds": 10.0 * len(curves),
    }
    (run_dir / "metrics.json").write_text(json.dumps(summary))


def test_the_seeds_of_a_setting_are_pooled_and_unfinished_runs_left_out(tmp_path):
    runs = [Run(f"r{i}", setting, "c.yaml", ()) for i, setting in enumerate(["base", "base", "base"])]
    fake_run(tmp_path / "r0", [[0.7, 0.5, 0.6], [0.8, 0.6, 0.6]])  # CV 0.55
    fake_run(tmp_path / "r1", [[0.7, 0.3, 0.3], [0.8, 0.6, 0.7]])  # CV 0.45
    fake_run(tmp_path / "r2", [[0.9, 0.8]])
    metrics = json.loads((tmp_path / "r2" / "metrics.json").read_text())
    (tmp_path / "r2" / "metrics.json").write_text(json.dumps({**metrics, "folds_missing": [1]}))  # one fold of two
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
