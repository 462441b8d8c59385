"""Studies on Optuna: grid pairs trained exactly once by several workers (SQLite and a real PostgreSQL server),
search trials pruned on their fold scores, a killed worker's trial retried; tables against the baseline, seeds
pooled, failures reported."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from safetensors.torch import save_file

import study
from textreg.artifacts import RUN_FORMAT
from textreg.config import dump, load_config
from textreg.errors import UserError
from textreg.files import write_json
from textreg.records import ValidationEvent
from textreg.studies import Run, Study, load_study, queue, search_markdown, search_rows, state_counts, summarize
from textreg.trials import (
    Launch,
    enqueue_grid,
    open_storage,
    optuna_study,
    storage_trial_id,
    work,
    worker_environment,
)

REPO = Path(__file__).resolve().parents[1]


def write_study(path: Path, settings: list[dict], baseline: str = "base", seeds: tuple = (42,)) -> Path:
    path.write_text(yaml.safe_dump({"prefix": "s", "baseline": baseline, "seeds": list(seeds), "settings": settings}))
    return path


def fake_run(run_dir: Path, curves: list[list[float]], n_folds: int | None = None, metric: str = "rmse") -> None:
    """A run folder whose folds' validation curves are `curves` (best = lowest, as RMSE); `n_folds` beyond the
    curves leaves the rest unfinished."""
    cfg = load_config(REPO / "configs" / "debug.yaml", [f"cv.n_folds={n_folds or len(curves)}"])
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(dump(cfg))
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
        "metric": metric,
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
def test_every_committed_study_makes_valid_configs(file, monkeypatch):
    monkeypatch.chdir(REPO)
    loaded = load_study(file)
    assert study.validate_configs([loaded], [])  # a grid's every run; a search at each end of each range
    assert len({run.name for run in queue([loaded])}) == len(loaded.runs)


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


def storage_trials(url: str, name: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=url).get_trials()


def trained(trials: list[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
    return [t for t in trials if not t.user_attrs.get("skipped")]


def test_a_second_trial_for_one_grid_pair_is_skipped_and_a_finished_run_not_trained_again(tmp_path, capsys):
    # Two workers that enqueue at the same moment make two trials for one pair: only the first one counts.
    runs = [Run(f"s-base-seed{seed}", "base", "c.yaml", (), seed) for seed in (1, 2)]
    grid = Study("mini", "base", runs)
    for run in runs:
        fake_run(tmp_path / run.name, [[0.7, 0.5], [0.6, 0.5]])
    storage = open_storage(f"sqlite:///{tmp_path / 'optuna.db'}", heartbeat=1)
    enqueue_grid(grid, runs, storage)
    optuna_study(grid, storage).enqueue_trial({"setting": "base", "seed": 1}, user_attrs={"run": "s-base-seed1"})
    enqueue_grid(grid, runs, storage)  # every pair has a trial: nothing more
    # A launch would fail (`false`): the finished runs must train nothing.
    launch = Launch(("false",), (), tmp_path, tmp_path / "logs", poll_seconds=0.1)
    work([grid], {run.name: run for run in runs}, storage, launch, tmp_path / ".lock")
    trials = optuna_study(grid, storage).get_trials()
    assert [(t.number, t.state.name, t.user_attrs["run"]) for t in trained(trials)] == [
        (0, "COMPLETE", "s-base-seed1"),
        (1, "COMPLETE", "s-base-seed2"),
    ]
    assert trials[2].state.name == "FAIL" and trials[2].user_attrs["skipped"] == "trial 0 trains s-base-seed1"
    assert trials[0].value == pytest.approx(0.5) and trials[0].intermediate_values == {0: 0.5, 1: 0.5}
    assert not (tmp_path / "logs").exists()
    records = [{"state": t.state.name, "skipped": t.user_attrs.get("skipped")} for t in trials]
    assert state_counts(records) == {"complete": 2, "pruned": 0, "fail": 0, "running": 0, "waiting": 0}


def test_the_optuna_behaviour_the_workers_rely_on(tmp_path):
    # Workers use Optuna's public API only; this pins what they rely on, so that an Optuna upgrade that changes it
    # fails here: a popped grid trial carries the run it was enqueued with, a trial that ask() makes when the queue
    # is empty carries none, heartbeats recorded for the id that storage_trial_id finds keep a trial alive, and a
    # stale trial comes back with its run and is recognised as a retry.
    runs = [Run("s-base-seed1", "base", "c.yaml", (), 1)]
    grid = Study("pin", "base", runs)
    storage = open_storage(f"sqlite:///{tmp_path / 'optuna.db'}", heartbeat=1)  # stale after 3 s without a beat
    enqueue_grid(grid, runs, storage)
    study_db = optuna_study(grid, storage)
    retried = optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ask() outside study.optimize, experimental heartbeat functions
        popped, fresh = study_db.ask(), study_db.ask()
        assert popped.user_attrs == {"run": "s-base-seed1"} and "run" not in fresh.user_attrs
        ids = {trial.number: storage_trial_id(storage, study_db, trial) for trial in (popped, fresh)}
        assert {storage.get_trial(i).number for i in ids.values()} == {popped.number, fresh.number}
        for trial_id in ids.values():
            storage.record_heartbeat(trial_id)
        time.sleep(4.2)  # SQLite's clock counts whole seconds: more than 3 s since both beats
        storage.record_heartbeat(ids[fresh.number])
        optuna.storages.fail_stale_trials(study_db)
        states = {t.number: t.state.name for t in study_db.get_trials()}
        assert states == {popped.number: "FAIL", fresh.number: "RUNNING", 2: "WAITING"}
        retry = study_db.ask()
        assert retry.number == 2 and retry.user_attrs == {"run": "s-base-seed1"}
        assert retried(storage.get_trial(storage_trial_id(storage, study_db, retry))) == popped.number
        assert retried(storage.get_trial(ids[fresh.number])) is None


def test_a_search_file_is_read_and_checked(tmp_path):
    spec = {
        "prefix": "lr",
        "config": "configs/debug.yaml",
        "seed": 7,
        "search": {
            "trials": 4,
            "params": {
                "train.lr": {"low": "1e-5", "high": 1.0e-3, "log": True},
                "model.pooling": {"choices": ["mean", "cls"]},
            },
            "pruner": {"n_warmup_steps": 1},
        },
    }
    (tmp_path / "lr.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    search = load_study(tmp_path / "lr.yaml").search
    assert search.trials == 4 and search.pruner == {"n_startup_trials": 3, "n_warmup_steps": 1}
    assert search.params[0].low == 1e-5 and search.params[1].choices == ("mean", "cls")
    run = search.run(3, {"train.lr": 2e-5, "model.pooling": "cls"})
    assert run.name == "lr-trial3" and run.overrides == ("seed=7", "train.lr=2e-05", 'model.pooling="cls"')
    cfg = load_config(REPO / run.config, list(run.overrides))
    assert cfg.train.lr == 2e-5 and cfg.model.pooling == "cls" and cfg.seed == 7
    for bad, message in [
        ({"trials": 0}, "a budget of at least 1"),
        ({"params": {"train.lr": {"low": 1e-3, "high": 1e-5}}}, "needs low < high"),
        ({"params": {"train.lr": [1, 2]}}, "give {low, high}"),
        ({"pruner": {"patience": 2}}, "`pruner` is null"),
    ]:
        (tmp_path / "bad.yaml").write_text(yaml.safe_dump({**spec, "search": {**spec["search"], **bad}}))
        with pytest.raises(UserError, match=message):
            load_study(tmp_path / "bad.yaml")
    (tmp_path / "both.yaml").write_text(yaml.safe_dump({**spec, "settings": []}))
    with pytest.raises(UserError, match="either `settings`"):
        load_study(tmp_path / "both.yaml")


def test_search_trials_are_tabled_best_first_with_where_pruned_ones_stopped(tmp_path):
    fake_run(tmp_path / "lr-trial1", [[0.6, 0.5], [0.6, 0.4]], metric="mae")  # CV 0.45
    fake_run(tmp_path / "lr-trial2", [[0.5, 0.4], [0.5, 0.4]], metric="mae")  # CV 0.4
    trials = [
        {"number": n, "run": f"lr-trial{n}", "state": state, "params": {"train.lr": lr}, "fold_scores": folds}
        for n, state, lr, folds in [
            (0, "PRUNED", 1e-3, {0: 0.9}),
            (1, "COMPLETE", 1e-4, {0: 0.5, 1: 0.4}),
            (2, "COMPLETE", 5e-5, {0: 0.4, 1: 0.4}),
            (3, "FAIL", 2e-3, {}),
        ]
    ]
    trials = [{**t, "skipped": None} for t in trials] + [{**trials[0], "number": 4, "skipped": "over the budget"}]
    rows = search_rows(trials, {t["run"]: tmp_path / t["run"] for t in trials})
    assert [(r["number"], r["cv"]) for r in rows] == [
        (2, pytest.approx(0.4)),
        (1, pytest.approx(0.45)),
        (3, None),
        (0, None),
    ]
    file = tmp_path / "lr.yaml"
    file.write_text(yaml.safe_dump({"search": {"trials": 4, "params": {"train.lr": {"low": 1.0e-5, "high": 1.0e-2}}}}))
    table = search_markdown(load_study(file), rows)
    assert table.startswith("| lr trial | train.lr | CV MAE | fold scores | state |")  # the runs' own metric
    assert "| lr-trial0 | 0.001 |  | 0.9000 | pruned at fold 0 |" in table
    assert table.endswith("best: lr-trial2 (0.4000): train.lr=5e-05")


def test_workers_split_the_gpus_round_robin_and_the_cores():
    cores = sorted(os.sched_getaffinity(0))
    env, mine = worker_environment(3, 2, ["4", "6"])
    assert env["CUDA_VISIBLE_DEVICES"] == "6"
    assert len(mine) == max(1, len(cores) // 2) and mine <= set(cores)
    shares = [worker_environment(i, 2, [])[1] for i in range(2)]
    assert len(cores) < 2 or not shares[0] & shares[1]  # two workers never share a core where there are two


@pytest.fixture
def postgres_url():
    """A throwaway PostgreSQL cluster (the Debian `postgresql` package): initdb and pg_ctl in a temporary folder,
    reached through a unix socket in it; as the `postgres` user when the test runs as root (initdb refuses root)."""
    found = shutil.which("initdb") or next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))), None)
    if not found:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    bindir = Path(found).parent
    folder = Path(tempfile.mkdtemp(prefix="textreg-pg-"))  # not in tmp_path: the postgres user must reach it
    as_user = []
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    data = folder / "data"
    subprocess.run(
        [*as_user, bindir / "initdb", "-D", data, "-U", "postgres", "--auth=trust"], check=True, capture_output=True
    )
    options = f"-p {port} -k {folder} -c listen_addresses=''"
    pg_ctl = [*as_user, bindir / "pg_ctl", "-D", data, "-l", folder / "server.log", "-w"]
    subprocess.run([*pg_ctl, "-o", options, "start"], check=True, capture_output=True)
    try:
        yield f"postgresql+psycopg2://postgres@/postgres?host={folder}&port={port}"
    finally:
        subprocess.run([*pg_ctl, "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_two_workers_on_one_storage_train_each_grid_pair_exactly_once(backend, make_config, tmp_path, capsys, request):
    url = request.getfixturevalue("postgres_url") if backend == "postgresql" else f"sqlite:///{tmp_path / 'o.db'}"
    config = str(make_config())
    file = write_study(
        tmp_path / "mini.yaml",
        [
            {"name": "base", "config": config},
            {"name": "fast", "config": config, "overrides": ["train.lr=3e-3"]},
            {"name": "broken", "config": config, "overrides": ["model.backbone=/no/such/folder"]},
        ],
    )
    command = [str(file), "--workers", "2", "--storage", url, "--launcher", sys.executable, "train.max_steps=3"]
    assert study.main(command) == 2
    err = capsys.readouterr().err
    assert "runs failed" in err and "s-broken-seed42" in err
    outputs = tmp_path / "outputs"
    assert "cannot be loaded" in (outputs / "studies" / "logs" / "s-broken-seed42.log").read_text()
    pairs = ["s-base-seed42", "s-fast-seed42"]

    def launches(run: str) -> int:
        return len(json.loads((outputs / run / "run.json").read_text())["launches"])

    for attempt in range(2):  # the same command again: every finished pair is left alone, the failed one retried
        trials = trained(storage_trials(url, "mini"))
        states = {
            run: [t.state.name for t in trials if t.user_attrs["run"] == run] for run in [*pairs, "s-broken-seed42"]
        }
        assert states == {**{run: ["COMPLETE"] for run in pairs}, "s-broken-seed42": ["FAIL"] * (attempt + 1)}
        assert all(launches(run) == 1 for run in pairs)  # each pair trained once, by one worker
        fold0 = json.loads((outputs / "s-fast-seed42" / "fold0" / "metrics.json").read_text())
        assert fold0["history"][-1]["step"] == 3  # the common override reached every run
        if attempt == 0:
            assert study.main(command) == 2
    rows = {row["setting"]: row for row in json.loads((outputs / "studies" / "mini.json").read_text())["rows"]}
    assert set(rows) == {"base", "fast"}  # the broken run has no row, and stopped neither of the others
    base, fast = (json.loads((outputs / run / "metrics.json").read_text())["cv_score"] for run in pairs)
    assert rows["base"]["cv"] == base and rows["base"]["delta"] == 0
    assert rows["fast"]["delta"] == pytest.approx(fast - base)
    table = (outputs / "studies" / "mini.md").read_text()
    assert "| fast | 1 |" in table and "trials: 2 complete, 0 pruned, 2 fail, 0 running, 0 waiting" in table


def write_search(path: Path, config: str, trials: int) -> Path:
    spec = {
        "prefix": "lr",
        "config": config,
        "search": {
            "trials": trials,
            "params": {"train.lr": {"low": 1.0e-4, "high": 1.0e-2, "log": True}},
            "pruner": {"n_startup_trials": 1, "n_warmup_steps": 0},
        },
    }
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.mark.slow
def test_a_search_trial_worse_than_the_others_after_its_first_fold_is_pruned_and_stops(make_config, tmp_path, capsys):
    # Three folds long enough that the training is stopped before its last one.
    config = str(make_config(cv={"n_folds": 3}, train__max_steps=400, train__eval_every=200))
    file = write_search(tmp_path / "lr.yaml", config, trials=2)
    url = f"sqlite:///{tmp_path / 'outputs' / 'studies' / 'optuna.db'}"
    (tmp_path / "outputs" / "studies").mkdir(parents=True)
    # A finished trial that scored 0 in every fold: any real fold is worse than the median of the others.
    reference = optuna.create_study(study_name="lr", storage=url)
    reference.add_trial(
        optuna.trial.create_trial(
            params={"train.lr": 1e-3},
            distributions={"train.lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)},
            value=0.0,
            intermediate_values={0: 0.0, 1: 0.0, 2: 0.0},
            user_attrs={"run": "lr-reference"},
        )
    )
    assert study.main([str(file), "--launcher", sys.executable]) == 0
    trial = storage_trials(url, "lr")[1]
    assert trial.state.name == "PRUNED" and list(trial.intermediate_values) == [0]
    run_dir = tmp_path / "outputs" / "lr-trial1"
    assert (run_dir / "fold0" / "metrics.json").is_file() and not (run_dir / "fold2" / "metrics.json").exists()
    assert len(json.loads((run_dir / "run.json").read_text())["launches"]) == 1
    table = (tmp_path / "outputs" / "studies" / "lr.md").read_text()
    assert "| lr-trial1 |" in table and "pruned at fold 0 |" in table
    assert "trials: 1 complete, 1 pruned, 0 fail, 0 running, 0 waiting" in table
    assert "pruned   lr-trial1 after fold 0" in capsys.readouterr().out


@pytest.mark.slow
def test_the_trial_of_a_killed_worker_is_retried_by_another(make_config, tmp_path):
    config = str(make_config(cv={"n_folds": 3}, train__max_steps=150, train__eval_every=75))
    file = write_study(tmp_path / "mini.yaml", [{"name": "base", "config": config}])
    command = [str(file), "--launcher", sys.executable, "--heartbeat", "1"]
    worker = subprocess.Popen([sys.executable, "src/study.py", *command], cwd=REPO, start_new_session=True)
    run_dir = tmp_path / "outputs" / "s-base-seed42"
    deadline = time.time() + 240
    while not (run_dir / "fold0" / "metrics.json").exists():
        assert worker.poll() is None and time.time() < deadline, "fold 0 never finished"
        time.sleep(0.05)
    os.killpg(worker.pid, signal.SIGKILL)  # the worker and its training, mid-trial
    worker.wait()
    assert not (run_dir / "fold2" / "metrics.json").exists(), "killed too late: the run had finished"

    assert study.main(command) == 0  # a second worker: waits for the trial to go stale, then trains it again
    url = f"sqlite:///{tmp_path / 'outputs' / 'studies' / 'optuna.db'}"
    killed, retried = storage_trials(url, "mini")
    assert killed.state.name == "FAIL" and retried.state.name == "COMPLETE"
    assert retried.system_attrs["failed_trial"] == killed.number and retried.user_attrs["run"] == "s-base-seed42"
    assert len(json.loads((run_dir / "run.json").read_text())["launches"]) == 2
    assert (
        "fold 0: finished before, kept" in (tmp_path / "outputs" / "studies" / "logs" / "s-base-seed42.log").read_text()
    )
