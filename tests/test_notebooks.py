"""Both notebooks run top to bottom against a tiny run, so that they cannot rot; committed without outputs."""

import subprocess
import sys
from pathlib import Path

import nbformat
import pandas as pd
import pytest
from nbclient import NotebookClient

import ensemble as ensemble_cli

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


def execute(name: str) -> nbformat.NotebookNode:
    notebook = nbformat.read(REPO / "notebooks" / name, as_version=4)
    NotebookClient(notebook, kernel_name="python3", timeout=300, resources={"metadata": {"path": str(REPO)}}).execute()
    return notebook


def outputs(notebook: nbformat.NotebookNode, kind: str) -> list:
    return [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs if kind in o.get("data", {})]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebooks_are_committed_without_outputs(path):
    notebook = nbformat.read(path, as_version=4)
    assert all(not cell.get("outputs") and not cell.get("execution_count") for cell in notebook.cells)


@pytest.mark.slow
def test_eda_notebook_runs_and_draws(make_config, monkeypatch):
    monkeypatch.setenv("EDA_CONFIG", str(make_config()))
    notebook = execute("eda.ipynb")
    assert len(outputs(notebook, "image/png")) == 4  # target, length, standard error, folds
    text = "".join(o.get("text", "") for cell in notebook.cells for o in cell.get("outputs", []))
    assert "48 training rows" in text and "TF-IDF + ridge:      CV rmse" in text


@pytest.mark.slow
def test_inference_notebook_writes_the_ensemble_submission(make_config, competition, tmp_path, monkeypatch):
    config = make_config()
    for overrides in ([], ["experiment=tfidf", "model.kind=tfidf_ridge"]):
        cmd = [sys.executable, "src/train.py", "--config", str(config), *overrides]
        assert subprocess.run(cmd, cwd=REPO, capture_output=True, timeout=300).returncode == 0
    outputs_dir, submissions = tmp_path / "outputs", tmp_path / "submissions"
    args = ["--name", "blend", "--outputs", str(outputs_dir), "--submissions", str(submissions)]
    assert ensemble_cli.main([str(outputs_dir / "tiny"), str(outputs_dir / "tfidf"), *args]) == 0
    # As on Kaggle: the member folders and the weights together in one dataset folder, elsewhere than at fit time.
    dataset = tmp_path / "kaggle-dataset"
    dataset.mkdir()
    for member in ("tiny", "tfidf"):
        (outputs_dir / member).rename(dataset / member)
    (outputs_dir / "ensembles" / "blend" / "weights.json").rename(dataset / "weights.json")
    settings = {
        "TEXTREG_CODE": REPO / "src",
        "TEXTREG_WEIGHTS": dataset / "weights.json",
        "TEXTREG_MEMBERS": dataset,
        "TEXTREG_TEST": competition / "test.csv",
        "TEXTREG_SAMPLE": competition / "sample_submission.csv",
        "TEXTREG_OUTPUT": tmp_path / "submission.csv",
    }
    for key, value in settings.items():
        monkeypatch.setenv(key, str(value))
    execute("inference.ipynb")
    from_notebook = pd.read_csv(tmp_path / "submission.csv")
    from_command = pd.read_csv(submissions / "blend.csv")
    assert from_notebook["id"].equals(from_command["id"])
    pd.testing.assert_series_equal(from_notebook["target"], from_command["target"], atol=1e-6)
