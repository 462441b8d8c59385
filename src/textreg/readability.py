"""Hand-made readability features: the classic formulas' ingredients, plus word rarity seen by a tokenizer.

No word lists are needed: a word the backbone's tokenizer splits into several pieces is a rare word, which stands in
for the unfamiliar-word lists of Dale-Chall.
"""

from __future__ import annotations

import re

import numpy as np
from transformers import PreTrainedTokenizerBase

WORD = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)?")
SENTENCE_END = re.compile(r"[.!?]+(?:[\"')\]]*)(?:\s+|$)")
VOWEL_GROUPS = re.compile(r"[aeiouy]+")

FEATURES = (
    "chars",
    "words",
    "sentences",
    "words_per_sentence",
    "letters_per_word",
    "syllables_per_word",
    "polysyllable_ratio",
    "long_word_ratio",
    "type_token_ratio",
    "commas_per_sentence",
    "semicolons_per_sentence",
    "quotes_per_word",
    "digits_per_word",
    "pieces_per_word",
    "split_word_ratio",
    "flesch_reading_ease",
    "flesch_kincaid_grade",
    "smog",
    "coleman_liau",
    "automated_readability",
)


def syllables(word: str) -> int:
    """Vowel groups, less a silent final e: right for most English words, which is enough for averages."""
    word = word.lower()
    count = len(VOWEL_GROUPS.findall(word))
    if word.endswith("e") and not word.endswith(("le", "ee")) and count > 1:
        count -= 1
    return max(count, 1)


def text_features(text: str, tokenizer: PreTrainedTokenizerBase) -> list[float]:
    words = WORD.findall(text)
    n_words = max(len(words), 1)
    n_sentences = max(len(SENTENCE_END.findall(text.strip())), 1)
    syllable_counts = [syllables(w) for w in words] or [1]
    polysyllables = sum(s >= 3 for s in syllable_counts)
    pieces = [len(ids) for ids in tokenizer(words, add_special_tokens=False)["input_ids"]] if words else [1]
    per_word, per_sentence = sum(len(w) for w in words) / n_words, n_words / n_sentences
    syllables_per_word = sum(syllable_counts) / n_words
    values = {
        "chars": len(text),
        "words": n_words,
        "sentences": n_sentences,
        "words_per_sentence": per_sentence,
        "letters_per_word": per_word,
        "syllables_per_word": syllables_per_word,
        "polysyllable_ratio": polysyllables / n_words,
        "long_word_ratio": sum(len(w) >= 7 for w in words) / n_words,
        "type_token_ratio": len({w.lower() for w in words}) / n_words,
        "commas_per_sentence": text.count(",") / n_sentences,
        "semicolons_per_sentence": (text.count(";") + text.count(":")) / n_sentences,
        "quotes_per_word": sum(text.count(q) for q in '"“”') / n_words,
        "digits_per_word": sum(c.isdigit() for c in text) / n_words,
        "pieces_per_word": float(np.mean(pieces)),
        "split_word_ratio": float(np.mean([p > 1 for p in pieces])),
        "flesch_reading_ease": 206.835 - 1.015 * per_sentence - 84.6 * syllables_per_word,
        "flesch_kincaid_grade": 0.39 * per_sentence + 11.8 * syllables_per_word - 15.59,
        "smog": 1.043 * np.sqrt(polysyllables * 30 / n_sentences) + 3.1291,
        "coleman_liau": 0.0588 * per_word * 100 - 0.296 * 100 / per_sentence - 15.8,
        "automated_readability": 4.71 * per_word + 0.5 * per_sentence - 21.43,
    }
    return [float(values[name]) for name in FEATURES]


def feature_matrix(texts: list[str], tokenizer: PreTrainedTokenizerBase) -> np.ndarray:
    return np.array([text_features(text, tokenizer) for text in texts], dtype=np.float64)
