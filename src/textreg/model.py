"""Model: backbone resolution, dropout control, adapters and the regression model."""

from __future__ import annotations

import importlib
import re
import warnings
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer, PretrainedConfig, PreTrainedTokenizerBase

from textreg.backbones import BACKBONES_DIR
from textreg.config import DropoutConfig, LoraConfig, ModelConfig
from textreg.errors import UserError
from textreg.pooling import POOLINGS

PACKAGE_PREFIX = "package:"
# Model types whose activations overflow in fp16 (their model cards: bf16 or fp32 only); `auto` never picks fp16 for
# them.
NO_FP16 = frozenset({"gemma", "gemma2", "gemma3", "gemma3_text"})


def fp16_ok(config: PretrainedConfig) -> bool:
    return config.model_type not in NO_FP16


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


class RegressionModel(nn.Module):
    """Backbone -> pooling -> linear head with one output per target."""

    def __init__(self, backbone: nn.Module, pooling: str, n_targets: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.pooling = POOLINGS[pooling](backbone.config)
        self.head = nn.Linear(backbone.config.hidden_size, n_targets)
        # The head predicts z-scores when targets are standardised; these buffers map them back to target
        # units, and travel inside the checkpoint. Identity by default.
        self.register_buffer("target_mean", torch.zeros(n_targets))
        self.register_buffer("target_std", torch.ones(n_targets))

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pool_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """`pool_mask`: the tokens the pooling reads (model.pool_column's); a window without one reads them all."""
        all_layers = self.pooling.reads_all_layers
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=all_layers)
        mask = attention_mask
        if pool_mask is not None:
            mask = torch.where(pool_mask.sum(1, keepdim=True) > 0, pool_mask, attention_mask)
        pooled = self.pooling(out, mask, attention_mask)
        # The head in fp32 at any precision: bf16 outputs keep 8 bits of mantissa, which ties ranks and thresholds.
        with torch.autocast(pooled.device.type, enabled=False):
            return self.head(pooled.float())

    def to_target_units(self, output: torch.Tensor) -> torch.Tensor:
        return output.float() * self.target_std + self.target_mean

    def to_model_units(self, target: torch.Tensor) -> torch.Tensor:
        return (target - self.target_mean) / self.target_std

    def head_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_parameters() if not n.startswith("backbone.")]

    def frozen(self) -> set[str]:
        """The parameters left as pretrained (LoRA's base weights, frozen embeddings)."""
        return {name for name, param in self.named_parameters() if not param.requires_grad}

    def fold_state(self) -> dict[str, torch.Tensor]:
        """What a fold keeps: all but the frozen weights, which prediction takes from the run's backbone/ folder. With
        LoRA: the adapters, the pooling and the head."""
        frozen = self.frozen()
        return {name: value for name, value in self.state_dict().items() if name not in frozen}

    def load_fold_state(self, state: dict[str, torch.Tensor]) -> None:
        """A fold_state() into a model built as the fold's; a RuntimeError (as load_state_dict's) if it is not one,
        or if it holds weights this model keeps frozen (they would be used here, yet not saved with the fold)."""
        frozen = self.frozen()
        if trained := sorted(frozen & set(state)):
            raise RuntimeError(f"trained weights of parameters this model keeps frozen: {trained[:3]}")
        missing, unexpected = self.load_state_dict(state, strict=False)
        if unexpected or set(missing) - frozen:
            lacking = sorted(set(missing) - frozen)[:3]
            raise RuntimeError(f"another model's weights: unexpected {sorted(unexpected)[:3]}, missing {lacking}")


def build_model(model_cfg: ModelConfig, n_targets: int, path: str | None, config: PretrainedConfig) -> RegressionModel:
    """The regression model on pretrained weights from `path`, or on random ones (to load a checkpoint into). The
    weights are fp32 whatever the checkpoint's dtype (decoders publish bf16): AdamW's updates would round away in
    bf16 weights; mixed precision computes in bf16 under autocast."""
    fp32 = torch.float32
    backbone = (
        AutoModel.from_pretrained(path, config=config, dtype=fp32)
        if path
        else AutoModel.from_config(config, dtype=fp32)
    )
    if getattr(backbone.config, "use_cache", False):
        # A decoder keeps its keys and values for generation: here only memory, and under gradient checkpointing
        # the recomputed layer would add them twice.
        backbone.config.use_cache = False
    if getattr(backbone, "pooler", None) is not None:
        # Unused by our pooling heads; under DDP an unused parameter would stop the backward pass.
        backbone.pooler = None
    if model_cfg.dropout.disable:
        disable_dropout(backbone)
    if path and model_cfg.reinit_layers:
        reinit_top_layers(backbone, model_cfg.reinit_layers)
    if model_cfg.freeze_embeddings:
        backbone.get_input_embeddings().requires_grad_(False)
    if model_cfg.lora is not None:
        backbone = with_adapters(backbone, model_cfg.lora)
    return RegressionModel(backbone, model_cfg.pooling, n_targets)


def with_adapters(backbone: nn.Module, lora: LoraConfig) -> nn.Module:
    """The backbone frozen, with trainable low-rank adapters on its `lora.target_modules`."""
    import peft  # imported here: only LoRA runs need it

    adapters = peft.LoraConfig(r=lora.rank, lora_alpha=lora.alpha, target_modules=lora.target_modules, lora_dropout=0)
    try:
        with warnings.catch_warnings():  # peft 0.21 asks transformers 5 a question it renamed: noise for the user
            warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated")
            return peft.get_peft_model(backbone, adapters)
    except ValueError as err:  # a module name the backbone does not have
        raise UserError(f"model.lora.target_modules: {str(err).splitlines()[0]}") from err


def encoder_layers(backbone: nn.Module) -> nn.ModuleList:
    """The backbone's stack of transformer layers, whatever the architecture calls it."""
    n_layers = backbone.config.num_hidden_layers
    for module in backbone.modules():
        if isinstance(module, nn.ModuleList) and len(module) == n_layers:
            return module
    raise UserError(f"cannot find the {n_layers} encoder layers of this {backbone.config.model_type} backbone")


def reinit_top_layers(backbone: nn.Module, k: int) -> None:
    """Give the top k layers fresh weights, as the architecture initialises them (Gemma's norms at 0, BERT's at 1):
    their pretraining is the most task-specific (Zhang et al., 2021)."""
    layers = encoder_layers(backbone)
    if k > len(layers):
        raise UserError(f"model.reinit_layers={k}: the backbone has only {len(layers)} layers")
    with torch.no_grad():
        for module in layers[len(layers) - k :].modules():
            for param in module.parameters(recurse=False):
                param._is_hf_initialized = False  # transformers' initialisers skip weights loaded from a checkpoint
            backbone._init_weights(module)


def layer_depth(name: str, n_layers: int) -> int:
    """0 for embeddings, i + 1 for encoder layer i, n_layers for anything above (final norms, pooling)."""
    if match := re.search(r"\.layers?\.(\d+)\.", name):
        return int(match.group(1)) + 1
    return 0 if "embed" in name else n_layers  # embeddings, embed_tokens


def load_tokenizer(path: str) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(path)
