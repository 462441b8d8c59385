"""Pooling: a batch's hidden states to one vector a window (`model.pooling`; the registry is POOLINGS).

Each pooling reads the tokens of `mask` (the window's, or model.pool_column's) and finds them by the mask alone, so
a batch padded on the left (decoder tokenizers often are) pools the same tokens as one padded on the right.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PretrainedConfig
from transformers.modeling_outputs import BaseModelOutput


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)


def token_at(hidden: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    return hidden[torch.arange(len(hidden), device=hidden.device), index]


class Pooling(nn.Module):
    reads_all_layers = False  # True: the backbone must return every layer's output (out.hidden_states)

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__()


class FirstToken(Pooling):
    """The window's first token: an encoder's [CLS] (`cls`)."""

    def forward(self, out: BaseModelOutput, mask: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return token_at(out.last_hidden_state, attention_mask.argmax(1))  # argmax: the first 1


class LastToken(Pooling):
    """The last token read (`last_token`): the one a causal decoder's every other token reaches."""

    def forward(self, out: BaseModelOutput, mask: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(mask.shape[1], device=mask.device)
        return token_at(out.last_hidden_state, (mask * positions).argmax(1))


class Mean(Pooling):
    def forward(self, out: BaseModelOutput, mask: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return mean_pool(out.last_hidden_state, mask)


class Attention(Pooling):
    """A learned score for each token, softmaxed over the tokens read."""

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__(config)
        hidden = config.hidden_size
        self.score = nn.Sequential(nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, 1))

    def forward(self, out: BaseModelOutput, mask: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = out.last_hidden_state
        scores = self.score(hidden).squeeze(-1).float().masked_fill(mask == 0, float("-inf"))
        weights = torch.softmax(scores, dim=-1).to(hidden.dtype)
        return torch.einsum("bt,bth->bh", weights, hidden)


class WeightedLayers(Pooling):
    """A learned softmax mix of every layer's output, then the mean."""

    reads_all_layers = True

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__(config)
        self.layer_logits = nn.Parameter(torch.zeros(config.num_hidden_layers))

    def forward(self, out: BaseModelOutput, mask: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        weights = torch.softmax(self.layer_logits, dim=0).to(out.last_hidden_state.dtype)
        mixed = torch.einsum("l,lbth->bth", weights, torch.stack(out.hidden_states[1:]))
        return mean_pool(mixed, mask)


POOLINGS: dict[str, type[Pooling]] = {
    "cls": FirstToken,
    "mean": Mean,
    "attention": Attention,
    "weighted_layers": WeightedLayers,
    "last_token": LastToken,
}
