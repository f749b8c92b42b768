"""Training precision on CPUs: bf16 only where the chip is fast at it, fp32 elsewhere, recorded."""

from __future__ import annotations

import pytest

from helpers import qa_rows, write_jsonl
from loraship import pipeline
from loraship.errors import ConfigError
from loraship.store import versions
from loraship.train import device

XEON_AMX = "processor : 0\nflags : fpu sse2 avx2 avx512f avx512_bf16 amx_tile amx_bf16 amx_int8\n"
OLD_CPU = "processor : 0\nflags : fpu sse2 avx avx2 fma\n"
ZEN4 = "processor : 0\nflags : fpu sse2 avx2 avx512f avx512_vnni avx512_bf16\n"


def test_cpu_flags_are_read_from_cpuinfo():
    assert {"amx_bf16", "avx512_bf16"} <= device.cpu_flags(XEON_AMX)
    assert "avx512_bf16" not in device.cpu_flags(OLD_CPU)
    assert device.cpu_flags("no flags line here") == set()


def test_a_cpu_without_bf16_instructions_trains_in_fp32_without_probing():
    def probe():
        raise AssertionError("no probe where the flags already say no")

    dtype, reason = device.choose_cpu_dtype(device.cpu_flags(OLD_CPU), probe)
    assert dtype == "float32" and "without AMX or AVX512-BF16" in reason


def test_avx512_bf16_without_amx_trains_in_bf16_when_the_probe_agrees():
    """Zen 4 here: whole LoRA steps measured 1.34x faster in bf16 than in fp32 (docs/benchmarks.md)."""
    dtype, reason = device.choose_cpu_dtype(device.cpu_flags(ZEN4), lambda: (380.0, 140.0))
    assert dtype == "bfloat16" and "avx512_bf16" in reason and "2.7x" in reason
    dtype, reason = device.choose_cpu_dtype(device.cpu_flags(ZEN4), lambda: (150.0, 140.0))
    assert dtype == "float32" and "no faster" in reason


def test_a_cpu_with_bf16_instructions_trains_in_bf16_when_the_probe_says_it_is_faster():
    dtype, reason = device.choose_cpu_dtype(device.cpu_flags(XEON_AMX), lambda: (650.0, 190.0))
    assert dtype == "bfloat16"
    assert "amx_bf16" in reason and "3.4x" in reason


def test_bf16_flags_but_no_measured_gain_stay_fp32():
    dtype, reason = device.choose_cpu_dtype(device.cpu_flags(XEON_AMX), lambda: (110.0, 100.0))
    assert dtype == "float32" and "no faster" in reason


def test_train_dtype_overrides_the_choice_and_is_validated(monkeypatch):
    monkeypatch.setattr(device, "choose_cpu_dtype", lambda flags: ("bfloat16", "probe says bf16"))
    assert device.choose("cpu").dtype == "bfloat16"
    forced = device.choose("cpu", "float32")
    assert (forced.device, forced.dtype) == ("cpu", "float32")
    assert "train.dtype=float32" in forced.reason
    with pytest.raises(ConfigError, match="train.dtype"):
        device.choose("cpu", "int8")


def test_the_probe_measures_both_precisions_on_this_machine():
    bf16, fp32 = device.probe_cpu_bf16()
    assert bf16 > 0 and fp32 > 0


@pytest.mark.slow
def test_bf16_training_keeps_lora_weights_in_fp32_and_records_why(tiny_config, isolated_home):
    from safetensors import safe_open

    tiny_config(train__dtype="bfloat16")
    cfg = pipeline.load_config("tiny")
    pipeline.stage_data("tiny", cfg, [write_jsonl(isolated_home / "bf16.jsonl", qa_rows("bf", 16))])
    pipeline.stage_train("tiny", cfg)
    rec = versions.get("tiny", "v1").stage("train")
    assert rec["device"]["dtype"] == "bfloat16"
    assert "bf16" in rec["device"]["reason"] or "train.dtype=bfloat16" in rec["device"]["reason"]
    adapter = versions.get("tiny", "v1").path / "adapter" / "adapter_model.safetensors"
    with safe_open(str(adapter), "pt") as f:
        dtypes = {str(f.get_tensor(k).dtype) for k in f.keys()}
    assert dtypes == {"torch.float32"}

