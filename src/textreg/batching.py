"""Tokens and batches: tokenize once per run, pad each batch only to its own longest text."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from transformers import PreTrainedTokenizerBase

PIN_MEMORY = torch.cuda.is_available()  # page-locked batches: copies to the GPU that need not wait


@dataclass(eq=False)
class TextDataset(Dataset):
    """Rows `rows` of a tokenized table, with their targets when they are known."""

    input_ids: list[list[int]]
    rows: np.ndarray
    targets: np.ndarray | None = None
    weights: np.ndarray | None = None  # each row's weight in the loss (pseudo-labelled rows weigh less)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        row = int(self.rows[i])
        item = {"input_ids": self.input_ids[row], "row": row}
        if self.targets is not None:
            item["target"] = self.targets[row]
        if self.weights is not None:
            item["weight"] = self.weights[row]
        return item

    def lengths(self) -> list[int]:
        return [len(self.input_ids[int(r)]) for r in self.rows]


class Collator:
    """Pads a batch to its longest text, rounded up to a multiple of `pad_to_multiple_of`; padded positions are masked.
    Null: 64 on a GPU, where each new (batch, length) shape costs kernel choices (cuDNN plans its fused attention anew
    for each; docs/speed.md), 1 on a CPU, where padding is only wasted work."""

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None) -> None:
        self.pad_token_id = pad_token_id
        self.multiple = pad_to_multiple_of or (64 if torch.cuda.is_available() else 1)

    def __call__(self, items: list[dict]) -> dict[str, torch.Tensor]:
        width = -(-max(len(it["input_ids"]) for it in items) // self.multiple) * self.multiple
        ids = torch.full((len(items), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(items), width), dtype=torch.long)
        for i, it in enumerate(items):
            ids[i, : len(it["input_ids"])] = torch.tensor(it["input_ids"])
            mask[i, : len(it["input_ids"])] = 1
        batch = {"input_ids": ids, "attention_mask": mask, "row": torch.tensor([it["row"] for it in items])}
        if "target" in items[0]:
            batch["target"] = torch.tensor(np.stack([it["target"] for it in items]), dtype=torch.float32)
        if "weight" in items[0]:
            batch["weight"] = torch.tensor([it["weight"] for it in items], dtype=torch.float32)
        return batch


class BucketBatchSampler(Sampler[list[int]]):
    """Shuffled batches of similar lengths: indices shuffled, cut into chunks of `batch_size * chunk_batches`, each
    chunk sorted by length and cut into batches, the batches shuffled again (little padding, yet new batches every
    epoch; `chunk_batches=1`: plain shuffled batches). The order depends only on the seed and the epoch (`set_epoch`):
    every process of a distributed run draws the same, and a fold resumed mid-epoch draws the batches not seen yet."""

    def __init__(self, lengths: list[int], batch_size: int, seed: int, chunk_batches: int = 50) -> None:
        self.lengths = lengths
        self.batch_size = batch_size
        self.drop_last = False
        self.seed = seed
        self.chunk = batch_size * chunk_batches
        self.epoch = 0

    def __len__(self) -> int:
        return -(-len(self.lengths) // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[list[int]]:
        rng = random.Random(self.seed * 1000 + self.epoch)
        order = list(range(len(self.lengths)))
        rng.shuffle(order)
        batches = []
        for start in range(0, len(order), self.chunk):
            chunk = sorted(order[start : start + self.chunk], key=self.lengths.__getitem__)
            batches += [chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        rng.shuffle(batches)
        yield from batches


class TextBatcher:
    """Texts to batches with one tokenizer: every place that batches texts (training, prediction from a run folder,
    frozen embeddings, masked-LM pretraining, the diagnostics, the benchmark) builds them here, by the same rules."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, max_len: int, pad_to_multiple_of: int | None = None):
        self.tokenizer = tokenizer
        self.max_len = max_len
        self.separator = tokenizer.sep_token or tokenizer.eos_token or " "  # what `{sep}` of a text template becomes
        self.collate = Collator(tokenizer.pad_token_id, pad_to_multiple_of)

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        if not texts:  # the fast tokenizers fail on an empty batch
            return []
        encoded = self.tokenizer(list(texts), truncation=True, max_length=self.max_len, return_attention_mask=False)
        return encoded["input_ids"]

    def train_loader(self, dataset: TextDataset, batch_size: int, seed: int, bucketing: bool = True) -> DataLoader:
        """Batches drawn from the seed and the epoch alone. The loader has a generator of its own, so iterating it
        leaves the global random state (dropout's) alone: a resumed fold draws the same numbers as an unbroken one."""
        sampler = BucketBatchSampler(dataset.lengths(), batch_size, seed, chunk_batches=50 if bucketing else 1)
        return DataLoader(
            dataset, batch_sampler=sampler, collate_fn=self.collate, generator=torch.Generator(), pin_memory=PIN_MEMORY
        )

    def eval_loader(self, input_ids: list[list[int]], rows: np.ndarray, batch_size: int) -> DataLoader:
        """Rows sorted by length (least padding); predictions are put back in place by the `row` of each item."""
        order = sorted(rows, key=lambda r: len(input_ids[int(r)]))
        dataset = TextDataset(input_ids, np.asarray(order))
        return DataLoader(dataset, batch_size=batch_size, collate_fn=self.collate, pin_memory=PIN_MEMORY)

    def texts_loader(self, texts: Sequence[str], batch_size: int) -> DataLoader:
        return self.eval_loader(self.tokenize(texts), np.arange(len(texts)), batch_size)
