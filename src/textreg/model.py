"""Model: backbone resolution, dropout control, pooling heads and the regression model."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer, PretrainedConfig, PreTrainedTokenizerBase

from textreg.backbones import BACKBONES_DIR
from textreg.config import DropoutConfig, ModelConfig
from textreg.errors import UserError

PACKAGE_PREFIX = "package:"


def resolve_backbone(spec: str) -> str:
    """A local folder, `package:<module>` (an installed package shipping a model folder) or a hub id."""
    if spec.startswith(PACKAGE_PREFIX):
        name = spec[len(PACKAGE_PREFIX) :]
        try:
            module = importlib.import_module(name)
        except ImportError as err:
            raise UserError(f"model.backbone={spec!r}: package '{name}' is not installed") from err
        if hasattr(module, "get_model_path"):
            return str(module.get_model_path())
        folders = sorted(p.parent for p in Path(module.__file__).parent.rglob("config.json"))
        if not folders:
            raise UserError(f"model.backbone={spec!r}: package '{name}' has no model folder (config.json)")
        return str(folders[0])
    return spec


def _is_dropout_attribute(name: str, value: object) -> bool:
    # BERT: hidden_dropout_prob, DistilBERT: dropout / attention_dropout, DeBERTa: pooler_dropout, ...
    return isinstance(value, float) and not isinstance(value, bool) and "dropout" in name


def load_backbone_config(model_cfg: ModelConfig) -> tuple[str, PretrainedConfig]:
    path, config = backbone_config(model_cfg.backbone)
    apply_dropout_config(config, model_cfg.dropout)
    return path, config


def backbone_config(spec: str) -> tuple[str, PretrainedConfig]:
    """The backbone's folder (or hub id) and its own config, as published; a UserError that says why if it does not
    load."""
    path = resolve_backbone(spec)
    try:
        return path, AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as err:
        raise UserError(
            f"model.backbone={spec!r}: cannot be loaded as a local folder, an installed "
            f"package (package:<name>) or a hub id: {str(err).splitlines()[0]}{_missing_folder_hint(path)}"
        ) from err


def _missing_folder_hint(path: str) -> str:
    """What to do about a folder that is not there; a hub id is `<name>` or `<owner>/<name>`, never a longer path."""
    if Path(path).is_dir() or (path.count("/") <= 1 and not path.startswith((".", "/", "~"))):
        return ""
    where = "" if Path(path).is_absolute() else f" under {Path.cwd()} (a relative path starts where the command runs)"
    registered = Path(path).parts[:2] == BACKBONES_DIR.parts
    fetch = "; `make backbone` lists the backbones it fetches there" if registered else ""
    return f"; there is no folder {path}{where}{fetch}"


def apply_dropout_config(config: PretrainedConfig, dropout: DropoutConfig) -> None:
    """Set named dropout attributes, refusing names the config does not have (transformers would ignore them)."""
    for name, value in dropout.config.items():
        if not hasattr(config, name):
            known = sorted(k for k, v in config.to_dict().items() if _is_dropout_attribute(k, v))
            raise UserError(
                f"model.dropout.config.{name}: the {config.model_type} config has no such attribute; "
                f"its dropout attributes are {known}"
            )
        setattr(config, name, value)
    if dropout.disable:
        for name, value in config.to_dict().items():
            if _is_dropout_attribute(name, value):
                setattr(config, name, 0.0)


def disable_dropout(module: nn.Module) -> None:
    """Zero every dropout module, whatever the architecture calls it (nn.Dropout*, DeBERTa's StableDropout)."""
    for sub in module.modules():
        if isinstance(sub, nn.modules.dropout._DropoutNd):
            sub.p = 0.0
        elif hasattr(sub, "drop_prob") and isinstance(sub.drop_prob, float):
            sub.drop_prob = 0.0
        elif hasattr(sub, "dropout_prob") and isinstance(sub.dropout_prob, float):
            sub.dropout_prob = 0.0


@torch.no_grad()
def check_deterministic(model: nn.Module, batch: dict[str, torch.Tensor]) -> None:
    """In train mode, two passes of one batch must agree; otherwise some dropout is still active."""
    was_training = model.training
    model.train()
    first, second = model(**batch), model(**batch)
    model.train(was_training)
    if not torch.allclose(first, second, atol=1e-6, rtol=1e-5):
        raise UserError(
            "model.dropout.disable=true, but two train-mode passes of one batch differ: this backbone has a "
            "dropout the switch does not reach; set its config attribute in model.dropout.config"
        )


class AttentionPooling(nn.Module):
    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.score = nn.Sequential(nn.Linear(hidden_size, hidden_size), nn.Tanh(), nn.Linear(hidden_size, 1))

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        scores = self.score(hidden).squeeze(-1).float().masked_fill(mask == 0, float("-inf"))
        weights = torch.softmax(scores, dim=-1).to(hidden.dtype)
        return torch.einsum("bt,bth->bh", weights, hidden)


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)


class RegressionModel(nn.Module):
    """Backbone -> pooling -> linear head with one output per target."""

    def __init__(self, backbone: nn.Module, pooling: str, n_targets: int) -> None:
        super().__init__()
        self.backbone = backbone
        hidden = backbone.config.hidden_size
        self.pooling = pooling
        self.attention = AttentionPooling(hidden) if pooling == "attention" else None
        # weighted_layers: a learned softmax mix of every layer's output, then mean pooling
        n_layers = backbone.config.num_hidden_layers
        self.layer_logits = nn.Parameter(torch.zeros(n_layers)) if pooling == "weighted_layers" else None
        self.head = nn.Linear(hidden, n_targets)
        # The head predicts z-scores when targets are standardised; these buffers map them back to target
        # units, and travel inside the checkpoint. Identity by default.
        self.register_buffer("target_mean", torch.zeros(n_targets))
        self.register_buffer("target_std", torch.ones(n_targets))

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pool_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """`pool_mask`: the tokens the pooling reads (model.pool_column's); a window without one reads them all."""
        mixing = self.layer_logits is not None
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=mixing)
        hidden = out.last_hidden_state
        if pool_mask is not None:
            attention_mask = torch.where(pool_mask.sum(1, keepdim=True) > 0, pool_mask, attention_mask)
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        elif self.pooling == "mean":
            pooled = mean_pool(hidden, attention_mask)
        elif self.pooling == "attention":
            pooled = self.attention(hidden, attention_mask)
        else:
            weights = torch.softmax(self.layer_logits, dim=0).to(hidden.dtype)
            mixed = torch.einsum("l,lbth->bth", weights, torch.stack(out.hidden_states[1:]))
            pooled = mean_pool(mixed, attention_mask)
        # The head in fp32 at any precision: bf16 outputs keep 8 bits of mantissa, which ties ranks and thresholds.
        with torch.autocast(pooled.device.type, enabled=False):
            return self.head(pooled.float())

    def to_target_units(self, output: torch.Tensor) -> torch.Tensor:
        return output.float() * self.target_std + self.target_mean

    def to_model_units(self, target: torch.Tensor) -> torch.Tensor:
        return (target - self.target_mean) / self.target_std

    def head_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_parameters() if not n.startswith("backbone.")]


def build_model(model_cfg: ModelConfig, n_targets: int, path: str | None, config: PretrainedConfig) -> RegressionModel:
    """The regression model on pretrained weights from `path`, or on random ones (to load a checkpoint into)."""
    backbone = AutoModel.from_pretrained(path, config=config) if path else AutoModel.from_config(config)
    if getattr(backbone, "pooler", None) is not None:
        # Unused by our pooling heads; under DDP an unused parameter would stop the backward pass.
        backbone.pooler = None
    if model_cfg.dropout.disable:
        disable_dropout(backbone)
    if path and model_cfg.reinit_layers:
        reinit_top_layers(backbone, model_cfg.reinit_layers)
    return RegressionModel(backbone, model_cfg.pooling, n_targets)


def encoder_layers(backbone: nn.Module) -> nn.ModuleList:
    """The backbone's stack of transformer layers, whatever the architecture calls it."""
    n_layers = backbone.config.num_hidden_layers
    for module in backbone.modules():
        if isinstance(module, nn.ModuleList) and len(module) == n_layers:
            return module
    raise UserError(f"cannot find the {n_layers} encoder layers of this {backbone.config.model_type} backbone")


def reinit_top_layers(backbone: nn.Module, k: int) -> None:
    """Give the top k layers fresh weights: their pretraining is the most task-specific (Zhang et al., 2021)."""
    layers = encoder_layers(backbone)
    if k > len(layers):
        raise UserError(f"model.reinit_layers={k}: the backbone has only {len(layers)} layers")
    std = getattr(backbone.config, "initializer_range", 0.02)
    with torch.no_grad():  # the backbone's own _init_weights skips weights loaded from a checkpoint
        for module in (m for layer in layers[len(layers) - k :] for m in layer.modules()):
            if isinstance(module, nn.Linear):
                module.weight.normal_(0.0, std)
                if module.bias is not None:
                    module.bias.zero_()
            elif "Norm" in type(module).__name__ and getattr(module, "weight", None) is not None:
                module.weight.fill_(1.0)
                if getattr(module, "bias", None) is not None:
                    module.bias.zero_()


def layer_depth(name: str, n_layers: int) -> int:
    """0 for embeddings, i + 1 for encoder layer i, n_layers for anything above (final norms, pooling)."""
    if match := re.search(r"\.layers?\.(\d+)\.", name):
        return int(match.group(1)) + 1
    return 0 if "embeddings" in name else n_layers


def load_tokenizer(path: str) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(path)
