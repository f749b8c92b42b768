"""Keeping the parent's knowledge while an increment learns new rows.

Replay (data.replay_ratio) mixes the parent's training rows into the increment's data.
On top of it, `train.increment_method` adds loss terms that hold the new version near
its parent (the settings and why are in train/hparams.py and in the manifest):

  replay      cross-entropy on new + replayed rows, nothing else.
  distill     + distill_weight * KL(parent || new) over the answer tokens of replayed
              rows: the new version keeps the parent's whole next-token distribution on
              old material, not just its argmax (learning without forgetting, Li & Hoiem
              2016; logit replay as in DER++, Buzzega et al. 2020). Summed over replayed
              answer tokens and divided by the same token count as the cross-entropy, so
              each replayed token costs CE + distill_weight * KL.
  l2          + l2_weight / 2 * ||theta - theta_parent||^2 over the adapter's weights
              (L2-SP, Li et al. 2018): every old fact, replayed or not, is held by the
              pull. Strategy continue only (a stacked adapter starts from zero, not from
              the parent's weights).
  distill+l2  both.

The parent is the same base with the parent's adapter: for `continue`, peft holds the
parent's adapter as a second, frozen adapter on the one base model (`load_adapter`) and
`set_adapter` switches to it for the no-grad teacher pass; for `stack` the parent chain
is merged into the base, so the parent is the model with the new adapter disabled. No
second model is loaded either way.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from loraship.errors import ConfigError, LorashipError, VersionError

PARENT = "parent"  # the frozen parent adapter's name inside the PeftModel
METHODS = ("replay", "distill", "l2", "distill+l2")
REPLAY_KEY = "replay"  # per-token mask in a batch: True on every token of a replayed row


@dataclass(frozen=True)
class Settings:
    method: str
    distill_weight: float
    l2_weight: float

    @property
    def distill(self) -> bool:
        return self.distill_weight > 0

    @property
    def l2(self) -> bool:
        return self.l2_weight > 0

    @property
    def active(self) -> bool:
        return self.distill or self.l2

    def record(self) -> dict[str, Any]:
        return asdict(self)


def check_method(method: str, strategy: str) -> None:
    if method not in METHODS:
        raise ConfigError(f"config key 'train.increment_method' must be one of {', '.join(METHODS)}, got {method!r}")
    if "l2" in method.split("+") and strategy != "continue":
        raise ConfigError(f"train.increment_method {method!r} pulls toward the parent adapter's weights, which only "
                          f"strategy continue trains further; use increment_method distill or replay with strategy {strategy}")


def uses(method: str) -> tuple[bool, bool]:
    """(distill, l2) for a method name."""
    parts = method.split("+")
    return "distill" in parts, "l2" in parts


def answer_mask(labels):
    """Positions whose logits predict an answer token (position t predicts token t+1)."""
    import torch

    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:].ne(-100)
    return keep


def kl_sum(student_logits, parent_logits):
    """Sum over positions of KL(parent || student), in fp32; zero when the two agree."""
    import torch.nn.functional as F

    s = F.log_softmax(student_logits.float(), dim=-1)
    p = F.log_softmax(parent_logits.float(), dim=-1)
    return F.kl_div(s, p, log_target=True, reduction="sum")


def l2_distance(pairs) -> Any:
    """1/2 * sum of squared differences over (trainable, anchor) parameter pairs."""
    total = None
    for p, anchor in pairs:
        d = (p - anchor.detach()).pow(2).sum()
        total = d if total is None else total + d
    return 0.5 * total


class Retention:
    """The extra loss terms of one increment's training run, bound to its PeftModel."""

    def __init__(self, model: Any, settings: Settings, parent: str):
        self.settings = settings
        self.parent = parent  # "adapter": the frozen PARENT adapter; "base": adapters disabled
        self.student = model.active_adapter
        self.pairs = self._anchor_pairs(model) if settings.l2 else []

    @classmethod
    def attach(cls, model: Any, settings: Settings, strategy: str, parent_adapter: Path | None) -> Retention | None:
        """Load what the terms need onto `model` (the parent adapter for continue); None when nothing is on."""
        if not settings.active:
            return None
        if strategy == "continue":
            if parent_adapter is None:
                raise VersionError("train.increment_method needs the parent's adapter, and this version has none")
            model.load_adapter(str(parent_adapter), adapter_name=PARENT, is_trainable=False)
            return cls(model, settings, "adapter")
        if settings.l2:
            check_method(settings.method, strategy)
        return cls(model, settings, "base")

    def _anchor_pairs(self, model: Any) -> list[tuple[Any, Any]]:
        params = dict(model.named_parameters())
        pairs = []
        for name, p in params.items():
            if not p.requires_grad:
                continue
            anchor = params.get(name.replace(f".{self.student}.", f".{PARENT}."))
            if anchor is None or anchor is p:
                raise LorashipError(f"no parent weight for {name}: the L2 pull needs the parent's adapter loaded as {PARENT!r}")
            pairs.append((p, anchor))
        return pairs

    def detach(self, model: Any) -> None:
        """Drop the parent adapter so that only the new version's adapter is saved."""
        if self.parent == "adapter" and PARENT in model.peft_config:
            model.delete_adapter(PARENT)

    @contextmanager
    def parent_active(self, model: Any):
        """The parent's function, without dropout and without gradients."""
        import torch

        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                if self.parent == "base":
                    with model.disable_adapter():
                        yield
                else:
                    model.set_adapter(PARENT, inference_mode=True)
                    try:
                        yield
                    finally:
                        model.set_adapter(self.student)  # the student trainable again
        finally:
            model.train(was_training)

    def l2_term(self):
        return self.settings.l2_weight * l2_distance(self.pairs) if self.pairs else None

    def distill_term(self, model: Any, inputs: dict, student_logits, run_model) -> Any:
        """distill_weight * sum of KL over replayed answer tokens (None when the batch has none).

        `student_logits` are the answer positions' logits in row-major order of the
        answer mask; `run_model(model, inputs, mask)` returns the logits at `mask` the
        same way (completion_loss's forward), so any batch layout works: padded rows
        or one packed row with position_ids, as long as the collator carries the mask.
        """
        if REPLAY_KEY not in inputs:
            raise LorashipError(f"the batch has no {REPLAY_KEY!r} mask: the collator must carry each row's "
                                "origin for distillation to find the replayed rows")
        keep = answer_mask(inputs["labels"])
        replay = inputs[REPLAY_KEY].bool() & keep
        if not replay.any():
            return None
        sub, rows = _rows_with(inputs, replay)
        with self.parent_active(model):
            parent_logits = run_model(model, sub, replay[rows])
        return self.settings.distill_weight * kl_sum(student_logits[replay[keep]], parent_logits)


def _rows_with(inputs: dict, replay) -> tuple[dict, Any]:
    """Only the batch rows that hold replayed tokens (a packed batch is one row: all of it)."""
    rows = replay.any(dim=1)
    n = replay.shape[0]
    sub = {k: (v[rows] if hasattr(v, "shape") and v.dim() >= 1 and v.shape[0] == n else v) for k, v in inputs.items()}
    return sub, rows


def for_version(model: Any, hp: dict, strategy: str, parent_adapter: Path | None) -> Retention | None:
    """The retention terms an increment trains with (None for a first version or method replay)."""
    if not hp.get("increment_method"):
        return None
    settings = Settings(hp["increment_method"], float(hp["distill_weight"]), float(hp["l2_weight"]))
    return Retention.attach(model, settings, strategy, parent_adapter)


def manifest_record(hp: dict, reasons: dict) -> dict[str, Any] | None:
    """What the manifest says about how this increment kept its parent's knowledge, and why."""
    if not hp.get("increment_method"):
        return None
    return {"method": hp["increment_method"], "distill_weight": hp["distill_weight"], "l2_weight": hp["l2_weight"],
            "learning_rate": hp["learning_rate"], "num_train_epochs": hp["num_train_epochs"],
            "reason": reasons["increment_method"],
            "reasons": {k: reasons[k] for k in ("distill_weight", "l2_weight", "learning_rate", "num_train_epochs")}}
