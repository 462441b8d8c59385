"""Why dropout hurts regression: each layer's output and the prediction, train mode (dropout on) against eval mode.

Dropout scales kept activations by 1/(1-p): before a non-linearity the output's expectation is unchanged but its
variance grows; after GELU, LayerNorm and the attention softmax that extra variance moves the expectation too. So
even averaged over many passes, a train-mode output is not the eval-mode one, and the prediction a model learned
under dropout is not the one it makes at evaluation.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import torch
from torch import nn

from textreg.model import RegressionModel, encoder_layers


@torch.no_grad()
def dropout_effect(model: RegressionModel, batch: dict[str, torch.Tensor], passes: int) -> dict:
    """Per layer, over the real tokens: `shift`, how far the average train-mode output lies from the eval-mode
    output, and `noise`, the spread of the train-mode outputs between passes, both in units of the eval output's
    standard deviation. For the prediction: eval mode, the train-mode mean and spread, and the shift."""
    layers = encoder_layers(model.backbone)
    keep = batch["attention_mask"].bool()
    current: dict[int, torch.Tensor] = {}

    def record(index: int, module: nn.Module, inputs, output) -> None:
        current[index] = (output[0] if isinstance(output, tuple) else output)[keep].double()

    handles = [layer.register_forward_hook(partial(record, i)) for i, layer in enumerate(layers)]
    try:
        model.eval()
        eval_pred = model.to_target_units(model(**batch)).numpy()
        eval_out = dict(current)
        total = {i: torch.zeros_like(v) for i, v in eval_out.items()}
        squares = {i: torch.zeros_like(v) for i, v in eval_out.items()}
        model.train()
        train_preds = []
        for _ in range(passes):
            train_preds.append(model.to_target_units(model(**batch)).numpy())
            for i, value in current.items():
                total[i] += value
                squares[i] += value**2
    finally:
        for handle in handles:
            handle.remove()
        model.eval()
    rows = []
    for i, reference in sorted(eval_out.items()):
        mean = total[i] / passes
        spread = (squares[i] / passes - mean**2).clamp(min=0).sqrt()
        shift, noise = float((mean - reference).abs().mean()), float(spread.mean())
        scale = float(reference.std())
        rows.append({"layer": i, "shift": shift / scale, "noise": noise / scale})
    train_preds = np.stack(train_preds)
    train_mean_pred = train_preds.mean(axis=0)
    return {
        "layers": rows,
        "eval_pred": eval_pred[:, 0].tolist(),
        "train_pred_mean": train_mean_pred[:, 0].tolist(),
        "train_pred_std": train_preds.std(axis=0)[:, 0].tolist(),
        "mean_shift": float(np.mean(train_mean_pred - eval_pred)),
        "mean_abs_shift": float(np.mean(np.abs(train_mean_pred - eval_pred))),
    }
