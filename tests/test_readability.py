"""Readability features and the features + LightGBM member."""

import numpy as np
import pandas as pd
import pytest
from conftest import TOKENIZER_DIR, train_in_process
from transformers import AutoTokenizer

from textreg.readability import FEATURES, feature_matrix, syllables


@pytest.mark.parametrize(("word", "count"), [("cat", 1), ("table", 2), ("make", 1), ("river", 2), ("epistemology", 6)])
def test_syllables(word, count):
    assert syllables(word) == count


def test_a_harder_text_scores_as_harder():
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    easy = "The cat sat. The dog ran. We had fun in the sun."
    hard = (
        "Notwithstanding considerable epistemological disagreement, phenomenological investigations "
        "substantially illuminated intersubjective comprehension."
    )
    (easy_row, hard_row) = feature_matrix([easy, hard], tokenizer)
    easy_f, hard_f = dict(zip(FEATURES, easy_row, strict=True)), dict(zip(FEATURES, hard_row, strict=True))
    assert easy_f["sentences"] == 3 and hard_f["sentences"] == 1
    assert hard_f["flesch_kincaid_grade"] > easy_f["flesch_kincaid_grade"] + 10
    assert hard_f["flesch_reading_ease"] < easy_f["flesch_reading_ease"] - 50
    assert hard_f["split_word_ratio"] > easy_f["split_word_ratio"]
    assert np.isfinite(feature_matrix(["", "!!!"], tokenizer)).all()  # no words, no sentences: still numbers


def test_the_gbm_member_learns_a_length_driven_target(make_config, competition, tmp_path):
    # The synthetic target is the text's length in characters plus noise: the features carry it.
    train_in_process(make_config(), "model.kind=features_gbm", "model.gbm.min_child_samples=3", "model.gbm.rounds=100")
    run_dir = tmp_path / "outputs" / "tiny"
    oof = pd.read_csv(run_dir / "oof.csv")
    assert len(oof) == len(pd.read_csv(competition / "train.csv"))
    rmse = np.sqrt(np.mean((oof["target_pred"] - oof["target"]) ** 2))
    assert rmse < 0.5 * oof["target"].std()
