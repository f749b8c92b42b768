"""Apply a version's adapter chain to the base and merge it, checking logits before and after."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from loraship.errors import ExportError

PROBES = [
    "The quick brown fox jumps over the lazy dog.",
    "Question: what is 2 + 2?\nAnswer:",
    "def add(a, b):\n    return a + b",
]


def check_adapter(adapter_dir: Path) -> None:
    """A missing or corrupt adapter is named before any model is loaded."""
    import json

    cfg = adapter_dir / "adapter_config.json"
    weights = adapter_dir / "adapter_model.safetensors"
    if not cfg.exists() or not weights.exists():
        raise ExportError(f"adapter {adapter_dir} is incomplete (needs adapter_config.json and adapter_model.safetensors)")
    try:
        json.loads(cfg.read_text(encoding="utf-8"))
        from safetensors import safe_open

        with safe_open(str(weights), framework="pt") as f:
            if not list(f.keys()):
                raise ExportError(f"adapter {weights} holds no tensors")
    except ExportError:
        raise
    except Exception as e:  # safetensors raises its own error types for truncated headers
        raise ExportError(f"adapter {adapter_dir} is corrupt: {type(e).__name__}: {str(e).splitlines()[0]}") from None


def _logits(model: Any, tok: Any) -> list[Any]:
    """Each probe's logits, from one batched forward pass (right-padded: causal attention
    keeps a row's real positions blind to the padding after them)."""
    import torch

    rows = [tok(text, add_special_tokens=False)["input_ids"] for text in PROBES]
    width = max(map(len, rows))
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows], device=model.device)
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=model.device)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits.float().cpu()
    return [logits[i, :len(r)] for i, r in enumerate(rows)]


def merge_chain(
    base: Any, tok: Any, adapters: list[Path], tolerance: float, log: Callable[[str], None] = lambda s: None
) -> tuple[Any, dict[str, Any]]:
    """Merge each adapter in order; the last merge is checked against base+adapter logits."""
    from peft import PeftModel

    model = base
    max_diff = 0.0
    for i, adapter in enumerate(adapters):
        check_adapter(adapter)
        peft_model = PeftModel.from_pretrained(model, adapter)
        peft_model.eval()
        before = _logits(peft_model, tok)
        model = peft_model.merge_and_unload()
        model.eval()
        after = _logits(model, tok)
        diff = max(float((a - b).abs().max()) for a, b in zip(before, after))
        log(f"merged adapter {i + 1}/{len(adapters)}: max |logit diff| {diff:.2e}")
        max_diff = max(max_diff, diff)
        if diff > tolerance:
            raise ExportError(
                f"merged logits differ from base+adapter by {diff:.3g} (> {tolerance}) for {adapter}: "
                "the merge is not faithful; check the precision the base was loaded in"
            )
    return model, {"adapters": [str(a) for a in adapters], "max_logit_diff": max_diff, "tolerance": tolerance,
                   "probes": len(PROBES)}
