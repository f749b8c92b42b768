"""Completion-only loss that only projects answer positions onto the vocabulary.

Loss is computed on the assistant's tokens only, so the logits of every prompt and
padding position are thrown away. Asking the model for the answer positions alone
(`logits_to_keep`) skips the largest matmul of a small model — hidden x 50k-vocab —
on most tokens, and its activation memory, for the same loss.

transformers' causal-LM heads take `logits_to_keep` as an int or a 1-D tensor of
positions (every release we support); newer releases also take a boolean mask of the
batch's shape, which keeps exactly the answer tokens of each row. `position_mode`
probes the model once and picks the mask where it works, else the 1-D positions that
any row of the batch needs (the union: a few more logits, the same loss).
"""

from __future__ import annotations

import inspect
from typing import Any

MASK = "mask"  # 2-D boolean mask: exactly each row's answer positions
POSITIONS = "positions"  # 1-D union of answer positions across the batch
FULL = "full"  # the model takes no logits_to_keep: the Trainer's own loss

_probed: dict[int, str] = {}


def _base(model: Any) -> Any:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def supports_position_mask(model: Any) -> bool:
    """True when the model's forward takes `logits_to_keep` at all."""
    return "logits_to_keep" in inspect.signature(_base(model).forward).parameters


def position_mode(model: Any) -> str:
    """MASK when this model's forward accepts a boolean `logits_to_keep`, else POSITIONS (or FULL).

    The probe is a 2-token forward pass without gradients, once per model class: a
    release that predates boolean masks raises (TypeError/IndexError) or returns the
    wrong shape, and we fall back to positions.
    """
    if not supports_position_mask(model):
        return FULL
    key = id(type(_base(model)))
    if key not in _probed:
        _probed[key] = _probe_mask(model)
    return _probed[key]


def _probe_mask(model: Any) -> str:
    import torch

    device = next(_base(model).parameters()).device
    ids = torch.zeros((1, 2), dtype=torch.long, device=device)
    keep = torch.tensor([[True, False]], device=device)
    try:
        with torch.no_grad():
            out = model(input_ids=ids, attention_mask=torch.ones_like(ids), logits_to_keep=keep)
    except (TypeError, IndexError, RuntimeError, ValueError):
        return POSITIONS
    return MASK if tuple(out.logits.shape[:-1]) == (1,) else POSITIONS


def answer_only_loss(model: Any, inputs: dict, num_items_in_batch: Any = None,
                     mode: str | None = None) -> tuple[Any, Any]:
    """Mean cross-entropy over label tokens; equal to the model's own shifted-label loss.

    Returns (loss, outputs) where outputs.logits holds one row per answer token, in
    row-major order (the order of `targets[keep]`), whichever mode was used.
    """
    import torch
    import torch.nn.functional as F

    mode = mode or position_mode(model)
    labels = inputs["labels"]
    targets = labels[:, 1:]
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = targets.ne(-100)  # position t predicts token t+1
    if mode == MASK:
        out = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], logits_to_keep=keep)
        logits = out.logits
    else:
        positions = keep.any(dim=0).nonzero(as_tuple=True)[0]  # sorted, so row-major order is kept
        out = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                    logits_to_keep=positions)
        logits = out.logits[keep[:, positions]]
        out.logits = logits
    loss = F.cross_entropy(logits.float(), targets[keep[:, :-1]], reduction="sum")
    denominator = num_items_in_batch if num_items_in_batch is not None else keep.sum().clamp(min=1)
    return loss / denominator, out


def trainer_class(base: type) -> type:
    class CompletionOnlyTrainer(base):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            mode = position_mode(self.accelerator.unwrap_model(model))
            if mode == FULL:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            loss, out = answer_only_loss(model, inputs, num_items_in_batch, mode)
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                # num_items_in_batch counts every process's tokens and DDP averages gradients:
                # scale back, as Trainer.compute_loss does for models that take loss kwargs.
                loss = loss * self.accelerator.num_processes
            return (loss, out) if return_outputs else loss

    return CompletionOnlyTrainer
