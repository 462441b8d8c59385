"""Classical ensemble members: cross-validated fits that write the same run folder as a fine-tuned backbone.

- `model.kind: tfidf_ridge`: word 1-2-gram TF-IDF (fitted on each fold's training rows) + ridge regression; its
  fold "checkpoint" is the IDF vector and the ridge weights in model.safetensors, plus vocabulary.json.
- `model.kind: embedding_ridge`: the frozen backbone's mean-pooled embeddings (`model.backbone`, not fine-tuned)
  + ridge regression; its checkpoint is the ridge weights (the backbone is needed again to predict).

Nothing to unpickle, and predictions from the saved files equal those made at fit time.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import Ridge
from transformers import AutoModel

from textreg import artifacts
from textreg.batching import Collator, eval_loader, tokenize
from textreg.config import Config
from textreg.data import model_inputs
from textreg.engine import FoldResult
from textreg.metrics import per_target, score
from textreg.model import load_backbone_config, load_tokenizer, mean_pool
from textreg.tracking import Tracker

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


@torch.no_grad()
def embed(cfg: Config, texts: list[str]) -> np.ndarray:
    """Mean-pooled last hidden states of the frozen, pretrained backbone."""
    path, config = load_backbone_config(cfg.model)
    tokenizer = load_tokenizer(path)
    backbone = AutoModel.from_pretrained(path, config=config).eval()
    input_ids = tokenize(tokenizer, texts, cfg.model.max_len)
    loader = eval_loader(input_ids, np.arange(len(texts)), cfg.train.eval_batch_size, Collator(tokenizer.pad_token_id))
    features = np.zeros((len(texts), config.hidden_size))
    for batch in loader:
        hidden = backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        features[batch["row"].numpy()] = mean_pool(hidden, batch["attention_mask"]).double().numpy()
    return features


def load_fold(fold_dir: Path) -> tuple[dict, list[str] | None]:
    vocabulary = fold_dir / "vocabulary.json"
    return load_file(fold_dir / "model.safetensors"), json.loads(
        vocabulary.read_text()
    ) if vocabulary.is_file() else None


def predict_folds(cfg: Config, run_dir: Path, texts: list[str], folds: list[int]) -> dict[int, np.ndarray]:
    """Each fold's predictions for `texts`, from the fold files alone."""
    features = embed(cfg, texts) if cfg.model.kind == "embedding_ridge" else None
    predictions = {}
    for fold in folds:
        state, vocabulary = load_fold(run_dir / f"fold{fold}")
        if features is None:
            predictions[fold] = predict_tfidf_ridge(state, vocabulary, texts)
        else:
            predictions[fold] = predict_ridge(state, features)
    return predictions


def run_classical(cfg: Config, train_df, test_df, folds: list[int]) -> None:
    """Fit the configured folds (the run folder is prepared by the caller)."""
    run_dir, targets = cfg.run_dir, train_df[cfg.data.target_columns].to_numpy(dtype=np.float64)
    texts, test_texts = model_inputs(train_df, cfg.data, " "), model_inputs(test_df, cfg.data, " ")
    train_df = train_df.assign(text_length=[len(text) for text in texts])
    tracker, finished = Tracker(cfg, is_main_process=True), artifacts.finished_folds(run_dir)
    alpha, features, test_features, shared_seconds = cfg.model.ridge_alpha, None, None, 0.0
    if cfg.model.kind == "embedding_ridge":  # once for all folds: the backbone is frozen
        tick = time.perf_counter()
        features, test_features = embed(cfg, texts), embed(cfg, test_texts)
        # the embedding time is each fold's cost too: shared out, so that training times add up to the wall time
        shared_seconds = (time.perf_counter() - tick) / max(1, len(set(folds) - set(finished)))
    for fold in folds:
        if fold in finished:
            print(f"fold {fold}: finished before, kept (overwrite=true fits every fold again)")
            continue
        tick = time.perf_counter()
        train_rows = np.flatnonzero(train_df["fold"].to_numpy() != fold)
        valid_rows = np.flatnonzero(train_df["fold"].to_numpy() == fold)
        fold_dir = run_dir / f"fold{fold}"
        fold_dir.mkdir(exist_ok=True)
        if features is None:
            state, vocabulary = fit_tfidf_ridge([texts[i] for i in train_rows], targets[train_rows], alpha)
            artifacts.write_json(vocabulary, fold_dir / "vocabulary.json")
            valid_pred = predict_tfidf_ridge(state, vocabulary, [texts[i] for i in valid_rows])
            test_pred = predict_tfidf_ridge(state, vocabulary, test_texts)
        else:
            state = fit_ridge(features[train_rows], targets[train_rows], alpha)
            valid_pred = predict_ridge(state, features[valid_rows])
            test_pred = predict_ridge(state, test_features)
        seconds = time.perf_counter() - tick + shared_seconds
        val_score = score(cfg.metric, targets[valid_rows], valid_pred)
        event = {
            "step": 1,
            "epoch": 1.0,
            "val_score": val_score,
            "val_per_target": per_target(cfg.metric, targets[valid_rows], valid_pred).tolist(),
            "train_loss": float("nan"),
            "lr": 0.0,
            "samples_per_second": len(train_rows) / seconds,
        }
        result = FoldResult(
            fold=fold,
            best_score=val_score,
            best_step=1,
            valid_pred=valid_pred,
            test_pred=test_pred,
            best_state=state,
            train_seconds=seconds,
            train_samples_per_second=len(train_rows) / seconds,
            history=[event],
        )
        with tracker.fold_run(fold):
            tracker.summarize({f"best_val_{cfg.metric}": val_score, "best_step": 1})
            artifacts.save_fold(run_dir, cfg, result, train_df.iloc[valid_rows], test_df[cfg.data.id_column])
        print(f"fold {fold}: val {cfg.metric} {val_score:.4f}")
