"""Weight averaging: an exponential moving average of the weights (`train.ema_decay`), validated and kept as the
fold's weights in place of the raw ones."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


class WeightAverage:
    """The average lives beside the weights, on their device, and is updated after every optimizer step without a
    host-device sync. Early on, its decay is min(decay, (1 + n) / (10 + n)) after n updates: a fold of a few hundred
    steps would otherwise keep most of the starting weights in it."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.average = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def update(self, updates_done: int) -> None:
        decay = min(self.decay, (1 + updates_done) / (10 + updates_done))
        torch._foreach_lerp_(self.average, [p.detach() for p in self.params], 1 - decay)

    @contextmanager
    @torch.no_grad()
    def applied(self) -> Iterator[None]:
        """The model holds the average inside the block, its own weights again after it."""
        raw = [p.detach().clone() for p in self.params]
        torch._foreach_copy_(self.params, self.average)
        try:
            yield
        finally:
            torch._foreach_copy_(self.params, raw)

    def state(self) -> list[torch.Tensor]:
        return [a.cpu() for a in self.average]

    @torch.no_grad()
    def load(self, state: list[torch.Tensor]) -> None:
        torch._foreach_copy_(self.average, [s.to(a.device) for s, a in zip(state, self.average, strict=True)])
