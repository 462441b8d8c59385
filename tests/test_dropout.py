import pytest
import torch
from conftest import ARCHITECTURES
from torch import nn

from textreg.config import DropoutConfig, ModelConfig
from textreg.errors import UserError
from textreg.model import build_model, check_deterministic, load_backbone_config

ARCHS = list(ARCHITECTURES)  # encoders and decoders


def model_for(backbone, **dropout):
    cfg = ModelConfig(backbone=str(backbone), dropout=DropoutConfig(**dropout))
    path, config = load_backbone_config(cfg)
    return build_model(cfg, 1, path, config), config


def batch():
    ids = torch.randint(1000, 2000, (3, 20), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[0, 12:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def two_train_passes(model):
    model.train()
    with torch.no_grad():
        return model(**batch()), model(**batch())


@pytest.mark.parametrize("arch", ARCHS)
def test_switch_turns_off_every_dropout(backbones, arch):
    model, config = model_for(backbones[arch], disable=True)
    first, second = two_train_passes(model)
    assert torch.equal(first, second)
    check_deterministic(model, batch())
    assert all(v == 0.0 for k, v in config.to_dict().items() if "dropout" in k and isinstance(v, float))


@pytest.mark.parametrize("arch", ARCHS)
def test_without_the_switch_the_checkpoint_dropout_stays(backbones, arch):
    model, _ = model_for(backbones[arch], disable=False)
    first, second = two_train_passes(model)
    assert not torch.allclose(first, second)
    with pytest.raises(UserError, match="two train-mode passes of one batch differ"):
        check_deterministic(model, batch())


def test_named_attributes_are_set_on_the_backbone_config(backbones):
    model, config = model_for(
        backbones["bert"], disable=False, config={"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    )
    assert config.hidden_dropout_prob == 0.0 and config.attention_probs_dropout_prob == 0.0
    first, second = two_train_passes(model)
    assert torch.equal(first, second)


def test_unknown_dropout_attribute_is_refused_with_the_known_ones(backbones):
    # DistilBERT calls it `dropout`; transformers alone would silently ignore the BERT name.
    with pytest.raises(UserError, match=r"no such attribute; its dropout attributes are \['attention_dropout'"):
        model_for(backbones["distilbert"], disable=False, config={"hidden_dropout_prob": 0.0})


class FunctionalDropout(nn.Module):
    """A dropout no module walk can find: the check after the build must catch it."""

    def forward(self, x):
        return nn.functional.dropout(x, 0.5, training=self.training)


def test_a_dropout_the_switch_misses_stops_the_run(backbones):
    model, _ = model_for(backbones["bert"], disable=True)
    model.head = nn.Sequential(FunctionalDropout(), model.head)
    with pytest.raises(UserError, match="dropout the switch does not reach"):
        check_deterministic(model, batch())
