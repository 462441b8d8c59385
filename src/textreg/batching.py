"""Tokens and batches: tokenize once per run, cut each text into windows as `model.truncation` says, pad each batch
only to its own longest window.

A window is what the model reads at once. `head` keeps a text's first tokens (one window); `head_tail` its first
quarter and its last three quarters of the budget (one window: Sun et al., 2019, found the end of a long text
worth more than its middle); `windows` cuts it into windows `stride` tokens apart, the last one flush with the
text's end. A text within the length is one window under all three. In training each window carries its text's
target; a text's prediction is the mean of its windows' predictions.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from transformers import PreTrainedTokenizerBase

from textreg.errors import UserError

PIN_MEMORY = torch.cuda.is_available()  # page-locked batches: copies to the GPU that need not wait


def _head(ids: list[int], budget: int, stride: int) -> list[list[int]]:
    return [ids[:budget]]


def _head_tail(ids: list[int], budget: int, stride: int) -> list[list[int]]:
    if len(ids) <= budget:
        return [ids]
    head = budget // 4
    return [ids[:head] + ids[len(ids) - (budget - head) :]]


def _windows(ids: list[int], budget: int, stride: int) -> list[list[int]]:
    starts = list(range(0, max(len(ids) - budget, 0) + 1, stride))
    if starts[-1] + budget < len(ids):
        starts.append(len(ids) - budget)
    return [ids[start : start + budget] for start in starts]


# model.truncation: a text's tokens (no special ones), the tokens a window holds, the step between windows -> windows
TRUNCATIONS: dict[str, Callable[[list[int], int, int], list[list[int]]]] = {
    "head": _head,
    "head_tail": _head_tail,
    "windows": _windows,
}


@dataclass(frozen=True)
class Tokens:
    """Texts cut into windows: `windows[w]` is a model input, `text_of[w]` the text it came from."""

    windows: list[list[int]]
    text_of: np.ndarray
    pool_masks: list[list[int]] | None = None  # 1 where a token is pooled (model.pool_column's), per window

    def rows_of(self, texts: np.ndarray) -> np.ndarray:
        """The windows of `texts`, in text order."""
        return np.flatnonzero(np.isin(self.text_of, texts))


@dataclass(eq=False)
class TextDataset(Dataset):
    """Rows `rows` of a tokenized table, with their targets when they are known."""

    input_ids: list[list[int]]
    rows: np.ndarray
    targets: np.ndarray | None = None
    weights: np.ndarray | None = None  # each row's weight in the loss (pseudo-labelled rows weigh less)
    text_of: np.ndarray | None = None  # each row's text, when a text is several rows (windows)
    pool_masks: list[list[int]] | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        row = int(self.rows[i])
        item = {"input_ids": self.input_ids[row], "row": row}
        if self.targets is not None:
            item["target"] = self.targets[row]
        if self.weights is not None:
            item["weight"] = self.weights[row]
        if self.text_of is not None:
            item["text"] = int(self.text_of[row])
        if self.pool_masks is not None:
            item["pool_mask"] = self.pool_masks[row]
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
        pool = torch.zeros((len(items), width), dtype=torch.long) if "pool_mask" in items[0] else None
        for i, it in enumerate(items):
            ids[i, : len(it["input_ids"])] = torch.tensor(it["input_ids"])
            mask[i, : len(it["input_ids"])] = 1
            if pool is not None:
                pool[i, : len(it["input_ids"])] = torch.tensor(it["pool_mask"])
        batch = {"input_ids": ids, "attention_mask": mask, "row": torch.tensor([it["row"] for it in items])}
        if pool is not None:
            batch["pool_mask"] = pool
        if "target" in items[0]:
            batch["target"] = torch.tensor(np.stack([it["target"] for it in items]), dtype=torch.float32)
        if "weight" in items[0]:
            batch["weight"] = torch.tensor([it["weight"] for it in items], dtype=torch.float32)
        if "text" in items[0]:
            batch["text"] = torch.tensor([it["text"] for it in items])
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


def special_tokens(tokenizer: PreTrainedTokenizerBase) -> tuple[list[int], list[int]]:
    """The tokens the tokenizer puts before and after a text ([CLS] and [SEP], <s> and </s>, a BOS alone), found on
    a probe: every architecture's tokenizer says it its own way."""
    probe = "text"
    bare = tokenizer(probe, add_special_tokens=False)["input_ids"]
    full = tokenizer(probe)["input_ids"]
    start = next(i for i in range(len(full) - len(bare) + 1) if full[i : i + len(bare)] == bare)
    return full[:start], full[start + len(bare) :]


class TextBatcher:
    """Texts to batches with one tokenizer: every place that batches texts (training, prediction from a run folder,
    frozen embeddings, masked-LM pretraining, the diagnostics, the benchmark) builds them here, by the same rules."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        max_len: int,
        pad_to_multiple_of: int | None = None,
        truncation: str = "head",
        stride: int | None = None,
        pool_segment: int | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.max_len = max_len
        self.truncation, self.stride = TRUNCATIONS[truncation], stride
        self.separator = tokenizer.sep_token or tokenizer.eos_token or " "  # what `{sep}` of a text template becomes
        # Batches are padded on the right whatever the tokenizer's padding_side (the pooling finds its tokens by
        # the mask either way); a tokenizer without a pad token (Llama's) pads with its EOS, masked all the same.
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.collate = Collator(pad if pad is not None else 0, pad_to_multiple_of)
        self.prefix, self.suffix = special_tokens(tokenizer)
        self.pool_segment, self.separator_id = pool_segment, tokenizer.convert_tokens_to_ids(self.separator)
        if pool_segment is not None and not (tokenizer.sep_token or tokenizer.eos_token):
            raise UserError(
                "model.pool_column: this tokenizer has no separator token to tell the template's parts apart"
            )

    def split(self, texts: Sequence[str], max_len: int | None = None) -> Tokens:
        """The texts' windows of at most `max_len` tokens (default: the batcher's), special tokens included."""
        budget = (max_len or self.max_len) - len(self.prefix) - len(self.suffix)
        stride = self.stride or max(budget // 2, 1)
        # verbose=False: a text longer than the model's length is expected here; the windows are cut below
        content = self.tokenizer(list(texts), add_special_tokens=False, verbose=False)["input_ids"] if texts else []
        windows, text_of = [], []
        pool_masks = None if self.pool_segment is None else []
        specials = [0] * len(self.prefix), [0] * len(self.suffix)
        for text, ids in enumerate(content):
            pooled = None if pool_masks is None else self.pooled(ids)
            for positions in self.truncation(list(range(len(ids))), budget, stride):
                windows.append(self.prefix + [ids[p] for p in positions] + self.suffix)
                if pooled is not None:
                    pool_masks.append(specials[0] + [pooled[p] for p in positions] + specials[1])
                text_of.append(text)
        return Tokens(windows, np.array(text_of, dtype=np.int64), pool_masks)

    def pooled(self, ids: list[int]) -> list[int]:
        """1 for the tokens of the `pool_segment`-th part between separators."""
        is_separator = np.array(ids, dtype=np.int64) == self.separator_id
        segment = np.cumsum(is_separator)
        return ((segment == self.pool_segment) & ~is_separator).astype(int).tolist()

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """One window per text, for the uses that read each text once (masked-LM pretraining, the diagnostics)."""
        return self.split(texts).windows

    def train_loader(self, dataset: TextDataset, batch_size: int, seed: int, bucketing: bool = True) -> DataLoader:
        """Batches drawn from the seed and the epoch alone. The loader has a generator of its own, so iterating it
        leaves the global random state (dropout's) alone: a resumed fold draws the same numbers as an unbroken one."""
        sampler = BucketBatchSampler(dataset.lengths(), batch_size, seed, chunk_batches=50 if bucketing else 1)
        return DataLoader(
            dataset, batch_sampler=sampler, collate_fn=self.collate, generator=torch.Generator(), pin_memory=PIN_MEMORY
        )

    def eval_loader(self, tokens: Tokens, rows: np.ndarray, batch_size: int) -> DataLoader:
        """Windows `rows` sorted by length (least padding); each prediction is put back by its item's `row`, and
        averaged into its `text`."""
        order = sorted(rows, key=lambda r: len(tokens.windows[int(r)]))
        rows = np.asarray(order, dtype=np.int64)
        dataset = TextDataset(tokens.windows, rows, text_of=tokens.text_of, pool_masks=tokens.pool_masks)
        return DataLoader(dataset, batch_size=batch_size, collate_fn=self.collate, pin_memory=PIN_MEMORY)

    def texts_loader(self, texts: Sequence[str], batch_size: int, max_len: int | None = None) -> DataLoader:
        tokens = self.split(texts, max_len)
        return self.eval_loader(tokens, np.arange(len(tokens.windows)), batch_size)
