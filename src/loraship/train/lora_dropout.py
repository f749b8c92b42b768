"""LoRA dropout whose mask is cheaper to draw on a CPU, with the same distribution.

peft drops the input of each adapted projection with `nn.Dropout`. On a CPU torch draws
that mask with `bernoulli_`: single-threaded, about 6 ns per element, and on a B x T x
hidden tensor for each of the 7 projections in every layer it was 13% of a CPU LoRA step
(profiled on SmolLM2-135M, docs/benchmarks.md); on bf16 activations it costs more.
`MaskDropout` keeps each element with probability 1-p and scales it by 1/(1-p), exactly
as `nn.Dropout`, drawing the mask as `rand >= p` in fp32 (uniform draws, about half the
cost) from the same seeded generator. CUDA's fused dropout kernel is already fast: the
swap is for CPUs only.

peft keeps a layer's dropouts in its `lora_dropout` ModuleDict (one per adapter name);
the swap finds them there. Where a peft release keeps them elsewhere nothing is swapped
and the count recorded in the manifest says so. No parameters or buffers change: the
saved adapter is the same.
"""

from __future__ import annotations

from typing import Any


def _module_class():
    import torch

    class MaskDropout(torch.nn.Module):
        def __init__(self, p: float):
            super().__init__()
            self.p = float(p)

        def forward(self, x):
            if not self.training or self.p == 0.0:
                return x
            keep = torch.rand(x.shape, device=x.device, dtype=torch.float32).ge_(self.p)
            return x * keep.to(x.dtype).mul_(1.0 / (1.0 - self.p))

        def extra_repr(self) -> str:
            return f"p={self.p}"

    return MaskDropout


def choose(configured: bool | None, device: str, dropout: float) -> tuple[bool, str]:
    if configured is False:
        return False, "off in config (train.fast_dropout): torch's nn.Dropout"
    if dropout <= 0:
        return False, "lora_dropout is 0: no mask to draw"
    if device != "cpu":
        if configured:
            from loraship.errors import ConfigError

            raise ConfigError(f"train.fast_dropout is true, but this run is on {device}, whose fused dropout is "
                              "already fast: set it to null or false")
        return False, f"{device} has a fused dropout kernel: torch's nn.Dropout"
    return True, "CPU: mask drawn as rand >= p (same distribution as nn.Dropout's bernoulli_, about half the cost)"


def swap(model: Any) -> int:
    """Replace every LoRA nn.Dropout by MaskDropout with the same p; returns how many."""
    import torch

    cls = _module_class()
    swapped = 0
    for module in model.modules():
        drops = getattr(module, "lora_dropout", None)
        if not isinstance(drops, torch.nn.ModuleDict):
            continue
        for name, drop in list(drops.items()):
            if isinstance(drop, torch.nn.Dropout) and drop.p > 0:
                replacement = cls(drop.p)
                replacement.train(drop.training)
                drops[name] = replacement
                swapped += 1
    return swapped
