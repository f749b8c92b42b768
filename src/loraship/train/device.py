"""Pick the training device and precision: CUDA (bf16 where supported), Apple MPS, else CPU fp32.

CPUs here have no fast bf16 (bf16 matmuls crawl), so CPU always trains in fp32.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DeviceChoice:
    device: str  # cuda | mps | cpu
    dtype: str  # bfloat16 | float16 | float32
    reason: str

    def torch_dtype(self):
        import torch

        return getattr(torch, self.dtype)


def choose(requested: str | None = None) -> DeviceChoice:
    import torch

    if requested not in (None, "cuda", "mps", "cpu"):
        from loraship.errors import ConfigError

        raise ConfigError(f"config key 'train.device' must be cuda, mps or cpu, got {requested!r}")
    if requested in (None, "cuda") and torch.cuda.is_available():
        if torch.cuda.is_bf16_supported():
            return DeviceChoice("cuda", "bfloat16", f"CUDA {torch.cuda.get_device_name(0)} with bf16")
        return DeviceChoice("cuda", "float16", f"CUDA {torch.cuda.get_device_name(0)} without bf16: fp16")
    mps = getattr(torch.backends, "mps", None)
    if requested in (None, "mps") and mps is not None and mps.is_available():
        return DeviceChoice("mps", "float32", "Apple MPS, fp32")
    if requested not in (None, "cpu"):
        from loraship.errors import ConfigError

        raise ConfigError(f"train.device={requested} was asked for but is not available here; use cpu")
    return DeviceChoice("cpu", "float32", "no GPU found: CPU in fp32 (bf16 is slow on CPUs)")
