"""What a training run shows and keeps: one progress bar, one line per epoch, the full log on disk.

The Trainer's own console prints every raw log dict between progress-bar redraws. Here the
Trainer's bar and printer are switched off; this callback reports through two callables
the CLI renders — `progress(step, total, postfix)` for the bar (loss, tokens/s; the bar
adds the ETA) and `log(line)` for one line per epoch with the validation loss — and
appends every log dict to `train_log.jsonl` in the version folder.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

TRAIN_LOG = "train_log.jsonl"
Progress = Callable[[int, int, dict[str, Any]], None]


def console_callback(callback_base: type, log_path: Path, log: Callable[[str], None], progress: Progress | None):
    """A TrainerCallback (built on the class given, so transformers is imported lazily)."""

    class TrainConsole(callback_base):
        def __init__(self):
            self.postfix: dict[str, Any] = {}

        def on_train_begin(self, args, state, control, **kw):
            if progress:
                progress(state.global_step, state.max_steps, self.postfix)

        def on_step_end(self, args, state, control, **kw):
            if progress:
                progress(state.global_step, state.max_steps, self.postfix)

        def on_log(self, args, state, control, logs=None, **kw):
            if not logs or not state.is_world_process_zero:
                return
            with open(log_path, "a", encoding="utf-8") as f:
                f.write(json.dumps({"step": state.global_step, "epoch": state.epoch, **logs}) + "\n")
            if "loss" in logs:
                self.postfix["loss"] = f"{logs['loss']:.4f}"
            if "tokens_per_s" in logs:
                self.postfix["tok/s"] = f"{logs['tokens_per_s']:.0f}"
            if "eval_loss" in logs:
                epochs = args.num_train_epochs
                log(f"epoch {state.epoch:.0f}/{epochs:g}: val loss {logs['eval_loss']:.4f}"
                    + (f", train loss {self.postfix['loss']}" if "loss" in self.postfix else ""))

    return TrainConsole()


def quiet_trainer(trainer: Any) -> None:
    """Drop the Trainer's own console output (its tqdm bar and its log printer)."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    for cls in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(cls)
