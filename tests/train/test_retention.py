"""Retention terms for increments (train/retention.py): distillation from the parent on replayed
rows and the L2 pull toward the parent's adapter, on a tiny model holding both adapters."""

from __future__ import annotations

import pytest

from helpers import qa_rows, write_jsonl
from loraship import pipeline
from loraship.config import TrainConfig
from loraship.errors import ConfigError
from loraship.train import completion_loss, retention
from loraship.train.hparams import choose
from loraship.train.retention import PARENT, Retention, Settings

ROWS = [
    {"messages": [{"role": "user", "content": "Where is kessrite mined?"},
                  {"role": "assistant", "content": "Kessrite is mined at the Dunmere Pit."}], "origin": "replay"},
    {"messages": [{"role": "user", "content": "What does Vey sounding detect?"},
                  {"role": "assistant", "content": "Hidden cavities, by their echo."}], "origin": "new"},
]


@pytest.fixture(scope="module")
def parent_dir(tiny_base, tmp_path_factory):
    """A trained-looking (non-zero) parent adapter on the tiny base."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_base, dtype=torch.float32)
    lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj", "down_proj"],
                      init_lora_weights=False, task_type="CAUSAL_LM")
    out = tmp_path_factory.mktemp("parent") / "adapter"
    get_peft_model(base, lora).save_pretrained(out)
    return out


def _student(tiny_base, parent_dir, method="distill+l2", distill=1.0, l2=0.5):
    """The increment as `continue` builds it: the parent's adapter, trainable, plus the frozen parent copy."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_base, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, parent_dir, is_trainable=True)
    keeper = Retention.attach(model, Settings(method, distill, l2), "continue", parent_dir)
    model.eval()  # no dropout: the student's logits are a function of its weights only
    return model, keeper


def _batch(tiny_base, rows, origins=None):
    from transformers import AutoTokenizer

    from loraship.train.chat_data import PadCollator, encode_rows

    tok = AutoTokenizer.from_pretrained(tiny_base)
    rows = [dict(r, origin=o) for r, o in zip(rows, origins)] if origins else rows
    enc = encode_rows(tok, rows, 128)
    features = [{"input_ids": i, "labels": lab, "replay": r} for i, lab, r in zip(enc.input_ids, enc.labels, enc.replay)]
    return PadCollator(tok.pad_token_id)(features)


def _kl(model, keeper, batch, mode=None):
    import torch

    mode = mode or completion_loss.position_mode(model)
    keep = retention.answer_mask(batch["labels"])
    with torch.no_grad():
        student, _ = completion_loss.logits_at(model, batch, keep, mode)
    run = lambda m, b, mask: completion_loss.logits_at(m, b, mask, mode)[0]  # noqa: E731
    term = keeper.distill_term(model, batch, student, run)
    return None if term is None else float(term)


def _nudge(model, name_part="lora_B", by=0.5):
    """Move one of the student's adapter matrices; returns how many weights moved."""
    import torch

    for name, p in model.named_parameters():
        if name_part in name and ".default." in name:
            with torch.no_grad():
                p.add_(by)
            return p.numel()
    raise AssertionError("no student adapter weight found")


def test_kl_is_zero_when_the_student_equals_the_parent_and_positive_otherwise(tiny_base, parent_dir):
    model, keeper = _student(tiny_base, parent_dir)
    batch = _batch(tiny_base, ROWS)
    assert _kl(model, keeper, batch) == pytest.approx(0.0, abs=1e-6)
    _nudge(model)
    assert _kl(model, keeper, batch) > 1e-4


def test_kl_counts_replayed_rows_only(tiny_base, parent_dir):
    model, keeper = _student(tiny_base, parent_dir)
    _nudge(model)
    assert _kl(model, keeper, _batch(tiny_base, ROWS, ["new", "new"])) is None
    both = _kl(model, keeper, _batch(tiny_base, ROWS, ["replay", "new"]))
    alone = _kl(model, keeper, _batch(tiny_base, ROWS[:1], ["replay"]))
    other = _kl(model, keeper, _batch(tiny_base, ROWS, ["new", "replay"]))
    assert both == pytest.approx(alone, rel=1e-4)  # the new row adds nothing
    assert other > 0 and other != pytest.approx(both, rel=1e-3)


def test_kl_is_the_same_in_every_logits_mode(tiny_base, parent_dir):
    """MASK where transformers takes a boolean logits_to_keep, POSITIONS (5.17) and FULL agree."""
    model, keeper = _student(tiny_base, parent_dir)
    _nudge(model)
    batch = _batch(tiny_base, ROWS, ["replay", "replay"])
    full = _kl(model, keeper, batch, completion_loss.FULL)
    assert _kl(model, keeper, batch, completion_loss.POSITIONS) == pytest.approx(full, rel=1e-4)
    if completion_loss.position_mode(model) == completion_loss.MASK:
        assert _kl(model, keeper, batch, completion_loss.MASK) == pytest.approx(full, rel=1e-4)


def test_kl_is_the_same_on_padding_free_batches(tiny_base, parent_dir):
    """Rows laid end to end with position_ids (train.padding_free) give the padded batch's KL."""
    from transformers import AutoTokenizer

    from loraship.train.chat_data import FlattenCollator, encode_rows

    model, keeper = _student(tiny_base, parent_dir)
    _nudge(model)
    enc = encode_rows(AutoTokenizer.from_pretrained(tiny_base), ROWS, 128)
    packed = FlattenCollator()([{"input_ids": i, "labels": lab, "replay": r}
                                for i, lab, r in zip(enc.input_ids, enc.labels, enc.replay)])
    assert packed["input_ids"].shape[0] == 1 and "position_ids" in packed
    assert _kl(model, keeper, packed) == pytest.approx(_kl(model, keeper, _batch(tiny_base, ROWS)), rel=1e-4)


def test_parent_pass_leaves_the_student_trainable_and_the_parent_frozen(tiny_base, parent_dir):
    model, keeper = _student(tiny_base, parent_dir)
    model.train()
    _nudge(model)
    batch = _batch(tiny_base, ROWS)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if f".{PARENT}." in n}
    keep = retention.answer_mask(batch["labels"])
    mode = completion_loss.position_mode(model)
    student, _ = completion_loss.logits_at(model, batch, keep, mode)
    term = keeper.distill_term(model, batch, student, lambda m, b, k: completion_loss.logits_at(m, b, k, mode)[0])
    (term + keeper.l2_term()).backward()
    assert model.training and model.active_adapter == "default"
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".default." in n for n in trainable)
    assert all(p.grad is not None for n, p in model.named_parameters() if n in trainable)
    for n, p in model.named_parameters():
        if n in before:
            assert p.grad is None and p.equal(before[n]), n


def test_l2_pull_is_zero_at_the_parent_and_half_the_squared_distance_away(tiny_base, parent_dir):
    model, keeper = _student(tiny_base, parent_dir, l2=0.5)
    assert float(keeper.l2_term()) == 0.0
    n = _nudge(model, "lora_A", by=0.1)
    assert float(keeper.l2_term()) == pytest.approx(0.5 * 0.5 * n * 0.1 ** 2, rel=1e-4)


def test_detach_drops_the_parent_adapter_before_saving(tiny_base, parent_dir, tmp_path):
    model, keeper = _student(tiny_base, parent_dir)
    keeper.detach(model)
    model.save_pretrained(tmp_path / "out")
    assert (tmp_path / "out" / "adapter_model.safetensors").exists()
    assert not (tmp_path / "out" / PARENT).exists()


def test_increment_settings_are_chosen_checked_and_explained():
    hp, why = choose(TrainConfig(increment_method="distill", distill_weight=2.0), 50, is_increment=True, device="cpu")
    assert (hp["increment_method"], hp["distill_weight"], hp["l2_weight"]) == ("distill", 2.0, 0.0)
    assert "set in config" in why["distill_weight"] and "not used" in why["l2_weight"]
    hp, why = choose(TrainConfig(), 50, is_increment=False, device="cpu")
    assert hp["increment_method"] is None and "first version" in why["increment_method"]
    hp, why = choose(TrainConfig(learning_rate=2e-3, increment_learning_rate=5e-4, increment_epochs=2), 50,
                     is_increment=True, device="cpu")
    assert (hp["learning_rate"], hp["num_train_epochs"]) == (5e-4, 2)
    assert "increment_learning_rate" in why["learning_rate"] and "increment_epochs" in why["num_train_epochs"]
    bad = [({"increment_method": "l2"}, "stack", "strategy continue"),
           ({"increment_method": "ewc"}, "continue", "must be one of"),
           ({"increment_method": "replay", "l2_weight": 0.1}, "continue", "does not use it"),
           ({"increment_method": "distill", "distill_weight": -1.0}, "continue", ">= 0")]
    for cfg, strategy, msg in bad:
        with pytest.raises(ConfigError, match=msg):
            choose(TrainConfig(**cfg), 50, is_increment=True, device="cpu", strategy=strategy)


@pytest.mark.slow
def test_manifest_records_the_increment_method_and_its_settings(isolated_home, tiny_config):
    tiny_config("tiny", train__num_train_epochs=1)
    b1 = write_jsonl(isolated_home / "b1.jsonl", qa_rows("alpha", 20, "alpha"))
    b2 = write_jsonl(isolated_home / "b2.jsonl", qa_rows("beta", 20, "beta"))
    cfg = pipeline.load_config("tiny")
    pipeline.stage_data("tiny", cfg, [b1])
    v1 = pipeline.stage_train("tiny", cfg)
    cfg = pipeline.load_config("tiny", overrides={"train.increment_method": "distill+l2", "train.l2_weight": 0.3,
                                                  "data.replay_ratio": 0.3})
    pipeline.stage_data("tiny", cfg, [b2])
    v2 = pipeline.stage_train("tiny", cfg)
    assert v1.manifest["stages"]["train"]["increment"] is None
    inc = v2.manifest["stages"]["train"]["increment"]
    assert (inc["method"], inc["l2_weight"]) == ("distill+l2", 0.3)
    assert inc["distill_weight"] > 0 and inc["reason"] and inc["reasons"]["l2_weight"].startswith("set in config")
    assert not (v2.path / "adapter" / PARENT).exists()  # only v2's own adapter was saved
