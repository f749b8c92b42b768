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


NOT_MODEL_INPUTS = ("labels", "replay")  # the loss's own keys; everything else goes to forward


def model_inputs(inputs: dict) -> dict:
    """The batch as the model's forward takes it: input_ids, attention_mask and/or
    position_ids (padding-free batches), whatever the collator produced, minus labels."""
    return {k: v for k, v in inputs.items() if k not in NOT_MODEL_INPUTS}


def logits_at(model: Any, inputs: dict, keep: Any, mode: str) -> tuple[Any, Any]:
    """Logits at the True positions of `keep`, one row per position in row-major order, and the outputs."""
    fwd = model_inputs(inputs)
    if mode == MASK:
        out = model(**fwd, logits_to_keep=keep)
        return out.logits, out
    if mode == POSITIONS:
        positions = keep.any(dim=0).nonzero(as_tuple=True)[0]  # sorted, so row-major order is kept
        out = model(**fwd, logits_to_keep=positions)
        return out.logits[keep[:, positions]], out
    out = model(**fwd)  # FULL: every position's logits
    return out.logits[keep], out


def answer_only_loss(model: Any, inputs: dict, num_items_in_batch: Any = None,
                     mode: str | None = None) -> tuple[Any, Any]:
    """Mean cross-entropy over label tokens; equal to the model's own shifted-label loss.

    Returns (loss, outputs) where outputs.logits holds one row per answer token, in
    row-major order (the order of `targets[keep]`), whichever mode was used.
    """
    import torch.nn.functional as F

    from loraship.train.retention import answer_mask

    mode = mode or position_mode(model)
    labels = inputs["labels"]
    keep = answer_mask(labels)
    logits, out = logits_at(model, inputs, keep, mode)
    out.logits = logits
    loss = F.cross_entropy(logits.float(), labels[:, 1:][keep[:, :-1]], reduction="sum")
    denominator = num_items_in_batch if num_items_in_batch is not None else keep.sum().clamp(min=1)
    return loss / denominator, out


def trainer_class(base: type, retention: Any = None) -> type:
    """The Trainer with the answer-only loss, plus the increment's retention terms (train/retention.py)."""

    class CompletionOnlyTrainer(base):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            unwrapped = self.accelerator.unwrap_model(model)
            mode = position_mode(unwrapped)
            extra = retention is not None and model.training  # eval loss stays the plain CE
            if mode == FULL and not extra:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            loss, out = answer_only_loss(model, inputs, num_items_in_batch, mode)
            if extra:
                loss = loss + self._distill(unwrapped, inputs, out.logits, num_items_in_batch, mode)
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                # num_items_in_batch counts every process's tokens and DDP averages gradients:
                # scale back, as Trainer.compute_loss does for models that take loss kwargs.
                loss = loss * self.accelerator.num_processes
            if extra and (l2 := retention.l2_term()) is not None:
                # Once per optimizer step: the Trainer does not divide a loss normalised by
                # num_items_in_batch by the accumulation steps, so this term is split here.
                loss = loss + (l2 / getattr(self, "current_gradient_accumulation_steps", 1)
                               if num_items_in_batch is not None else l2)
            return (loss, out) if return_outputs else loss

        def _distill(self, model, inputs, student_logits, num_items_in_batch, mode):
            if not retention.settings.distill:
                return 0.0
            term = retention.distill_term(model, inputs, student_logits,
                                          lambda m, batch, mask: logits_at(m, batch, mask, mode)[0])
            if term is None:
                return 0.0
            keep = inputs["labels"][:, 1:].ne(-100)
            return term / (num_items_in_batch if num_items_in_batch is not None else keep.sum().clamp(min=1))

    return CompletionOnlyTrainer
