"""Classical ensemble members: cross-validated fits that write the same run folder as a fine-tuned backbone.

- `model.kind: tfidf_ridge`: word 1-2-gram TF-IDF (fitted on each fold's training rows) + ridge regression; its
  fold "checkpoint" is the IDF vector and the ridge weights in model.safetensors, plus vocabulary.json.
- `model.kind: embedding_ridge`: the frozen backbone's mean-pooled embeddings (`model.backbone`, not fine-tuned)
  + ridge regression; its checkpoint is the ridge weights (the backbone is needed again to predict).
- `model.kind: features_gbm`: hand-made readability features (`textreg.readability`) + LightGBM, one booster per
  target; its checkpoint holds each booster in LightGBM's own text format, as bytes (`booster<j>`).

Nothing to unpickle, and predictions from the saved files equal those made at fit time.
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

from textreg import artifacts
from textreg.batching import Collator, eval_loader, tokenize
from textreg.config import Config, GBMConfig
from textreg.data import model_inputs
from textreg.engine import FoldResult
from textreg.metrics import per_target, score
from textreg.model import load_backbone_config, load_tokenizer, mean_pool, resolve_backbone
from textreg.readability import FEATURES, feature_matrix
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


def fit_gbm(features: np.ndarray, targets: np.ndarray, gbm: GBMConfig, seed: int, threads: int | None) -> dict:
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
        "num_threads": threads or 0,
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


def readability_features(cfg: Config, texts: list[str]) -> np.ndarray:
    return feature_matrix(texts, load_tokenizer(resolve_backbone(cfg.model.backbone)))


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
    inputs = member_inputs(cfg, texts)
    predictions = {}
    for fold in folds:
        state, vocabulary = load_fold(run_dir / f"fold{fold}")
        predictions[fold] = predict_member(cfg, state, vocabulary, inputs)
    return predictions


def member_inputs(cfg: Config, texts: list[str]) -> np.ndarray:
    """What the member fits on, one row per text: the texts themselves for TF-IDF (its vocabulary is each fold's
    own), else features that do not depend on the fold, computed once."""
    if cfg.model.kind == "embedding_ridge":
        return embed(cfg, texts)
    if cfg.model.kind == "features_gbm":
        return readability_features(cfg, texts)
    return np.array(texts, dtype=object)


def predict_member(cfg: Config, state: dict, vocabulary: list[str] | None, inputs: np.ndarray) -> np.ndarray:
    if cfg.model.kind == "tfidf_ridge":
        return predict_tfidf_ridge(state, vocabulary, inputs)
    if cfg.model.kind == "features_gbm":
        return predict_gbm(state, inputs)
    return predict_ridge(state, inputs)


def fit_member(cfg: Config, inputs: np.ndarray, targets: np.ndarray, fold_dir: Path) -> tuple[dict, Callable]:
    """Fit one fold; write any file besides the checkpoint; return the state and a predictor made from it."""
    vocabulary = None
    if cfg.model.kind == "tfidf_ridge":
        state, vocabulary = fit_tfidf_ridge(inputs, targets, cfg.model.ridge_alpha)
        artifacts.write_json(vocabulary, fold_dir / "vocabulary.json")
    elif cfg.model.kind == "features_gbm":
        state = fit_gbm(inputs, targets, cfg.model.gbm, cfg.seed, cfg.train.threads)
    else:
        state = fit_ridge(inputs, targets, cfg.model.ridge_alpha)
    return state, lambda rows: predict_member(cfg, state, vocabulary, rows)


def run_classical(cfg: Config, train_df, test_df, folds: list[int]) -> None:
    """Fit the configured folds (the run folder is prepared by the caller)."""
    run_dir, targets = cfg.run_dir, train_df[cfg.data.target_columns].to_numpy(dtype=np.float64)
    texts, test_texts = model_inputs(train_df, cfg.data, " "), model_inputs(test_df, cfg.data, " ")
    train_df = train_df.assign(text_length=[len(text) for text in texts])
    tracker, finished = Tracker(cfg, is_main_process=True), artifacts.finished_folds(run_dir)
    tick = time.perf_counter()
    inputs, test_inputs = member_inputs(cfg, texts), member_inputs(cfg, test_texts)
    # computing the features is each fold's cost too: shared out, so that fold times add up to the wall time
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
        state, predict_rows = fit_member(cfg, inputs[train_rows], targets[train_rows], fold_dir)
        valid_pred, test_pred = predict_rows(inputs[valid_rows]), predict_rows(test_inputs)
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
