"""Hyperparameters chosen from the dataset size; every one overridable, every choice explained.

The table follows common practice for small instruction datasets: fewer rows need a
smaller adapter and more passes; increments use a lower learning rate so that a new
version adjusts, rather than overwrites, what its parent learned.
"""

from __future__ import annotations

import math
from typing import Any

from loraship.config import TrainConfig

_BANDS = (  # (max rows, lora_r, lora_alpha, epochs, max_seq_length)
    (99, 8, 16, 10, 512),
    (500, 16, 32, 5, 640),
    (math.inf, 32, 64, 3, 768),
)
FIRST_LR = 2e-4
INCREMENT_LR = 1e-4
DEFAULT_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _band(n_rows: int) -> tuple[str, tuple]:
    lo = 0
    for band in _BANDS:
        if n_rows <= band[0]:
            label = f"{lo}-{band[0]} rows" if band[0] != math.inf else f">{lo - 1} rows"
            return label, band
        lo = band[0] + 1
    raise AssertionError("unreachable")


def choose(
    cfg: TrainConfig,
    n_rows: int,
    *,
    is_increment: bool,
    device: str,
    parent_lora: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], dict[str, str]]:
    """Return (values, reasons). `parent_lora` pins r/alpha/targets when continuing an adapter."""
    label, (_, r, alpha, epochs, seq) = _band(n_rows)
    values: dict[str, Any] = {}
    reasons: dict[str, str] = {}

    def pick(name: str, configured: Any, auto: Any, why: str) -> None:
        if configured is not None:
            values[name], reasons[name] = configured, "set in config or on the command line"
        else:
            values[name], reasons[name] = auto, why

    if parent_lora:
        for key in ("lora_r", "lora_alpha", "target_modules"):
            values[key] = parent_lora[key]
            reasons[key] = "inherited from the parent adapter (strategy continue trains it further)"
    else:
        pick("lora_r", cfg.lora_r, r, f"{n_rows} training rows ({label})")
        pick("lora_alpha", cfg.lora_alpha, alpha, f"2 x rank for {label}")
        pick("target_modules", cfg.target_modules, None, "every attention and MLP projection the model has")
    pick("num_train_epochs", cfg.num_train_epochs, epochs, f"{label}: small data needs more passes")
    pick("max_seq_length", cfg.max_seq_length, seq, f"{label}")
    pick("learning_rate", cfg.learning_rate, INCREMENT_LR if is_increment else FIRST_LR,
         "increment on a trained parent: lower rate keeps what it learned" if is_increment else "first version")
    per_device = 8 if device == "cuda" else 4
    per_device = min(per_device, max(1, n_rows), cfg.effective_batch_size)
    pick("per_device_train_batch_size", cfg.per_device_train_batch_size, per_device,
         f"{device}: largest batch up to {cfg.effective_batch_size} that fits comfortably")
    accum = max(1, round(cfg.effective_batch_size / values["per_device_train_batch_size"]))
    pick("gradient_accumulation_steps", cfg.gradient_accumulation_steps, accum,
         f"keeps an effective batch of {cfg.effective_batch_size}")
    steps_per_epoch = math.ceil(n_rows / (values["per_device_train_batch_size"] * values["gradient_accumulation_steps"]))
    total = steps_per_epoch * values["num_train_epochs"]
    values["warmup_steps"] = min(cfg.max_warmup_steps, math.ceil(cfg.warmup_ratio * total))
    reasons["warmup_steps"] = f"{cfg.warmup_ratio:.0%} of {total} steps, capped at {cfg.max_warmup_steps}"
    for name in ("lora_dropout", "warmup_ratio", "lr_scheduler_type", "weight_decay", "seed"):
        values[name] = getattr(cfg, name)
        reasons.setdefault(name, "config")
    values["total_steps"] = total
    return values, reasons


def resolve_targets(model: Any, wanted: list[str] | None) -> list[str]:
    """Projection names present in the model (Llama/Qwen/Mistral/Gemma share these)."""
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    targets = [t for t in (wanted or DEFAULT_TARGETS) if t in names]
    if not targets:
        from loraship.errors import ConfigError

        raise ConfigError(
            f"none of the LoRA target modules {wanted or DEFAULT_TARGETS} exist in this model: "
            "set train.target_modules to its projection names"
        )
    return targets
