"""Classical ensemble members: cross-validated fits that write the same run folder as a fine-tuned backbone.

- `model.kind: tfidf_ridge`: word 1-2-gram TF-IDF (fitted on each fold's training rows) + ridge regression; its
  fold "checkpoint" is the IDF vector and the ridge weights in model.safetensors, plus vocabulary.json.
- `model.kind: embedding_ridge`: the frozen backbone's mean-pooled embeddings (`model.backbone`, not fine-tuned)
  + ridge regression; its checkpoint is the ridge weights, and the run folder keeps the backbone to embed again.
- `model.kind: features_gbm`: hand-made readability features (`textreg.readability`) + LightGBM, one booster per
  target; its checkpoint holds each booster in LightGBM's own text format, as bytes (`booster<j>`).

Nothing to unpickle, predictions from the saved files equal those made at fit time, and the run folder holds all
that predicting needs (`backbone/`: the tokenizer, and for embeddings the backbone itself), offline.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import Ridge
from transformers import AutoModel

from textreg.batching import Collator, eval_loader, tokenize
from textreg.config import Config, GBMConfig
from textreg.errors import UserError
from textreg.files import write_folder_once
from textreg.hardware import launched_processes, set_threads
from textreg.metrics import per_target, score
from textreg.model import load_backbone_config, load_tokenizer, mean_pool, resolve_backbone
from textreg.prediction import predict_rows
from textreg.readability import FEATURES, feature_matrix
from textreg.records import FoldResult, Listener, ValidationEvent

TFIDF = {"ngram_range": (1, 2), "min_df": 2, "sublinear_tf": True, "dtype": np.float64}


def fit_tfidf_ridge(texts: list[str], targets: np.ndarray, alpha: float) -> tuple[dict, list[str]]:
    vectorizer = TfidfVectorizer(**TFIDF).fit(texts)
    ridge = Ridge(alpha=alpha).fit(vectorizer.transform(texts), targets)
    state = {
        "idf": torch.from_numpy(vectorizer.idf_),
        "coef": torch.from_numpy(np.atleast_2d(ridge.coef_)),
        "intercept": torch.from_numpy(np.atleast_1d(ridge.intercept_)),
    }
    return state, vectorizer.get_feature_names_out().tolist()


def predict_tfidf_ridge(state: dict, vocabulary: list[str], texts: list[str]) -> np.ndarray:
    vectorizer = TfidfVectorizer(**TFIDF, vocabulary=vocabulary)
    vectorizer.idf_ = state["idf"].numpy()
    features = vectorizer.transform(texts)
    return np.asarray(features @ state["coef"].numpy().T) + state["intercept"].numpy()


def fit_ridge(features: np.ndarray, targets: np.ndarray, alpha: float) -> dict:
    ridge = Ridge(alpha=alpha).fit(features, targets)
    return {
        "coef": torch.from_numpy(np.atleast_2d(ridge.coef_)),
        "intercept": torch.from_numpy(np.atleast_1d(ridge.intercept_)),
    }


def predict_ridge(state: dict, features: np.ndarray) -> np.ndarray:
    return features @ state["coef"].numpy().T + state["intercept"].numpy()


def fit_gbm(features: np.ndarray, targets: np.ndarray, gbm: GBMConfig, seed: int, threads: int) -> dict:
    params = {
        "objective": "regression",
        "learning_rate": gbm.learning_rate,
        "num_leaves": gbm.num_leaves,
        "min_child_samples": gbm.min_child_samples,
        "subsample": 0.8,
        "subsample_freq": 1,
        "colsample_bytree": 0.8,
        "seed": seed,
        "deterministic": True,
        "force_row_wise": True,
        "num_threads": threads,
        "verbosity": -1,
    }
    import lightgbm  # imported only for this member: a transformer run (or a GPU image without it) never needs it

    state = {}
    for j in range(targets.shape[1]):
        data = lightgbm.Dataset(features, targets[:, j], feature_name=list(FEATURES))
        text = lightgbm.train(params, data, num_boost_round=gbm.rounds).model_to_string()
        state[f"booster{j}"] = torch.frombuffer(bytearray(text.encode()), dtype=torch.uint8)
    return state


def predict_gbm(state: dict, features: np.ndarray) -> np.ndarray:
    import lightgbm

    boosters = [lightgbm.Booster(model_str=bytes(state[f"booster{j}"].numpy()).decode()) for j in range(len(state))]
    return np.stack([booster.predict(features) for booster in boosters], axis=1)


@torch.no_grad()
def embed(backbone_dir: str | Path, texts: list[str], max_len: int, batch_size: int) -> np.ndarray:
    """Mean-pooled last hidden states of the frozen, pretrained backbone."""
    tokenizer = load_tokenizer(str(backbone_dir))
    backbone = AutoModel.from_pretrained(backbone_dir).eval()
    loader = eval_loader(
        tokenize(tokenizer, texts, max_len), np.arange(len(texts)), batch_size, Collator(tokenizer.pad_token_id)
    )

    def forward(batch: dict) -> torch.Tensor:
        hidden = backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        return mean_pool(hidden, batch["attention_mask"])

    return predict_rows(forward, loader, len(texts))


def member_inputs(cfg: Config, backbone_dir: str | Path, texts: list[str]) -> np.ndarray:
    """What the member fits on, one row per text: the texts themselves for TF-IDF (its vocabulary is each fold's
    own), else features that do not depend on the fold, computed once."""
    if cfg.model.kind == "embedding_ridge":
        return embed(backbone_dir, texts, cfg.model.max_len, cfg.train.eval_batch_size)
    if cfg.model.kind == "features_gbm":
        return feature_matrix(texts, load_tokenizer(str(backbone_dir)))
    return np.array(texts, dtype=object)


def predict_member(cfg: Config, state: dict, vocabulary: list[str] | None, inputs: np.ndarray) -> np.ndarray:
    if cfg.model.kind == "tfidf_ridge":
        return predict_tfidf_ridge(state, vocabulary, inputs)
    if cfg.model.kind == "features_gbm":
        return predict_gbm(state, inputs)
    return predict_ridge(state, inputs)


def predict_folds(cfg: Config, run_dir: Path, texts: list[str], folds: list[int]) -> dict[int, np.ndarray]:
    """Each fold's predictions for `texts`, from the run folder alone."""
    backbone = run_dir / "backbone"
    if not backbone.is_dir() and cfg.model.kind != "tfidf_ridge":  # a run folder made before members kept theirs
        backbone = resolve_backbone(cfg.model.backbone)
    inputs = member_inputs(cfg, backbone, texts)
    predictions = {}
    for fold in folds:
        fold_dir = run_dir / f"fold{fold}"
        vocabulary = fold_dir / "vocabulary.json"
        vocabulary = json.loads(vocabulary.read_text()) if vocabulary.is_file() else None
        predictions[fold] = predict_member(cfg, load_file(fold_dir / "model.safetensors"), vocabulary, inputs)
    return predictions


class ClassicalMember:
    """A classical member, fitted fold by fold in one process, with the same fold loop and run folder as a
    fine-tuned backbone."""

    separator = " "
    is_main_process = True
    print = staticmethod(print)

    def __init__(self, cfg: Config) -> None:
        if launched_processes() > 1:
            raise UserError(
                f"model.kind={cfg.model.kind} fits in one process: run it with `python src/train.py`, not under a "
                "launcher of several processes"
            )
        self.cfg = cfg
        self.backbone_path = None
        if cfg.model.kind != "tfidf_ridge":  # checked before anything is written: a UserError if it does not load
            self.backbone_path, _ = load_backbone_config(cfg.model)
            self.tokenizer = load_tokenizer(self.backbone_path)
        self.threads = set_threads(cfg.train.threads)

    def wait_for_everyone(self) -> None:
        """One process: nobody to wait for."""

    def describe(self) -> dict:
        return {"processes": 1, "mixed_precision": "no", "threads": self.threads}

    def announce(self) -> str:
        return f"{self.cfg.model.kind} on {self.threads} CPU thread(s)"

    def save_assets(self, folder: Path) -> None:
        """The backbone the features need again at prediction time: its tokenizer, and for embeddings its weights."""
        if self.backbone_path is None:
            return

        def write(tmp: Path) -> None:
            self.tokenizer.save_pretrained(tmp)
            if self.cfg.model.kind == "embedding_ridge":
                AutoModel.from_pretrained(self.backbone_path).save_pretrained(tmp)

        write_folder_once(folder, write)

    def prepare(
        self, texts: list[str], test_texts: list[str], targets: np.ndarray, folds_to_fit: int, pseudo_texts: list[str]
    ) -> None:
        """`pseudo_texts` is always empty: the config refuses pseudo-labels for a classical member."""
        tick = time.perf_counter()
        self.inputs = member_inputs(self.cfg, self.backbone_path, texts)
        self.test_inputs = member_inputs(self.cfg, self.backbone_path, test_texts)
        self.targets = targets.astype(np.float64)
        # computing the features is each fold's cost too: shared out, so that fold times add up to the wall time
        self.shared_seconds = (time.perf_counter() - tick) / max(1, folds_to_fit)

    def fit_fold(
        self,
        fold: int,
        train_rows: np.ndarray,
        valid_rows: np.ndarray,
        targets: np.ndarray,
        listener: Listener,
        pseudo: tuple[np.ndarray, float] | None = None,
    ) -> FoldResult:
        """Fit on `targets` of the training rows (a teacher's blend, with distillation); score on the truth."""
        cfg, tick = self.cfg, time.perf_counter()
        state, extra, predict = fit_member(cfg, self.inputs[train_rows], targets[train_rows], self.threads)
        valid_pred, test_pred = predict(self.inputs[valid_rows]), predict(self.test_inputs)
        seconds = time.perf_counter() - tick + self.shared_seconds
        truth = self.targets[valid_rows]
        event = ValidationEvent(
            step=1,
            epoch=1.0,
            val_score=score(cfg.metric, truth, valid_pred),
            val_per_target=per_target(cfg.metric, truth, valid_pred).tolist(),
            samples_per_second=len(train_rows) / seconds,
        )
        listener(event)
        return FoldResult(
            fold=fold,
            best_score=event.val_score,
            best_step=1,
            valid_pred=valid_pred,
            test_pred=test_pred,
            state=state,
            train_seconds=seconds,
            train_samples_per_second=event.samples_per_second,
            history=[event],
            extra_json=extra,
            fitted_pred=predict(self.inputs[train_rows]) if cfg.train.save_fitted else None,
        )


def fit_member(cfg: Config, inputs: np.ndarray, targets: np.ndarray, threads: int) -> tuple[dict, dict, Callable]:
    """Fit one fold: the checkpoint, any other file of the fold (a vocabulary), and a predictor made from them."""
    if cfg.model.kind == "tfidf_ridge":
        state, vocabulary = fit_tfidf_ridge(inputs, targets, cfg.model.ridge_alpha)
        return state, {"vocabulary.json": vocabulary}, lambda rows: predict_tfidf_ridge(state, vocabulary, rows)
    if cfg.model.kind == "features_gbm":
        state = fit_gbm(inputs, targets, cfg.model.gbm, cfg.seed, threads)
    else:
        state = fit_ridge(inputs, targets, cfg.model.ridge_alpha)
    return state, {}, lambda rows: predict_member(cfg, state, None, rows)
