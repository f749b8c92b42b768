"""Config: YAML + overrides, typed; an unknown key or wrong type names the key in one line."""

from __future__ import annotations

import pytest

from loraship import config
from loraship.errors import ConfigError


def write(tmp_path, text):
    p = tmp_path / "m.yaml"
    p.write_text(text)
    return p


def test_defaults_and_overrides(tmp_path):
    cfg = config.load(write(tmp_path, "train:\n  lora_r: 4\n"), {"train.learning_rate": "1e-4", "data.split": "[0.8, 0.1, 0.1]"})
    assert cfg.train.lora_r == 4
    assert cfg.train.learning_rate == pytest.approx(1e-4)
    assert cfg.data.split == [0.8, 0.1, 0.1]
    assert cfg.data.seed == 20251101


@pytest.mark.parametrize("text,needle", [
    ("train:\n  lora_rank: 4\n", "unknown config key 'train.lora_rank'"),
    ("train:\n  lora_r: four\n", "config key 'train.lora_r' must be int"),
    ("train:\n  strategy: restart\n", "train.strategy"),
    ("data:\n  split: [0.5, 0.1]\n", "data.split"),
    ("bogus: 1\n", "unknown config key 'bogus'"),
    ("train: [1, 2]\n", "must be a mapping"),
    ("train:\n  lora_r: [\n", "not valid YAML"),
    ("train:\n  load_best_epoch: false\n", "train.early_stopping_patience' needs train.load_best_epoch"),
])
def test_bad_config_is_one_line_naming_the_key(tmp_path, text, needle):
    with pytest.raises(ConfigError) as e:
        config.load(write(tmp_path, text))
    assert needle in str(e.value)
    assert "\n" not in str(e.value)


def test_bad_override_names_the_key(tmp_path):
    with pytest.raises(ConfigError, match="train.epochs"):
        config.load(None, {"train.epochs": "3"})
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        config.parse_set_options(("train.lora_r",))
