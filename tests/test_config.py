from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

import train
from textreg.config import Config, apply_overrides, compose, load_config
from textreg.errors import UserError

REPO = Path(__file__).resolve().parents[1]
DEFAULT = REPO / "configs" / "default.yaml"


EXPERIMENTS = [DEFAULT, REPO / "configs" / "debug.yaml", *sorted((REPO / "configs" / "experiment").glob("*.yaml"))]


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.name)
def test_every_shipped_experiment_config_validates(path):
    cfg = load_config(path)
    assert cfg.experiment


def test_debug_overrides_only_what_changes():
    debug, default = load_config(REPO / "configs" / "debug.yaml"), load_config(DEFAULT)
    assert debug.cv.n_folds == 2 and default.cv.n_folds == 5
    assert debug.model.backbone == default.model.backbone
    assert debug.train.lr == default.train.lr


def test_command_line_overrides_are_typed():
    cfg = load_config(DEFAULT, ["train.lr=3e-5", "model.pooling=attention", "folds=[2]", "train.grad_clip=null"])
    assert cfg.train.lr == pytest.approx(3e-5)
    assert cfg.model.pooling == "attention"
    assert cfg.folds == [2]
    assert cfg.train.grad_clip is None
    assert load_config(DEFAULT, ["train.mixed_precision=no"]).train.mixed_precision == "no"  # not YAML's false


def test_defaults_are_merged_in_order_then_own_keys(tmp_path):
    (tmp_path / "a.yaml").write_text(yaml.safe_dump({"x": {"p": 1, "q": 1}}))
    (tmp_path / "b.yaml").write_text(yaml.safe_dump({"x": {"q": 2, "r": 2}}))
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"defaults": ["a.yaml", "b.yaml"], "x": {"r": 3}}))
    assert compose(tmp_path / "c.yaml") == {"x": {"p": 1, "q": 2, "r": 3}}


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("train.lrr=1e-4", r"train\.lrr: unknown key; allowed here: batch_size, .*lr"),
        ("modle.pooling=cls", r"modle: unknown key"),
        ("train.lr=-1", r"train\.lr: Input should be greater than 0"),
        ("train.lr=fast", r"train\.lr: .*valid number"),
        ("train.epochs=two", r"train\.epochs: .*valid integer"),
        ("cv.n_folds=1", r"cv\.n_folds: Input should be greater than or equal to 2"),
        ("model.pooling=max", r"model\.pooling: Value error, unknown pooling 'max'; registered: cls, mean, attention"),
        ("folds=[7]", r"folds=\[7\]: give distinct fold numbers from 0 to 4"),
        ("cv.scheme=group", r"scheme 'group' needs cv.group_column"),
        ("model.dropout.config={hidden_dropout_prob: 0.1}", r"contradicts dropout.disable=true"),
        ("experiment=a/b", r"experiment: String should match pattern"),
        ("train.lr", r"not of the form key.sub=value"),
        ("train.checkpoint_every=0", r"train\.checkpoint_every: .*a number of optimizer steps \(>= 1\)"),
        ("train.checkpoint_every=15m", r"train\.checkpoint_every: .*a duration such as '15min'"),
    ],
)
def test_bad_config_is_refused_naming_the_key(override, expected):
    with pytest.raises(UserError, match=expected):
        load_config(DEFAULT, [override])


def test_missing_config_file_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_override_builds_nested_keys():
    assert apply_overrides({"a": {"b": 1}}, ["a.c.d=2"]) == {"a": {"b": 1, "c": {"d": 2}}}


def _defaults_set_again(raw: dict, section: type, prefix: str = "") -> list[str]:
    """Keys of a YAML mapping whose value is the one config.py gives that key anyway."""
    again = []
    for key, value in raw.items():
        field = section.model_fields[key]
        if isinstance(value, dict) and isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            again += _defaults_set_again(value, field.annotation, f"{prefix}{key}.")
        elif not field.is_required() and field.get_default(call_default_factory=True) == value:
            again.append(prefix + key)
    return again


SHIPPED = ["default.yaml", "debug.yaml", "summaries.yaml"]
SHIPPED += [f"{d}/{p.name}" for d in ("data", "model", "experiment") for p in (REPO / "configs" / d).glob("*")]


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_no_config_file_restates_a_default_of_config_py(name):
    """config.py is the one source of defaults: a default written again in YAML is a second source that drifts."""
    raw = yaml.safe_load((REPO / "configs" / name).read_text())
    raw.pop("defaults", None)
    assert _defaults_set_again(raw, Config) == []


def test_print_config_shows_every_key_resolved(capsys):
    assert train.main(["--config", str(DEFAULT), "train.lr=3e-5", "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed == load_config(DEFAULT, ["train.lr=3e-5"]).to_dict()
    assert printed["train"]["eval_start"] == 0.5 and printed["train"]["lr"] == 3e-5
