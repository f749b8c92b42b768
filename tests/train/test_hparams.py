"""The automatic hyperparameter table, and that every choice can be overridden and is explained."""

from __future__ import annotations

import pytest

from loraship.config import TrainConfig
from loraship.train.hparams import choose


@pytest.mark.parametrize("rows,r,alpha,epochs,seq", [
    (10, 8, 16, 10, 512), (99, 8, 16, 10, 512), (100, 16, 32, 5, 640), (500, 16, 32, 5, 640),
    (501, 32, 64, 3, 768), (5000, 32, 64, 3, 768),
])
def test_table_by_dataset_size(rows, r, alpha, epochs, seq):
    hp, why = choose(TrainConfig(), rows, is_increment=False, device="cpu")
    assert (hp["lora_r"], hp["lora_alpha"], hp["num_train_epochs"], hp["max_seq_length"]) == (r, alpha, epochs, seq)
    assert hp["learning_rate"] == 2e-4
    assert hp["per_device_train_batch_size"] * hp["gradient_accumulation_steps"] == 8
    assert str(rows) in why["lora_r"]


def test_increment_trains_at_the_parent_rate_and_inherits_the_parent_adapter_shape():
    parent = {"lora_r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"]}
    hp, why = choose(TrainConfig(), 600, is_increment=True, device="cpu", parent_lora=parent,
                     parent_learning_rate=3e-4)
    assert hp["learning_rate"] == 3e-4 and "the parent's learning rate" in why["learning_rate"]
    assert (hp["lora_r"], hp["target_modules"]) == (8, ["q_proj", "v_proj"])
    assert "parent" in why["lora_r"]
    # a parent recorded without one (older manifests) falls back to the first version's rate
    hp, _ = choose(TrainConfig(), 600, is_increment=True, device="cpu", parent_lora=parent)
    assert hp["learning_rate"] == 2e-4


def test_the_default_increment_method_is_the_measured_one_where_the_strategy_allows_it():
    from loraship.train import hparams

    hp, why = choose(TrainConfig(), 50, is_increment=True, device="cpu", strategy="continue")
    assert (hp["increment_method"], hp["l2_weight"], hp["distill_weight"]) == (
        hparams.INCREMENT_METHOD, hparams.L2_WEIGHT, hparams.DISTILL_WEIGHT)
    assert all("bench-forgetting" in why[k] for k in ("increment_method", "l2_weight", "distill_weight"))
    # stack trains a fresh adapter: no parent weights to pull toward, so not the l2 default
    hp, why = choose(TrainConfig(), 50, is_increment=True, device="cpu", strategy="stack")
    assert hp["increment_method"] == hparams.INCREMENT_METHOD_NOT_CONTINUE and hp["l2_weight"] == 0.0
    assert "only continue" in why["increment_method"]


def test_warmup_is_ten_percent_capped_at_fifty():
    hp, _ = choose(TrainConfig(), 80, is_increment=False, device="cpu")
    assert hp["warmup_steps"] == 10  # 10 steps/epoch x 10 epochs = 100 steps
    hp, _ = choose(TrainConfig(), 5000, is_increment=False, device="cuda")
    assert hp["warmup_steps"] == 50


def test_every_value_is_overridable_and_marked_as_set():
    cfg = TrainConfig(lora_r=4, lora_alpha=4, num_train_epochs=1, learning_rate=5e-5, max_seq_length=64,
                      per_device_train_batch_size=2, gradient_accumulation_steps=3)
    hp, why = choose(cfg, 50, is_increment=True, device="cuda")
    assert (hp["lora_r"], hp["lora_alpha"], hp["num_train_epochs"], hp["learning_rate"], hp["max_seq_length"],
            hp["per_device_train_batch_size"], hp["gradient_accumulation_steps"]) == (4, 4, 1, 5e-5, 64, 2, 3)
    assert why["learning_rate"] == "set in config or on the command line"


def test_neftune_noise_is_off_unless_set_and_reaches_the_trainer():
    from types import SimpleNamespace

    from loraship.config import Config
    from loraship.errors import ConfigError
    from loraship.train.arguments import training_arguments

    hp, _ = choose(TrainConfig(), 50, is_increment=False, device="cpu")
    assert hp["neftune_noise_alpha"] is None
    hp, why = choose(TrainConfig(neftune_noise_alpha=5.0), 50, is_increment=False, device="cpu")
    assert hp["neftune_noise_alpha"] == 5.0 and why["neftune_noise_alpha"] == "config"
    dev = SimpleNamespace(dtype="float32", device="cpu")
    fast = SimpleNamespace(micro_batch=4, accumulation=2, checkpointing=SimpleNamespace(enabled=False),
                           training_arguments=lambda: {})
    args = training_arguments(Config(), dev, hp, fast, "/tmp/unused-ckpt", has_val=False)
    assert args.neftune_noise_alpha == 5.0
    with pytest.raises(ConfigError, match="neftune_noise_alpha"):
        choose(TrainConfig(neftune_noise_alpha=-1.0), 50, is_increment=False, device="cpu")
