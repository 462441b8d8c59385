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

import time
from pathlib import Path

import numpy as np
import torch
from scipy.sparse import csr_matrix
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import Ridge
from transformers import AutoModel

from textreg.batching import TextBatcher
from textreg.config import ModelConfig, TrainConfig
from textreg.errors import UserError
from textreg.files import write_folder_once
from textreg.hardware import launched_processes, set_threads
from textreg.members import Task, TextsWith
from textreg.model import load_backbone_config, load_tokenizer, resolve_backbone
from textreg.pooling import mean_pool
from textreg.prediction import predict_rows
from textreg.readability import FEATURES, feature_matrix
from textreg.records import FoldResult, Listener, ValidationEvent

TFIDF = {"ngram_range": (1, 2), "min_df": 2, "sublinear_tf": True, "dtype": np.float64}


def fit_ridge(features: np.ndarray | csr_matrix, targets: np.ndarray, alpha: float) -> dict:
    ridge = Ridge(alpha=alpha).fit(features, targets)
    coef, intercept = np.atleast_2d(ridge.coef_), np.atleast_1d(ridge.intercept_)
    return {"coef": torch.from_numpy(coef), "intercept": torch.from_numpy(intercept)}


def predict_ridge(state: dict, features: np.ndarray | csr_matrix) -> np.ndarray:
    return np.asarray(features @ state["coef"].numpy().T) + state["intercept"].numpy()


def fit_tfidf_ridge(texts: list[str], targets: np.ndarray, alpha: float) -> tuple[dict, list[str]]:
    vectorizer = TfidfVectorizer(**TFIDF).fit(texts)
    state = {"idf": torch.from_numpy(vectorizer.idf_), **fit_ridge(vectorizer.transform(texts), targets, alpha)}
    return state, vectorizer.get_feature_names_out().tolist()


def predict_tfidf_ridge(state: dict, vocabulary: list[str], texts: list[str]) -> np.ndarray:
    vectorizer = TfidfVectorizer(**TFIDF, vocabulary=vocabulary)
    vectorizer.idf_ = state["idf"].numpy()
    return predict_ridge(state, vectorizer.transform(texts))


@torch.no_grad()
def embed(backbone_dir: str, texts: list[str], model: ModelConfig, batch_size: int) -> np.ndarray:
    """Mean-pooled last hidden states of the frozen, pretrained backbone; a text of several windows (as
    `model.truncation` cuts it, at `model.predict_max_len`) gets their mean."""
    batcher = TextBatcher(
        load_tokenizer(backbone_dir), model.predict_max_len or model.max_len, None, model.truncation, model.stride
    )
    backbone = AutoModel.from_pretrained(backbone_dir).eval()

    def forward(batch: dict) -> torch.Tensor:
        hidden = backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        return mean_pool(hidden, batch["attention_mask"])

    return predict_rows(forward, batcher.texts_loader(texts, batch_size), len(texts), progress="embeddings")


class ClassicalMember:
    """A classical member, fitted fold by fold in one process, with the same fold loop and run folder as a
    fine-tuned backbone. A kind says what it fits on (`inputs`), how it fits (`fit`) and predicts (`predict`)."""

    separator = " "
    batch_size = None
    is_main_process = True
    print = staticmethod(print)
    uses_backbone = True  # its features need the backbone's tokenizer (kept in the run folder's backbone/)
    keeps_backbone_weights = False  # they need its weights too
    extra_files: tuple[str, ...] = ()  # the fold files `fit` writes besides the checkpoint

    def __init__(self, model: ModelConfig, train: TrainConfig, task: Task) -> None:
        if launched_processes() > 1:
            raise UserError(
                f"model.kind={model.kind} fits in one process: run it with `python src/train.py`, not under a "
                "launcher of several processes"
            )
        self.model, self.train, self.task = model, train, task
        self.backbone_path = None
        if self.uses_backbone:  # checked before anything is written: a UserError if it does not load
            self.backbone_path, _ = load_backbone_config(model)
            self.tokenizer = load_tokenizer(self.backbone_path)
        self.threads = set_threads(train.threads)

    # --- what a kind defines
    @classmethod
    def inputs(cls, model: ModelConfig, train: TrainConfig, backbone: str | None, texts: list[str]) -> np.ndarray:
        """What the kind fits on, one row per text, computed once for every fold."""
        return np.array(texts, dtype=object)

    def fit(self, inputs: np.ndarray, targets: np.ndarray) -> tuple[dict, dict]:
        """One fold's checkpoint (tensors) and any other file of the fold (name -> JSON)."""
        raise NotImplementedError

    @classmethod
    def predict(cls, state: dict, extra: dict, inputs: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    # --- the member protocol (textreg.members.Member)
    def wait_for_everyone(self) -> None:
        """One process: nobody to wait for."""

    def describe(self) -> dict:
        return {"processes": 1, "mixed_precision": "no", "threads": self.threads}

    def announce(self) -> str:
        return f"{self.model.kind} on {self.threads} CPU thread(s)"

    def save_assets(self, folder: Path) -> None:
        """The backbone the features need again at prediction time: its tokenizer, and for embeddings its weights."""
        if self.backbone_path is None:
            return

        def write(tmp: Path) -> None:
            self.tokenizer.save_pretrained(tmp)
            if self.keeps_backbone_weights:
                AutoModel.from_pretrained(self.backbone_path).save_pretrained(tmp)

        write_folder_once(folder, write)

    def prepare(
        self, texts: list[str], test_texts: list[str], targets: np.ndarray, folds_to_fit: int, extra_texts: list[str]
    ) -> None:
        """`extra_texts` is always empty: the config refuses extra training rows for a classical member."""
        tick = time.perf_counter()
        self.fit_inputs = self.inputs(self.model, self.train, self.backbone_path, texts)
        self.test_inputs = self.inputs(self.model, self.train, self.backbone_path, test_texts)
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
        extra: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> FoldResult:
        """Fit on `targets` of the training rows (a teacher's blend, with distillation); score on the truth."""
        scorer, tick = self.task.scorer, time.perf_counter()
        state, extra = self.fit(self.fit_inputs[train_rows], targets[train_rows])
        valid_pred = self.predict(state, extra, self.fit_inputs[valid_rows])
        test_pred = self.predict(state, extra, self.test_inputs)
        seconds = time.perf_counter() - tick + self.shared_seconds
        truth = self.targets[valid_rows]
        event = ValidationEvent(
            step=1,
            epoch=1.0,
            val_score=scorer.score(truth, valid_pred),
            val_per_target=scorer.per_target(truth, valid_pred).tolist(),
            samples_per_second=len(train_rows) / seconds,
        )
        listener(event)
        fitted = self.predict(state, extra, self.fit_inputs[train_rows]) if self.train.save_fitted else None
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
            fitted_pred=fitted,
        )

    @classmethod
    def predict_folds(
        cls, model: ModelConfig, train: TrainConfig, task: Task, texts_with: TextsWith, folds: list[int]
    ) -> dict[int, np.ndarray]:
        run, backbone = task.run, str(task.run.backbone_dir)
        if cls.uses_backbone and not run.backbone_dir.is_dir():  # a run folder made before members kept theirs
            backbone = resolve_backbone(model.backbone)
        inputs = cls.inputs(model, train, backbone if cls.uses_backbone else None, texts_with(cls.separator))
        extras = {fold: {name: run.fold_json(fold, name) for name in cls.extra_files} for fold in folds}
        return {fold: cls.predict(run.fold_weights(fold), extras[fold], inputs) for fold in folds}


class TfidfRidge(ClassicalMember):
    uses_backbone = False
    extra_files = ("vocabulary.json",)

    def fit(self, inputs: np.ndarray, targets: np.ndarray) -> tuple[dict, dict]:
        state, vocabulary = fit_tfidf_ridge(inputs, targets, self.model.ridge_alpha)
        return state, {"vocabulary.json": vocabulary}

    @classmethod
    def predict(cls, state: dict, extra: dict, inputs: np.ndarray) -> np.ndarray:
        return predict_tfidf_ridge(state, extra["vocabulary.json"], inputs)


class EmbeddingRidge(ClassicalMember):
    keeps_backbone_weights = True

    @classmethod
    def inputs(cls, model: ModelConfig, train: TrainConfig, backbone: str | None, texts: list[str]) -> np.ndarray:
        return embed(backbone, texts, model, train.eval_batch_size)

    def fit(self, inputs: np.ndarray, targets: np.ndarray) -> tuple[dict, dict]:
        return fit_ridge(inputs, targets, self.model.ridge_alpha), {}

    @classmethod
    def predict(cls, state: dict, extra: dict, inputs: np.ndarray) -> np.ndarray:
        return predict_ridge(state, inputs)


class FeaturesGbm(ClassicalMember):
    @classmethod
    def inputs(cls, model: ModelConfig, train: TrainConfig, backbone: str | None, texts: list[str]) -> np.ndarray:
        return feature_matrix(texts, load_tokenizer(backbone))

    def fit(self, inputs: np.ndarray, targets: np.ndarray) -> tuple[dict, dict]:
        import lightgbm  # imported only for this member: a transformer run (or a GPU image without it) never needs it

        gbm = self.model.gbm
        params = {
            "objective": "regression",
            "learning_rate": gbm.learning_rate,
            "num_leaves": gbm.num_leaves,
            "min_child_samples": gbm.min_child_samples,
            "subsample": 0.8,
            "subsample_freq": 1,
            "colsample_bytree": 0.8,
            "seed": self.task.seed,
            "deterministic": True,
            "force_row_wise": True,
            "num_threads": self.threads,
            "verbosity": -1,
        }
        state = {}
        for j in range(targets.shape[1]):
            data = lightgbm.Dataset(inputs, targets[:, j], feature_name=list(FEATURES))
            text = lightgbm.train(params, data, num_boost_round=gbm.rounds).model_to_string()
            state[f"booster{j}"] = torch.frombuffer(bytearray(text.encode()), dtype=torch.uint8)
        return state, {}

    @classmethod
    def predict(cls, state: dict, extra: dict, inputs: np.ndarray) -> np.ndarray:
        import lightgbm

        boosters = [lightgbm.Booster(model_str=bytes(state[f"booster{j}"].numpy()).decode()) for j in range(len(state))]
        return np.stack([booster.predict(inputs) for booster in boosters], axis=1)
