"""How a training step runs fast on this device: padding-free batches, accumulation folded into
one micro-batch, Liger kernels, logging interval, the LoRA dropout's mask (train/lora_dropout.py).

Each choice is feature-detected, overridable in config, and recorded with its reason in
the manifest (`stages.train.speed`), like the hyperparameters.

Padding-free batches (transformers' DataCollatorWithFlattening: a batch's rows laid end to
end in one row, position_ids restarting at 0 for each) compute nothing for padding. The
attention must then stay inside each row:
  flash_attention_2/3/4  varlen kernels take the row boundaries (cu_seq_lens): each row
                         attends to itself at the cost of its own length. Padding-free pays.
  sdpa, eager            transformers (5.17 and 5.24, masking_utils.find_packed_sequence_indices)
                         builds a block-diagonal mask from the restarting position_ids:
                         correct, but attention runs over the whole flattened row and loses
                         the causal fast path, while length-grouped batches pad very little.
                         Measured on CPU (docs/benchmarks.md): no faster. Per-batch padding
                         stays the default there; `train.padding_free: true` forces it.
Liger kernels (RMSNorm, SwiGLU, RoPE as Triton kernels) need CUDA and the optional
`loraship[gpu]` extra. Its fused linear cross-entropy is left off: loraship's answer-only
loss already projects only answer tokens onto the vocabulary and returns their logits.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass
from typing import Any

from loraship.config import TrainConfig
from loraship.train import lora_dropout, memory

VARLEN_ATTENTION = ("flash_attention_2", "flash_attention_3", "flash_attention_4")
LOG_POINTS = 50  # loss-curve points per run; each log is a device sync on GPUs
LIGER_KERNELS = {"rope": True, "rms_norm": True, "swiglu": True,
                 "cross_entropy": False, "fused_linear_cross_entropy": False}


def attention_implementation(model: Any) -> str:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return str(getattr(base.config, "_attn_implementation", None) or "eager")


def choose_padding_free(configured: bool | None, attn: str) -> tuple[bool, str]:
    if configured is not None:
        return configured, "set in config (train.padding_free)"
    if attn in VARLEN_ATTENTION:
        return True, f"{attn} runs each row of a flattened batch on its own (varlen): no padding computed"
    return False, (f"{attn} attention would span the whole flattened batch (block-diagonal mask); "
                   "length-grouped per-batch padding measured as fast or faster")


def liger_model_types() -> set[str] | None:
    """Model types liger-kernel can patch, or None when it is not installed / cannot load here."""
    if importlib.util.find_spec("liger_kernel") is None:
        return None
    try:
        from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN
    except Exception:  # noqa: BLE001 - a broken install (no triton, wrong torch) must not stop training
        return None
    return set(MODEL_TYPE_TO_APPLY_LIGER_FN)


def choose_liger(configured: bool | None, device: str, model_type: str) -> tuple[bool, str]:
    if configured is False:
        return False, "off in config (train.liger_kernel)"
    if device != "cuda":
        reason = f"Liger's Triton kernels need CUDA; this run is on {device}"
        if configured:
            from loraship.errors import ConfigError

            raise ConfigError(f"train.liger_kernel is true, but {reason}: set it to null or false")
        return False, reason
    types = liger_model_types()
    if types is None:
        if configured:
            from loraship.errors import ConfigError

            raise ConfigError("train.liger_kernel is true, but liger-kernel is not installed: "
                              "pip install 'loraship[gpu]'")
        return False, "liger-kernel not installed (pip install 'loraship[gpu]')"
    if model_type not in types:
        return False, f"liger-kernel has no kernels for model type {model_type}"
    return True, "CUDA with liger-kernel installed: RMSNorm, SwiGLU and RoPE kernels"


def choose_logging_steps(configured: int | None, total_steps: int) -> tuple[int, str]:
    if configured is not None:
        return configured, "set in config (train.logging_steps)"
    steps = max(1, math.ceil(total_steps / LOG_POINTS))
    return steps, f"about {LOG_POINTS} loss points over {total_steps} steps (each log syncs the device)"


@dataclass(frozen=True)
class Plan:
    """Every speed choice of one training run, with its reason (recorded as `stages.train.speed`)."""

    padding_free: bool
    padding_free_reason: str
    attention: str
    checkpointing: memory.CheckpointingChoice
    liger: bool
    liger_reason: str
    logging_steps: int
    logging_reason: str
    fast_dropout: bool = False
    fast_dropout_reason: str = ""
    dropouts_swapped: int = 0
    micro_batch: int = 1  # rows per forward pass (per device)
    accumulation: int = 1  # forward passes per optimizer step
    fold_reason: str = ""

    def collator(self, pad_id: int) -> Any:
        from loraship.train.chat_data import FlattenCollator, PadCollator

        return FlattenCollator(self.attention in VARLEN_ATTENTION) if self.padding_free else PadCollator(pad_id)

    def training_arguments(self) -> dict[str, Any]:
        """TrainingArguments keywords (besides the checkpointing one, see arguments.checkpointing_argument)."""
        args: dict[str, Any] = {
            "logging_steps": self.logging_steps,
            # A flattened batch has no padding: every token counts, and without an
            # attention_mask the Trainer's non-padding count would guess from pad ids.
            "include_num_input_tokens_seen": "all" if self.padding_free else "non_padding",
        }
        if self.liger:
            args.update(use_liger_kernel=True, liger_kernel_config=dict(LIGER_KERNELS))
        return args

    def record(self) -> dict[str, Any]:
        return {"padding_free": self.padding_free, "padding_free_reason": self.padding_free_reason,
                "attention": self.attention, "gradient_checkpointing": self.checkpointing.record(),
                "liger_kernel": self.liger, "liger_kernel_reason": self.liger_reason,
                "logging_steps": self.logging_steps, "logging_steps_reason": self.logging_reason,
                "fast_dropout": self.fast_dropout, "fast_dropout_reason": self.fast_dropout_reason,
                "dropouts_swapped": self.dropouts_swapped, "micro_batch": self.micro_batch,
                "gradient_accumulation": self.accumulation, "fold_accumulation_reason": self.fold_reason}


def choose_fold(configured: bool | None, per_device: int, accum: int, checkpointing_configured: bool | None,
                folded_bytes: int | None, free: int | None) -> tuple[bool, str]:
    """Run an optimizer step's per_device x accum rows as one micro-batch?

    The same rows, the same loss (the Trainer normalises by the step's answer tokens either
    way) and the same optimizer steps, in fewer and larger matmuls: measured 1.09x on a CPU
    step (docs/benchmarks.md). Only where the folded batch fits without checkpointing, since
    recomputing activations costs more than accumulation does."""
    if accum <= 1:
        return False, "no gradient accumulation to fold"
    if configured is False:
        return False, "off in config (train.fold_accumulation)"
    if configured:
        return True, "set in config (train.fold_accumulation)"
    if checkpointing_configured:
        return False, "gradient checkpointing is on in config: memory-bound, micro-batches kept"
    if folded_bytes is None or free is None:
        return False, "memory unknown here: micro-batches kept"
    need, budget = round(folded_bytes / memory.GIB, 2), round(free * memory.HEADROOM / memory.GIB, 2)
    if folded_bytes > free * memory.HEADROOM:
        return False, f"{per_device * accum} rows at once need ~{need} GiB, more than {budget} GiB: micro-batches kept"
    return True, (f"{per_device} x {accum} accumulated rows run as one batch of {per_device * accum} (~{need} GiB "
                  f"fits {budget} GiB): same rows, loss and optimizer steps, larger matmuls")


def plan(cfg: TrainConfig, model: Any, device: str, dtype_bytes: int, hp: dict[str, Any],
         lengths: list[int], loss_lengths: list[int]) -> Plan:
    """Choose padding-free, micro-batch folding and checkpointing (from the memory estimate),
    Liger, the log interval and the LoRA dropout's mask (swapped in place on `model` when chosen)."""
    attn = attention_implementation(model)
    padding_free, pf_reason = choose_padding_free(cfg.padding_free, attn)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    shape = memory.Shape.of(base.config)
    n_params = sum(p.numel() for p in model.parameters())
    n_lora = sum(p.numel() for p in model.parameters() if p.requires_grad)
    common = dict(n_params=n_params - n_lora, n_lora_params=n_lora, dtype_bytes=dtype_bytes,
                  lora_dropout=hp["lora_dropout"] > 0, eager_attention=attn == "eager")
    per_device, accum = hp["per_device_train_batch_size"], hp["gradient_accumulation_steps"]
    free, source = memory.available_bytes(device)

    def need(rows: int, checkpointing: bool) -> dict[str, int]:
        batch = memory.largest_batch(lengths, loss_lengths, rows, padded=not padding_free)
        return memory.estimate(shape, batch, checkpointing=checkpointing, **common)

    folded = need(per_device * accum, False) if accum > 1 else None
    fold, fold_reason = choose_fold(cfg.fold_accumulation, per_device, accum, cfg.gradient_checkpointing,
                                    folded["total"] if folded else None, free)
    micro, steps_accum = (per_device * accum, 1) if fold else (per_device, accum)
    without = folded if fold else need(micro, False)
    ckpt = memory.choose_checkpointing(cfg.gradient_checkpointing, without, need(micro, True), free, source)
    liger, liger_reason = choose_liger(cfg.liger_kernel, device, getattr(base.config, "model_type", ""))
    steps, steps_reason = choose_logging_steps(cfg.logging_steps, hp["total_steps"])
    fast_dropout, fd_reason = lora_dropout.choose(cfg.fast_dropout, device, hp["lora_dropout"])
    swapped = lora_dropout.swap(model) if fast_dropout else 0
    if fast_dropout and not swapped:
        fast_dropout, fd_reason = False, "this peft release keeps no nn.Dropout in lora_dropout: torch's nn.Dropout"
    return Plan(padding_free, pf_reason, attn, ckpt, liger, liger_reason, steps, steps_reason,
                fast_dropout, fd_reason, swapped, micro, steps_accum, fold_reason)
