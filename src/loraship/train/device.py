"""Pick the training device and precision, and record why.

CUDA trains in bf16 where the card supports it (else fp16), Apple MPS in fp32. On a
CPU the answer depends on the chip: with AMX or AVX512-BF16, torch (oneDNN) runs bf16
matmuls several times faster than fp32 (3.2-3.9x measured on a Xeon with AMX, 2-4x on
forward matmuls of a Zen 4 EPYC with AVX512-BF16); without them bf16 is emulated and
slower. Whole LoRA steps on the EPYC (SmolLM2-135M, 3 interleaved rounds on a quiet
machine, docs/benchmarks.md) ran 1.58x [1.48, 1.68] the plain fp32 script in bf16 and
1.17x [1.06, 1.30] in fp32, all else equal. (A first measurement on the same kind of machine, shared with jobs at load
average 3-11, had found bf16 steps slower; the quiet rounds did not repeat it.) So a CPU
trains in bf16 when it has one of those instruction sets and a short matmul probe confirms
bf16 is at least MIN_BF16_SPEEDUP faster here; `train.dtype` overrides either way. The
base weights take that dtype; peft keeps the LoRA weights in fp32
(`autocast_adapter_dtype`), and export always merges in fp32 on a CPU.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass

from loraship.errors import ConfigError

DTYPES = ("bfloat16", "float16", "float32")
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")  # native bf16 matmul instructions (AMX tiles, AVX-512 dot products)
MIN_BF16_SPEEDUP = 1.3  # below this the probe's noise could decide; fp32 is the safe default


@dataclass(frozen=True)
class DeviceChoice:
    device: str  # cuda | mps | cpu
    dtype: str  # bfloat16 | float16 | float32
    reason: str

    def torch_dtype(self):
        import torch

        return getattr(torch, self.dtype)


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The CPU's feature flags as Linux reports them (empty where /proc/cpuinfo is absent)."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8") as f:
                cpuinfo = f.read()
        except OSError:
            return set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags") and ":" in line:
            return set(line.split(":", 1)[1].split())
    return set()


def _gflops(dtype, size: int = 768, seconds: float = 0.15) -> float:
    import torch

    a = torch.randn(256, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    a @ b  # first call pays for kernel selection
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        n += 1
    return 2 * 256 * size * size * n / (time.perf_counter() - start) / 1e9


@functools.lru_cache(maxsize=1)
def probe_cpu_bf16() -> tuple[float, float]:
    """(bf16, fp32) matmul GFLOP/s on this CPU, interleaved so background load hits both alike."""
    import torch

    bf16, fp32 = [], []
    for _ in range(2):
        bf16.append(_gflops(torch.bfloat16))
        fp32.append(_gflops(torch.float32))
    return max(bf16), max(fp32)


def choose_cpu_dtype(flags: set[str], probe=probe_cpu_bf16) -> tuple[str, str]:
    """(dtype, reason) for training on this CPU."""
    have = [f for f in BF16_CPU_FLAGS if f in flags]
    if not have:
        return "float32", "CPU without AMX or AVX512-BF16: fp32 (bf16 would be emulated and slow)"
    bf16, fp32 = probe()
    ratio = bf16 / max(fp32, 1e-9)
    measured = f"bf16 {bf16:.0f} vs fp32 {fp32:.0f} GFLOP/s ({ratio:.1f}x)"
    if ratio >= MIN_BF16_SPEEDUP:
        return "bfloat16", f"CPU with {'+'.join(have)}: bf16 base weights, fp32 LoRA ({measured})"
    return "float32", f"CPU with {'+'.join(have)} but bf16 measured no faster: fp32 ({measured})"


def choose(requested: str | None = None, dtype: str | None = None) -> DeviceChoice:
    import torch

    if requested not in (None, "cuda", "mps", "cpu"):
        raise ConfigError(f"config key 'train.device' must be cuda, mps or cpu, got {requested!r}")
    if dtype not in (None, *DTYPES):
        raise ConfigError(f"config key 'train.dtype' must be one of {', '.join(DTYPES)}, got {dtype!r}")
    choice = _choose_device(requested, torch)
    if dtype is None or dtype == choice.dtype:
        return choice
    if choice.device == "cuda" and dtype == "bfloat16" and not torch.cuda.is_bf16_supported():
        raise ConfigError("train.dtype=bfloat16 was asked for but this GPU has no bf16: use float16 or float32")
    return DeviceChoice(choice.device, dtype, f"{choice.reason}; train.dtype={dtype} set in the config")


def _choose_device(requested: str | None, torch) -> DeviceChoice:
    if requested in (None, "cuda") and torch.cuda.is_available():
        if torch.cuda.is_bf16_supported():
            return DeviceChoice("cuda", "bfloat16", f"CUDA {torch.cuda.get_device_name(0)} with bf16")
        return DeviceChoice("cuda", "float16", f"CUDA {torch.cuda.get_device_name(0)} without bf16: fp16")
    mps = getattr(torch.backends, "mps", None)
    if requested in (None, "mps") and mps is not None and mps.is_available():
        return DeviceChoice("mps", "float32", "Apple MPS, fp32")
    if requested not in (None, "cpu"):
        raise ConfigError(f"train.device={requested} was asked for but is not available here; use cpu")
    dtype, reason = choose_cpu_dtype(cpu_flags())
    return DeviceChoice("cpu", dtype, reason)
