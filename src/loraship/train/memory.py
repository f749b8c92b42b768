"""Will the largest training batch fit without activation checkpointing? An estimate, and the choice.

Checkpointing trades memory for time: it keeps only each layer's input and recomputes
the layer in the backward pass, about a third more compute (measured on an H200: 17.4k
-> 12.5k tokens/s). So it is switched on only when the estimate says the batch does not
fit in the memory there is; `train.gradient_checkpointing` overrides the choice.

The estimate counts what a LoRA step keeps alive in a Llama-shaped decoder:
  weights       every base parameter in the training dtype;
  adapter       LoRA parameters in fp32 with their gradient and two AdamW moments;
  activations   per token and layer, the tensors autograd saves: the norms' inputs and
                outputs, q/k/v/o, the attention output, the MLP's gate/up/act/product
                (about 10 x hidden + 2 x kv + 5 x intermediate), plus a dropout copy of each
                LoRA input when lora_dropout > 0 (peft drops out a copy per projection);
                eager attention adds heads x length^2 scores per row;
  logits        the tokens the loss projects onto the vocabulary (answer tokens only with
                loraship's loss), in the training dtype plus the fp32 copy and its gradient.
Checked against a measured peak (0.5B shape, batch 16 x 1024 tokens, bf16: 37.9 GB without
checkpointing, 10.6 GB with): the estimate errs on the high side, which is the safe side.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any

HEADROOM = 0.85  # of the free memory: allocator fragmentation, CUDA context, evaluation
GIB = 1 << 30


@dataclass(frozen=True)
class Shape:
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int

    @classmethod
    def of(cls, config: Any) -> Shape:
        cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
        heads = cfg.num_attention_heads
        return cls(hidden=cfg.hidden_size, intermediate=getattr(cfg, "intermediate_size", 4 * cfg.hidden_size),
                   layers=cfg.num_hidden_layers, heads=heads,
                   kv_heads=getattr(cfg, "num_key_value_heads", None) or heads, vocab=cfg.vocab_size)


@dataclass(frozen=True)
class Batch:
    """The largest batch training will see, in tokens."""

    rows: int  # rows in it
    tokens: int  # token slots computed (padding included when batches are padded)
    longest: int  # its longest row (attention is per row)
    loss_tokens: int  # tokens projected onto the vocabulary


def largest_batch(lengths: list[int], loss_lengths: list[int], batch_size: int, padded: bool) -> Batch:
    """Worst case over any sampling order: the `batch_size` longest rows together."""
    rows = min(batch_size, len(lengths)) or 1
    longest_rows = sorted(lengths, reverse=True)[:rows] or [1]
    tokens = rows * longest_rows[0] if padded else sum(longest_rows)
    return Batch(rows=rows, tokens=tokens, longest=longest_rows[0],
                 loss_tokens=sum(sorted(loss_lengths, reverse=True)[:rows]))


def _activation_elements_per_token_layer(s: Shape, lora_dropout: bool) -> int:
    kv = s.hidden // s.heads * s.kv_heads
    base = 10 * s.hidden + 2 * kv + 5 * s.intermediate
    dropout_copies = (6 * s.hidden + s.intermediate) if lora_dropout else 0
    return base + dropout_copies


def estimate(shape: Shape, batch: Batch, *, n_params: int, n_lora_params: int, dtype_bytes: int,
             lora_dropout: bool, eager_attention: bool, checkpointing: bool) -> dict[str, int]:
    """Peak bytes of one training step, by part (see the module docstring)."""
    per_layer = _activation_elements_per_token_layer(shape, lora_dropout) * batch.tokens * dtype_bytes
    scores = shape.heads * batch.longest ** 2 * batch.rows * (dtype_bytes + 4) if eager_attention else 0
    if checkpointing:  # every layer's input, plus one layer recomputed at a time
        activations = shape.layers * shape.hidden * batch.tokens * dtype_bytes + per_layer + scores
    else:
        activations = shape.layers * (per_layer + scores)
    parts = {
        "weights": n_params * dtype_bytes,
        "adapter": n_lora_params * 16,
        "activations": activations,
        "logits": batch.loss_tokens * shape.vocab * (dtype_bytes + 8),
    }
    parts["total"] = sum(parts.values())
    return parts


def available_bytes(device: str) -> tuple[int | None, str]:
    """(bytes free for training, where the number comes from); None when it cannot be told."""
    if device == "cuda":
        import torch

        free, _ = torch.cuda.mem_get_info()
        return free, "torch.cuda.mem_get_info free"
    if device == "cpu":
        try:
            return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "available system memory"
        except (ValueError, OSError, AttributeError):
            return None, "system memory unknown on this OS"
    return None, f"no memory query for {device}"


@dataclass(frozen=True)
class CheckpointingChoice:
    enabled: bool
    reason: str
    estimate_gib: float | None = None  # without checkpointing
    estimate_with_gib: float | None = None
    budget_gib: float | None = None

    def record(self) -> dict:
        return asdict(self)


def choose_checkpointing(configured: bool | None, without: dict[str, int] | None, with_: dict[str, int] | None,
                         free: int | None, source: str = "") -> CheckpointingChoice:
    """Checkpointing only when the batch does not fit `free` x HEADROOM without it."""
    gib = (lambda b: round(b / GIB, 2)) if without else (lambda b: None)
    est, est_with = (gib(without["total"]), gib(with_["total"])) if without and with_ else (None, None)
    budget = round(free * HEADROOM / GIB, 2) if free else None
    if configured is not None:
        return CheckpointingChoice(configured, "set in config (train.gradient_checkpointing)", est, est_with, budget)
    if without is None or free is None:
        return CheckpointingChoice(False, f"no estimate ({source or 'unknown memory'}): off, it only costs time",
                                   est, est_with, budget)
    if without["total"] <= free * HEADROOM:
        return CheckpointingChoice(False, f"largest batch needs ~{est} GiB, fits {budget} GiB "
                                          f"({HEADROOM:.0%} of {source}): off, no recompute", est, est_with, budget)
    return CheckpointingChoice(True, f"largest batch needs ~{est} GiB without checkpointing, more than {budget} GiB "
                                     f"({HEADROOM:.0%} of {source}); ~{est_with} GiB with it: on", est, est_with, budget)
