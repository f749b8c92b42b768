"""The TrainingArguments of a version's run, from its hyperparameters, device and speed plan."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from loraship.config import Config


def checkpointing_argument(training_arguments: type, enabled: bool) -> dict[str, bool]:
    """The TrainingArguments keyword for activation (gradient) checkpointing.

    Newer transformers name it `activation_checkpointing`; releases up to at least 5.17
    (stock CUDA images) only know `gradient_checkpointing`. Same switch, either name.
    """
    import dataclasses

    names = {f.name for f in dataclasses.fields(training_arguments)}
    key = "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"
    return {key: enabled}


def training_arguments(cfg: Config, dev: Any, hp: dict[str, Any], fast: Any, ckpt_dir: Path, has_val: bool) -> Any:
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=str(ckpt_dir),
        num_train_epochs=hp["num_train_epochs"],
        # The speed plan may run an optimizer step's rows as one micro-batch (same effective batch).
        per_device_train_batch_size=fast.micro_batch,
        per_device_eval_batch_size=fast.micro_batch,
        gradient_accumulation_steps=fast.accumulation,
        learning_rate=hp["learning_rate"],
        lr_scheduler_type=hp["lr_scheduler_type"],
        warmup_steps=hp["warmup_steps"],
        weight_decay=hp["weight_decay"],
        neftune_noise_alpha=hp.get("neftune_noise_alpha") or None,
        eval_strategy="epoch" if has_val else "no",
        save_strategy="epoch",
        save_total_limit=2,
        load_best_model_at_end=has_val and cfg.train.load_best_epoch,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        seed=hp["seed"],
        data_seed=hp["seed"],
        bf16=dev.dtype == "bfloat16",
        fp16=dev.dtype == "float16",
        use_cpu=dev.device == "cpu",
        **checkpointing_argument(TrainingArguments, fast.checkpointing.enabled),
        # Batches of similar length: dynamic padding then wastes almost nothing.
        train_sampling_strategy="group_by_length" if cfg.train.group_by_length else "random",
        remove_unused_columns=False,
        report_to=[],
        dataloader_num_workers=0,
        ddp_backend="gloo" if dev.device == "cpu" and int(os.environ.get("WORLD_SIZE", "1")) > 1 else None,
        ddp_find_unused_parameters=False,
        disable_tqdm=True,  # console.py draws the one bar
        **fast.training_arguments(),  # logging_steps, tokens counted, Liger
        prediction_loss_only=True,  # evaluation needs the loss only; answer-only logits have no fixed shape
    )
