"""Long texts (`model.truncation`, `model.predict_max_len`): a label written at the end of a text is learnt by the
truncations that read the end, and not by the head alone."""

import json

import numpy as np
import pandas as pd
import pytest
from conftest import WORDS, train_in_process

import predict


def end_labelled_competition(folder, n_train=160, n_test=8, seed=0):
    """Texts of 24 to 32 filler words, then a last sentence that gives the label: good (1) or bad (0)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)

    def rows(n):
        labels = rng.integers(0, 2, size=n)
        texts = [
            " ".join(rng.choice(WORDS, size=rng.integers(24, 32)))
            + (" . good good good good ." if y else " . bad bad bad bad .")
            for y in labels
        ]
        return texts, labels.astype(float)

    texts, labels = rows(n_train)
    pd.DataFrame({"id": [f"tr{i}" for i in range(n_train)], "excerpt": texts, "target": labels}).to_csv(
        folder / "train.csv", index=False
    )
    test_texts, _ = rows(n_test)
    test = pd.DataFrame({"id": [f"te{i}" for i in range(n_test)], "excerpt": test_texts})
    test.to_csv(folder / "test.csv", index=False)
    test[["id"]].assign(target=0.0).to_csv(folder / "sample_submission.csv", index=False)
    return folder


KEYS = [
    "model.max_len=16",
    "train.epochs=20",
    "train.max_steps=120",
    "train.eval_every=20",
    "train.eval_start=0",
    "train.lr=3e-3",
]


@pytest.mark.slow
def test_the_end_of_a_text_is_learnt_by_head_tail_and_windows_and_not_by_the_head(make_config, tmp_path):
    config = make_config(data_dir=end_labelled_competition(tmp_path / "essays"))
    scores = {}
    for truncation in ("head", "head_tail", "windows"):
        train_in_process(config, f"experiment={truncation}", f"model.truncation={truncation}", "model.stride=14", *KEYS)
        scores[truncation] = json.loads((tmp_path / "outputs" / truncation / "metrics.json").read_text())["cv_score"]
    assert scores["head"] > 0.45  # no better than predicting the mean of 0/1 labels (RMSE 0.5)
    assert scores["head_tail"] < 0.2 and scores["windows"] < 0.42  # windows: one in three or four reads the label

    # predict.py cuts and averages the windows as training did: the same test predictions
    run_dir = tmp_path / "outputs" / "windows"
    assert predict.main([str(run_dir), "--input", str(tmp_path / "essays" / "test.csv")]) == 0
    again = pd.read_csv(run_dir / "predictions" / "test.csv").set_index("id")["target"]
    at_fit = pd.read_csv(run_dir / "test_predictions.csv").set_index("id")["target"]
    np.testing.assert_allclose(again.loc[at_fit.index], at_fit, atol=1e-5)
