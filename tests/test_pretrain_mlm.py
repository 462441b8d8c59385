"""Masked-LM pretraining (src/pretrain_mlm.py): the folder it writes fine-tunes, its loss falls, a broken run
resumes to the same weights, a finished one is not redone, extra text files are read or refused clearly."""

from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from conftest import REPO, make_competition, train_in_process
from fake_wandb import fake_wandb_fixture  # noqa: F401 (the fake_wandb fixture)
from safetensors.torch import load_file
from test_config import _defaults_set_again
from transformers import AutoModel

import pretrain_mlm
from textreg import checkpoints, pretraining
from textreg.config import PretrainConfig, load_pretrain_config

EPOCHS = 3


def write_pretrain_config(folder: Path, data_dir: Path, backbone: Path, **pretrain) -> Path:
    """The repo's MiniLM pretraining config on synthetic data and a tiny BERT: 53 texts, 11 held out, batch 8,
    6 steps an epoch; a high learning rate so that a few steps show."""
    config = {
        "defaults": [str(REPO / "configs" / "pretrain" / "minilm_mlm.yaml")],
        "output_dir": str(folder / "outputs"),
        "data": {"dir": str(data_dir)},
        "model": {"backbone": str(backbone)},
        "pretrain": {
            "output": str(folder / "tiny-mlm"),
            "epochs": EPOCHS,
            "lr": 1e-3,
            "warmup_ratio": 0.0,
            "batch_size": 8,
            "max_len": 32,
            "valid_share": 0.2,
            "mixed_precision": "no",
            "checkpoint_every": None,
            **pretrain,
        },
        "tracking": {"mode": "disabled"},
    }
    path = folder / "pretrain.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def run(config: Path, *overrides: str) -> int:
    return pretrain_mlm.main(["--config", str(config), *overrides])


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, backbones) -> Path:
    """One unbroken pretraining run, shared by the tests that read its output."""
    folder = tmp_path_factory.mktemp("pretrain")
    config = write_pretrain_config(folder, make_competition(folder / "data"), backbones["bert"])
    assert run(config) == 0
    return config


def output_of(config: Path) -> Path:
    return load_pretrain_config(config).pretrain.output


def test_the_output_folder_loads_as_a_backbone_with_the_pretrained_encoder(pretrained, backbones):
    output = output_of(pretrained)
    assert not pretraining.checkpoint_dir(output).exists()
    mlm = load_file(output / "model.safetensors")
    start = load_file(backbones["bert"] / "model.safetensors")
    encoder = AutoModel.from_pretrained(output).state_dict()
    name = "encoder.layer.1.attention.self.query.weight"
    assert torch.equal(encoder[name], mlm[f"bert.{name}"])  # AutoModel reads the pretrained encoder
    assert not torch.allclose(encoder[name], start[name])  # which training changed


def test_held_out_masked_lm_loss_falls_every_epoch(pretrained):
    history = yaml.safe_load((output_of(pretrained) / pretraining.SUMMARY_FILE).read_text())["history"]
    assert [event["epoch"] for event in history] == list(range(1, EPOCHS + 1))
    assert [event["step"] for event in history] == [6, 12, 18]
    losses = [event["valid_loss"] for event in history]
    assert losses == sorted(losses, reverse=True) and losses[-1] < losses[0] - 0.1, losses


def test_the_pretrained_folder_fine_tunes(pretrained, make_config, tmp_path):
    output = output_of(pretrained)
    train_in_process(make_config(model__backbone=str(output)))
    assert (tmp_path / "outputs" / "tiny" / "metrics.json").is_file()


def test_a_second_run_with_the_output_complete_does_nothing(pretrained, monkeypatch, capsys):
    output = output_of(pretrained)
    before = {p.name: p.stat().st_mtime_ns for p in output.iterdir()}

    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(pretraining.AutoModelForMaskedLM, "from_pretrained", no_model)
    assert run(pretrained) == 0
    assert "complete already: nothing to do" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in output.iterdir()} == before


def test_an_interrupted_run_resumes_to_the_weights_of_an_unbroken_one(
    pretrained, backbones, tmp_path, monkeypatch, capsys, fake_wandb
):
    data_dir = Path(load_pretrain_config(pretrained).data.dir)
    config = write_pretrain_config(tmp_path, data_dir, backbones["bert"], checkpoint_every=4)
    save, saves = checkpoints.save, []

    def save_then_crash(*args, **kwargs):
        seconds = save(*args, **kwargs)
        saves.append(args[2].step)
        if len(saves) == 2:
            raise RuntimeError("killed")
        return seconds

    with monkeypatch.context() as patch:
        patch.setattr(checkpoints, "save", save_then_crash)
        with pytest.raises(RuntimeError, match="killed"):
            run(config, "tracking.mode=offline")
    assert saves == [4, 8]
    output = output_of(config)
    assert not output.exists()
    assert [p.name for p in checkpoints.complete(pretraining.checkpoint_dir(output))] == ["checkpoint-8"]
    capsys.readouterr()

    assert run(config, "tracking.mode=offline") == 0
    assert "resuming from" in capsys.readouterr().out
    assert not pretraining.checkpoint_dir(output).exists()
    resumed, unbroken = load_file(output / "model.safetensors"), load_file(output_of(pretrained) / "model.safetensors")
    assert resumed.keys() == unbroken.keys()
    for name in resumed:
        torch.testing.assert_close(resumed[name], unbroken[name], atol=1e-6, rtol=0, msg=name)
    # W&B: the resumed run shows the whole curve, one entry per epoch, under the output folder's name.
    broken, rerun = fake_wandb.runs
    assert broken.job_type == rerun.job_type == "pretrain" and rerun.name == "tiny-mlm"
    assert broken.exit_code != 0 and rerun.exit_code == 0
    assert [h["_step"] for h in rerun.history if "val/mlm_loss" in h] == [6, 12, 18]


def test_extra_text_files_are_read_and_duplicates_dropped(tmp_path, competition, backbones):
    first = pd.read_csv(competition / "train.csv")["excerpt"][0]
    (tmp_path / "more.txt").write_text(f"one extra text\n\n  {first}  \nanother one\n")
    pd.DataFrame({"text": ["from a table", "one extra text"], "source": ["x", "y"]}).to_csv(tmp_path / "more.csv")
    config = write_pretrain_config(
        tmp_path, competition, backbones["bert"], extra_texts=[str(tmp_path / "more.txt"), str(tmp_path / "more.csv")]
    )
    cfg = load_pretrain_config(config)
    texts = pretraining.gather_texts(cfg.data, cfg.pretrain.extra_texts, "[SEP]")
    assert len(texts) == 48 + 5 + 3  # competition train + test, then 3 new texts of the 5 extra ones
    assert texts[-3:] == ["one extra text", "another one", "from a table"]


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("absent.txt", None, "file not found"),
        ("notext.csv", "body,source\nsome words,x\n", "has no 'text' column"),
    ],
)
def test_a_missing_or_malformed_extra_file_is_one_clear_error(
    tmp_path, competition, backbones, capsys, name, content, message
):
    if content is not None:
        (tmp_path / name).write_text(content)
    config = write_pretrain_config(tmp_path, competition, backbones["bert"], extra_texts=[str(tmp_path / name)])
    assert run(config) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: pretrain.extra_texts") and message in err[0], err


@pytest.mark.parametrize("name", ["minilm_mlm.yaml", "mpnet_base_mlm.yaml"])
def test_shipped_pretraining_configs_validate_and_restate_no_default(name):
    path = REPO / "configs" / "pretrain" / name
    cfg = load_pretrain_config(path)
    assert cfg.pretrain.output.parent == Path("input/backbones") and cfg.data.text_column == "excerpt"
    raw = yaml.safe_load(path.read_text())
    raw.pop("defaults", None)
    assert _defaults_set_again(raw, PretrainConfig) == []
