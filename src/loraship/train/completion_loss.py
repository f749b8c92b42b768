"""Completion-only loss that only projects answer positions onto the vocabulary.

Loss is computed on the assistant's tokens only, so the logits of every prompt and
padding position are thrown away. Asking the model for the answer positions alone
(`logits_to_keep` with a boolean mask) skips the largest matmul of a small model —
hidden x 50k-vocab — on most tokens, and its activation memory, for the same loss.
"""

from __future__ import annotations

import inspect
from typing import Any


def supports_position_mask(model: Any) -> bool:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters


def answer_only_loss(model: Any, inputs: dict, num_items_in_batch: Any = None) -> tuple[Any, Any]:
    """Mean cross-entropy over label tokens; equal to the model's own shifted-label loss."""
    import torch
    import torch.nn.functional as F

    labels = inputs["labels"]
    targets = labels[:, 1:]
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = targets.ne(-100)  # position t predicts token t+1
    out = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], logits_to_keep=keep)
    loss = F.cross_entropy(out.logits.float(), targets[keep[:, :-1]], reduction="sum")
    denominator = num_items_in_batch if num_items_in_batch is not None else keep.sum().clamp(min=1)
    return loss / denominator, out


def trainer_class(base: type) -> type:
    class CompletionOnlyTrainer(base):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if not supports_position_mask(self.accelerator.unwrap_model(model)):
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            loss, out = answer_only_loss(model, inputs, num_items_in_batch)
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                # num_items_in_batch counts every process's tokens and DDP averages gradients:
                # scale back, as Trainer.compute_loss does for models that take loss kwargs.
                loss = loss * self.accelerator.num_processes
            return (loss, out) if return_outputs else loss

    return CompletionOnlyTrainer
