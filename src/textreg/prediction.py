"""One prediction loop for everything the template predicts row by row: validation and test sets while training,
any file from a run folder, and the frozen embeddings of a classical member."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm


def autocast(device: torch.device, precision: str) -> AbstractContextManager:
    """The autocast of `precision` ("no", "bf16", "fp16") outside Accelerate, which wraps a prepared model itself."""
    if precision == "no":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


@torch.no_grad()
def predict_rows(
    forward: Callable[[dict[str, torch.Tensor]], torch.Tensor],
    loader: DataLoader,
    n_rows: int,
    device: torch.device | None = None,
    gather: Callable[[tuple], tuple] | None = None,
    progress: str | None = None,
) -> np.ndarray:
    """`forward(batch)` for every batch, put back in place by each item's `row`, and averaged over the windows of
    each `text` where items carry one: an (n_rows, outputs) array of rows or texts, NaN where the loader has none.
    `device`: move batches there (an Accelerate loader already does); `gather`:
    collect every process's part (`accelerator.gather_for_metrics`, which drops the padding duplicates);
    `progress`: a bar's title, for the passes long enough to want one (test files, fitted rows), not validations."""
    preds, rows, texts = [], [], []
    for batch in tqdm(loader, desc=progress, disable=progress is None, leave=False):
        if device is not None:
            batch = {key: value.to(device, non_blocking=True) for key, value in batch.items()}
        out, row = forward(batch), batch["row"]
        text = batch.get("text", row)
        if gather is not None:
            out, row, text = gather((out, row, text))
        preds.append(out.float())  # kept on the device: the loop queues batches without waiting for them
        rows.append(row)
        texts.append(text)
    rows_all = torch.cat(rows).cpu().numpy()  # sync: once, after the last batch
    if len(np.unique(rows_all)) != len(rows_all):
        raise RuntimeError("a row was predicted twice: the evaluation loader is not sharded as expected")
    stacked, texts_all = torch.cat(preds).cpu().numpy().astype(np.float64), torch.cat(texts).cpu().numpy()
    sums, counts = np.zeros((n_rows, stacked.shape[1])), np.zeros(n_rows)
    np.add.at(sums, texts_all, stacked)
    np.add.at(counts, texts_all, 1)
    result = np.full_like(sums, np.nan)
    result[counts > 0] = sums[counts > 0] / counts[counts > 0, None]
    return result
