import numpy as np
import pytest
import torch
from conftest import TOKENIZER_DIR
from torch.utils.data import DataLoader
from transformers import AutoTokenizer

from textreg.batching import BucketBatchSampler, Collator, TextBatcher, TextDataset, Tokens
from textreg.prediction import predict_rows


def test_bucket_batches_cover_every_row_once_with_little_padding():
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 300, size=1000).tolist()
    sampler = BucketBatchSampler(lengths, batch_size=16, seed=1, chunk_batches=10)
    batches = list(sampler)
    assert len(batches) == len(sampler)
    assert sorted(i for b in batches for i in b) == list(range(1000))
    padded = sum(16 * max(lengths[i] for i in b) for b in batches)
    random_order = [list(range(1000))[s : s + 16] for s in range(0, 1000, 16)]
    padded_random = sum(16 * max(lengths[i] for i in b) for b in random_order)
    assert padded < 0.7 * padded_random


def test_bucket_order_depends_on_seed_and_epoch_only():
    lengths = list(range(200))

    def epochs(seed):
        sampler = BucketBatchSampler(lengths, 8, seed)
        orders = []
        for epoch in range(2):
            sampler.set_epoch(epoch)
            orders.append(list(sampler))
        return orders

    first, second = epochs(3)
    assert first == epochs(3)[0] and second == epochs(3)[1]  # reproducible, the same on every process
    assert first != second  # a new order every epoch
    assert first != epochs(4)[0]


def test_without_bucketing_batches_are_plain_shuffled_slices():
    lengths = list(range(64))
    sampler = BucketBatchSampler(lengths, 8, seed=0, chunk_batches=1)
    batches = list(sampler)
    assert sorted(i for b in batches for i in b) == lengths
    assert max(max(b) - min(b) for b in batches) > 8  # not bucketed: a batch mixes far-apart lengths


def test_collator_pads_to_the_longest_in_the_batch():
    ids = [[101, 5, 6, 102], [101, 7, 102]]
    batch = Collator(pad_token_id=0)(
        [{"input_ids": i, "row": r, "target": np.array([r], "f4")} for r, i in enumerate(ids)]
    )
    assert batch["input_ids"].tolist() == [[101, 5, 6, 102], [101, 7, 102, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]
    assert batch["target"].dtype == torch.float32


def test_eval_loader_sorts_by_length_and_keeps_rows():
    ids = [[1] * n for n in (9, 3, 7, 5)]
    batcher = TextBatcher(AutoTokenizer.from_pretrained(TOKENIZER_DIR), max_len=16)
    rows = [
        r for batch in batcher.eval_loader(Tokens(ids, np.arange(4)), np.arange(4), 2) for r in batch["row"].tolist()
    ]
    assert rows == [1, 3, 2, 0]
    assert len(TextDataset(ids, np.array([0, 2]))) == 2


def test_each_truncation_keeps_its_part_of_a_long_text_and_a_short_text_whole():
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    words = [f"w{i}" for i in range(60)]
    long_text, short_text = " ".join(words), "a short text"
    ids = tokenizer(long_text, add_special_tokens=False)["input_ids"]
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id

    def split(truncation: str, **keys) -> Tokens:
        return TextBatcher(tokenizer, 18, truncation=truncation, **keys).split([long_text, short_text])

    head, head_tail, windows = split("head"), split("head_tail"), split("windows", stride=8)
    assert head.windows[0] == [cls, *ids[:16], sep] and head.text_of.tolist() == [0, 1]
    assert head_tail.windows[0] == [cls, *ids[:4], *ids[-12:], sep] and head_tail.text_of.tolist() == [0, 1]
    n = len(ids)  # windows 8 tokens apart from the first token, and the last one flush with the text's end
    starts = [*range(0, n - 16 + 1, 8), *([n - 16] if (n - 16) % 8 else [])]
    assert n > 40 and windows.windows[:-1] == [[cls, *ids[start : start + 16], sep] for start in starts]
    assert windows.text_of.tolist() == [0] * (len(windows.windows) - 1) + [1]
    for tokens in (head, head_tail, windows):  # a text within the length is one window, and the same one
        assert tokens.windows[-1] == tokenizer(short_text)["input_ids"]
    assert windows.rows_of(np.array([1])).tolist() == [len(windows.windows) - 1]


def test_a_texts_prediction_is_the_mean_of_its_windows():
    tokens = Tokens([[1, 2], [1, 3], [1, 4], [1, 5]], np.array([0, 0, 0, 1]))
    loader = DataLoader(
        TextDataset(tokens.windows, np.arange(4), text_of=tokens.text_of), batch_size=3, collate_fn=Collator(0)
    )
    values = torch.tensor([1.0, 2.0, 6.0, 7.0])
    pred = predict_rows(lambda batch: values[batch["row"]][:, None], loader, n_rows=3)
    np.testing.assert_allclose(pred[:2, 0], [3.0, 7.0])
    assert np.isnan(pred[2, 0])  # a text the loader does not hold


def test_padding_to_a_multiple_rounds_the_width_up_and_masks_the_extra():
    items = [{"input_ids": [5] * n, "row": i} for i, n in enumerate((3, 9))]
    assert Collator(0, pad_to_multiple_of=8)(items)["input_ids"].shape == (2, 16)
    batch = Collator(0, pad_to_multiple_of=8)(items[:1])
    assert batch["input_ids"].shape == (1, 8) and batch["attention_mask"].sum() == 3
    assert Collator(0)(items)["input_ids"].shape == (2, 9)


@pytest.mark.parametrize(("gpu", "width"), [(True, 64), (False, 9)])
def test_the_default_pads_to_64_on_a_gpu_only(monkeypatch, gpu, width):
    """On a GPU, few shapes (each new one costs cuDNN a plan: 3.5x the bf16 speed, docs/speed.md); on a CPU, no
    padding beyond the longest text, which would be wasted work."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu)
    items = [{"input_ids": [5] * n, "row": i} for i, n in enumerate((3, 9))]
    assert Collator(0)(items)["input_ids"].shape == (2, width)
    assert Collator(0, pad_to_multiple_of=1)(items)["input_ids"].shape == (2, 9)
