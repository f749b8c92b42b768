"""Training speed choices: padding-free batches, the checkpointing memory estimate, Liger
feature detection, the logging interval (train/speed.py, train/memory.py)."""

from __future__ import annotations

import sys
import types

import pytest

from helpers import qa_rows, write_jsonl
from loraship import pipeline
from loraship.config import TrainConfig
from loraship.errors import ConfigError
from loraship.train import memory, speed

GIB = 1 << 30


def _rows(n: int) -> list[dict]:
    return [{"messages": [{"role": "user", "content": f"Where is mineral {i}?" + " really" * (5 - i)},
                          {"role": "assistant", "content": "At pit " * (i + 1)}]} for i in range(n)]


@pytest.mark.parametrize("mode", ["mask", "positions"])
def test_padding_free_batches_give_the_padded_loss_and_gradients(tiny_base, mode):
    """Rows flattened into one (position_ids restarting per row, no attention_mask) attend only
    inside their own row: the same answer-only loss and LoRA gradients as a padded batch."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from loraship.train.chat_data import FlattenCollator, PadCollator, encode_rows
    from loraship.train.completion_loss import MASK, answer_only_loss, position_mode

    tok = AutoTokenizer.from_pretrained(tiny_base)
    enc = encode_rows(tok, _rows(4), max_len=128)
    feats = [{"input_ids": i, "labels": lab, "replay": k % 2 == 0}
             for k, (i, lab) in enumerate(zip(enc.input_ids, enc.labels))]
    padded, flat = PadCollator(tok.pad_token_id)(feats), FlattenCollator()(feats)
    assert flat["input_ids"].shape == (1, sum(len(i) for i in enc.input_ids)) and "attention_mask" not in flat
    assert int(flat["replay"].sum()) == int(padded["replay"].sum())  # same tokens flagged as replayed
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_base, attn_implementation="sdpa"),
                           LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    if mode == "mask" and position_mode(model) != MASK:
        pytest.skip("this transformers release takes no boolean logits_to_keep (the positions mode covers it)")
    grads = []
    for batch in (padded, flat):
        model.zero_grad()
        loss, out = answer_only_loss(model, batch, mode=mode)
        loss.backward()
        grads.append((loss.detach(), out.logits.detach(),
                      [p.grad.clone() for n, p in model.named_parameters() if "lora_" in n]))
    (lp, logits_p, gp), (lf, logits_f, gf) = grads
    assert torch.allclose(lp, lf, atol=1e-5)
    assert torch.allclose(logits_p, logits_f, atol=1e-4)  # same answer tokens, same order
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(gp, gf))


def test_attention_across_rows_would_change_the_loss(tiny_base):
    """The check above can fail: the same flattened row with one continuous position range
    (rows attending to earlier rows) gives a different loss."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from loraship.train.chat_data import FlattenCollator, encode_rows
    from loraship.train.completion_loss import answer_only_loss

    tok = AutoTokenizer.from_pretrained(tiny_base)
    enc = encode_rows(tok, _rows(3), max_len=128)
    flat = FlattenCollator()([{"input_ids": i, "labels": lab} for i, lab in zip(enc.input_ids, enc.labels)])
    model = AutoModelForCausalLM.from_pretrained(tiny_base, attn_implementation="sdpa")
    joined = {**flat, "position_ids": torch.arange(flat["input_ids"].shape[1])[None]}
    with torch.no_grad():
        separate, _ = answer_only_loss(model, flat, mode="positions")
        mixed, _ = answer_only_loss(model, joined, mode="positions")
    assert not torch.allclose(separate, mixed, atol=1e-4)


SHAPE_05B = memory.Shape(hidden=896, intermediate=4864, layers=24, heads=14, kv_heads=2, vocab=49152)


def _estimate(rows: int, longest: int, checkpointing: bool) -> dict[str, int]:
    batch = memory.largest_batch([longest] * rows, [longest // 2] * rows, rows, padded=True)
    return memory.estimate(SHAPE_05B, batch, n_params=400_000_000, n_lora_params=8_800_000, dtype_bytes=2,
                           lora_dropout=True, eager_attention=False, checkpointing=checkpointing)


def test_checkpointing_is_chosen_only_when_the_largest_batch_does_not_fit():
    big = (_estimate(16, 1024, False), _estimate(16, 1024, True))
    # the 0.5B shape at batch 16 x 1024 (measured 37.9 GB peak without checkpointing, 10.6 with)
    assert 30 * GIB < big[0]["total"] < 50 * GIB and big[1]["total"] < 16 * GIB
    on_h200 = memory.choose_checkpointing(None, *big, free=139 * GIB, source="test")
    assert not on_h200.enabled and "fits" in on_h200.reason
    on_24g = memory.choose_checkpointing(None, *big, free=24 * GIB, source="test")
    assert on_24g.enabled and on_24g.estimate_gib > on_24g.budget_gib > on_24g.estimate_with_gib
    small = (_estimate(4, 128, False), _estimate(4, 128, True))
    assert not memory.choose_checkpointing(None, *small, free=24 * GIB, source="test").enabled
    # the config key wins either way, and an unknown budget never turns it on
    assert memory.choose_checkpointing(True, *small, free=139 * GIB).enabled
    assert not memory.choose_checkpointing(False, *big, free=1 * GIB).enabled
    assert not memory.choose_checkpointing(None, *big, free=None, source="unknown").enabled


def test_the_largest_batch_is_the_longest_rows_padded_or_flattened():
    lengths, labels = [10, 50, 20, 40, 30], [1, 5, 2, 4, 3]
    padded = memory.largest_batch(lengths, labels, 2, padded=True)
    flat = memory.largest_batch(lengths, labels, 2, padded=False)
    assert (padded.tokens, flat.tokens, padded.longest, padded.loss_tokens) == (100, 90, 50, 9)


def test_liger_is_used_only_on_cuda_when_installed(monkeypatch):
    monkeypatch.setattr(speed.importlib.util, "find_spec", lambda name: None)
    assert speed.choose_liger(None, "cuda", "llama") == (False, "liger-kernel not installed (pip install 'loraship[gpu]')")
    with pytest.raises(ConfigError, match="not installed"):
        speed.choose_liger(True, "cuda", "llama")
    assert speed.choose_liger(None, "cpu", "llama")[0] is False
    with pytest.raises(ConfigError, match="need CUDA"):
        speed.choose_liger(True, "cpu", "llama")
    # installed: a module with the table liger-kernel exposes
    fake = types.ModuleType("liger_kernel.transformers.monkey_patch")
    fake.MODEL_TYPE_TO_APPLY_LIGER_FN = {"llama": object(), "qwen2": object()}
    monkeypatch.setattr(speed.importlib.util, "find_spec", lambda name: object())
    monkeypatch.setitem(sys.modules, "liger_kernel", types.ModuleType("liger_kernel"))
    monkeypatch.setitem(sys.modules, "liger_kernel.transformers", types.ModuleType("liger_kernel.transformers"))
    monkeypatch.setitem(sys.modules, "liger_kernel.transformers.monkey_patch", fake)
    assert speed.choose_liger(None, "cuda", "llama")[0] is True
    assert speed.choose_liger(None, "cuda", "gpt2")[0] is False
    assert speed.choose_liger(False, "cuda", "llama")[0] is False
    args = speed.Plan(False, "", "sdpa", memory.CheckpointingChoice(False, ""), True, "", 5, "").training_arguments()
    assert args["use_liger_kernel"] and args["liger_kernel_config"]["fused_linear_cross_entropy"] is False


def test_padding_free_follows_the_attention_implementation():
    assert speed.choose_padding_free(None, "flash_attention_2")[0] is True
    assert speed.choose_padding_free(None, "sdpa")[0] is False
    assert speed.choose_padding_free(True, "sdpa") == (True, "set in config (train.padding_free)")


def test_logging_interval_keeps_about_fifty_points():
    assert speed.choose_logging_steps(None, 30)[0] == 1
    assert speed.choose_logging_steps(None, 184)[0] == 4
    assert speed.choose_logging_steps(7, 184)[0] == 7


@pytest.mark.slow
def test_training_records_its_speed_choices_padded_or_padding_free(isolated_home, tiny_config):
    rows = write_jsonl(isolated_home / "a.jsonl", qa_rows("alpha", 24, "alpha"))
    recs = {}
    for padding_free in (False, True):
        model = f"pf{int(padding_free)}"
        tiny_config(model, train__num_train_epochs=2, train__logging_steps=3, train__padding_free=padding_free,
                    train__per_device_train_batch_size=2, train__gradient_accumulation_steps=1)
        cfg = pipeline.load_config(model)
        pipeline.stage_data(model, cfg, [rows])
        recs[padding_free] = rec = pipeline.stage_train(model, cfg).stage("train")
        fast = rec["speed"]
        assert fast["padding_free"] is padding_free and fast["logging_steps"] == 3
        assert fast["liger_kernel"] is False and "CUDA" in fast["liger_kernel_reason"]
        ckpt = fast["gradient_checkpointing"]
        assert ckpt["enabled"] is False and ckpt["estimate_gib"] < ckpt["budget_gib"]
        assert rec["device"]["gradient_checkpointing"] is False
        # on this CPU every LoRA dropout (7 projections x 2 tiny layers) draws the cheaper mask
        assert fast["fast_dropout"] is True and fast["dropouts_swapped"] == 14
        steps = [p["step"] for p in rec["loss_curve"] if "loss" in p]
        assert steps and all(s % 3 == 0 for s in steps)
    # the same real tokens counted, padded (non-padding count) or flattened (no padding at all)
    assert recs[False]["train_tokens"] == recs[True]["train_tokens"] > 0
    assert recs[False]["global_steps"] == recs[True]["global_steps"]


def test_unknown_logging_steps_is_refused(tiny_config):
    tiny_config("tiny", train__logging_steps=0)
    with pytest.raises(ConfigError, match="train.logging_steps"):
        pipeline.load_config("tiny")


def test_train_config_defaults_leave_the_speed_choices_automatic():
    cfg = TrainConfig()
    assert (cfg.padding_free, cfg.liger_kernel, cfg.logging_steps, cfg.gradient_checkpointing,
            cfg.fast_dropout) == (None, None, None, None, None)


def test_mask_dropout_keeps_nn_dropouts_distribution_and_is_off_in_eval():
    """Each element kept with probability 1-p and scaled by 1/(1-p), as nn.Dropout does; the
    expectation is the input; nothing is dropped in eval mode; seeded runs repeat."""
    import torch

    from loraship.train import lora_dropout

    drop = lora_dropout._module_class()(0.2)
    x = torch.ones(400, 500)
    torch.manual_seed(0)
    y = drop(x)
    kept = (y != 0).float().mean().item()
    assert abs(kept - 0.8) < 0.005  # 200k draws: sd 0.0009
    assert torch.allclose(y[y != 0], torch.full_like(y[y != 0], 1 / 0.8))
    assert abs(y.mean().item() - 1.0) < 0.01
    torch.manual_seed(0)
    assert torch.equal(drop(x), y)
    bf = drop(x.to(torch.bfloat16))
    assert bf.dtype == torch.bfloat16
    drop.eval()
    assert drop(x) is x
    xg = torch.randn(30, 40, requires_grad=True)
    drop.train()
    out = drop(xg)
    out.sum().backward()  # the gradient flows through kept elements only, scaled like the value
    assert torch.allclose(xg.grad, (out != 0).float() / 0.8)


def test_fast_dropout_is_chosen_on_cpu_only_and_can_be_turned_off():
    from loraship.train.lora_dropout import choose

    assert choose(None, "cpu", 0.05)[0] is True
    assert choose(False, "cpu", 0.05) == (False, "off in config (train.fast_dropout): torch's nn.Dropout")
    assert choose(None, "cpu", 0.0)[0] is False
    assert choose(None, "cuda", 0.05)[0] is False
    with pytest.raises(ConfigError, match="train.fast_dropout"):
        choose(True, "cuda", 0.05)


def test_swap_replaces_every_lora_dropout_and_keeps_the_adapter(tiny_base):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from loraship.train import lora_dropout

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_base),
                           LoraConfig(r=4, lora_dropout=0.1, target_modules=["q_proj", "v_proj"]))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert lora_dropout.swap(model) == 2 * model.config.num_hidden_layers
    assert not any(isinstance(m, torch.nn.Dropout) and m.p > 0 for n, m in model.named_modules() if "lora_dropout" in n)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert lora_dropout.swap(model) == 0  # idempotent


def test_accumulation_is_folded_into_one_batch_only_when_it_fits_and_is_allowed():
    gib = 1 << 30
    assert speed.choose_fold(None, 4, 2, None, 1 * gib, 8 * gib)[0] is True
    assert speed.choose_fold(None, 4, 1, None, None, 8 * gib) == (False, "no gradient accumulation to fold")
    too_big = speed.choose_fold(None, 4, 2, None, 8 * gib, 8 * gib)
    assert too_big[0] is False and "more than" in too_big[1]
    assert speed.choose_fold(None, 4, 2, True, 1 * gib, 8 * gib)[0] is False  # memory-bound by config
    assert speed.choose_fold(None, 4, 2, None, 1 * gib, None)[0] is False  # memory unknown
    assert speed.choose_fold(False, 4, 2, None, 1 * gib, 8 * gib)[0] is False
    assert speed.choose_fold(True, 4, 2, None, 8 * gib, 1 * gib)[0] is True


@pytest.mark.slow
def test_folded_accumulation_trains_the_same_steps_and_records_it(isolated_home, tiny_config):
    """4 x 2 accumulated rows run as batches of 8: the same optimizer steps and tokens; the
    manifest keeps the hyperparameters as chosen and the plan as run."""
    rows = write_jsonl(isolated_home / "a.jsonl", qa_rows("alpha", 24, "alpha"))
    recs = {}
    for fold in (False, True):
        model = f"fold{int(fold)}"
        tiny_config(model, train__num_train_epochs=1, train__per_device_train_batch_size=4,
                    train__gradient_accumulation_steps=2, train__fold_accumulation=fold)
        cfg = pipeline.load_config(model)
        pipeline.stage_data(model, cfg, [rows])
        recs[fold] = pipeline.stage_train(model, cfg).stage("train")
    for fold, rec in recs.items():
        assert rec["hyperparameters"]["per_device_train_batch_size"] == 4
        assert rec["hyperparameters"]["gradient_accumulation_steps"] == 2
        assert (rec["speed"]["micro_batch"], rec["speed"]["gradient_accumulation"]) == ((8, 1) if fold else (4, 2))
    assert recs[True]["global_steps"] == recs[False]["global_steps"] > 0
    assert recs[True]["train_tokens"] == recs[False]["train_tokens"]
