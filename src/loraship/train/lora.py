"""Incremental LoRA: version N+1 trains on top of version N's adapter (peft + transformers Trainer).

Strategies (recorded in the manifest):
  continue  load the parent's adapter trainable and keep training it: every version is
            one adapter on the original base (the default).
  stack     merge the parent's adapter chain into the base, then train a fresh adapter;
            export merges the whole chain in order.
  fresh     no parent adapter: a new adapter on the base (`--fresh`).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from loraship import paths
from loraship.base import model as base_model
from loraship.config import Config
from loraship.data import prepare as data
from loraship.errors import VersionError
from loraship.store import manifest
from loraship.store.versions import Version, get
from loraship.train import completion_loss, console, hparams, replay_epochs, retention, speed
from loraship.train import device as device_mod
from loraship.train.arguments import training_arguments
from loraship.train.chat_data import encode_rows, row_lengths

CHECKPOINTS = "checkpoints"
LOSS_PNG = "loss_curve.png"
Progress = Callable[[str], None]


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _checkpoint_step(path: Path) -> int:
    try:
        return int(path.name.split("-", 1)[1])
    except (IndexError, ValueError):
        return -1


def _is_complete_checkpoint(path: Path) -> bool:
    """The Trainer writes trainer_state.json after the weights, optimizer and scheduler, so a
    checkpoint without a readable one was cut off mid-write (Ctrl-C, a kill, a full disk)."""
    import json

    try:
        return isinstance(json.loads((path / "trainer_state.json").read_text()), dict)
    except (OSError, ValueError):
        return False


def resumable_checkpoint(ckpt_dir: Path) -> Path | None:
    """The newest complete checkpoint in `ckpt_dir`, or None. Torn ones are not resumed from."""
    found = sorted((p for p in ckpt_dir.glob("checkpoint-*") if p.is_dir() and _checkpoint_step(p) >= 0),
                   key=_checkpoint_step, reverse=True)
    return next((p for p in found if _is_complete_checkpoint(p)), None)


def _discard_torn_checkpoints(ckpt_dir: Path, keep: Path | None, log: Progress) -> None:
    """Checkpoints newer than the one resumed from are incomplete: the Trainer would pick the
    newest folder (and fail on it) or rotate the good one away, so they go."""
    floor = _checkpoint_step(keep) if keep else -1
    for p in ckpt_dir.glob("checkpoint-*"):
        if p.is_dir() and _checkpoint_step(p) > floor:
            log(f"discarding {p.name}: written only in part when the run stopped")
            shutil.rmtree(p, ignore_errors=True)


def _parent_stage(version: Version) -> tuple[Version | None, dict | None]:
    parent_id = version.manifest.get("parent")
    if parent_id is None:
        return None, None
    parent = get(version.model, parent_id)
    stage = parent.stage("train")
    if not stage:
        raise VersionError(f"{version.id}'s parent {parent_id} has no trained adapter: train {parent_id} first")
    return parent, stage


def _build_peft_model(cfg: Config, version: Version, strategy: str, base, parent, parent_stage, hp, log: Progress):
    from peft import LoraConfig, PeftModel, get_peft_model

    if strategy == "continue" and parent is not None:
        log(f"continuing {parent.id}'s adapter")
        return PeftModel.from_pretrained(base, parent.path / paths.ADAPTER_DIR, is_trainable=True), [version.id]
    chain: list[str] = []
    if strategy == "stack" and parent is not None:
        for vid in parent_stage["adapter_chain"]:
            log(f"merging {vid}'s adapter into the base (stack)")
            base = PeftModel.from_pretrained(base, get(version.model, vid).path / paths.ADAPTER_DIR).merge_and_unload()
            chain.append(vid)
    lora = LoraConfig(
        r=hp["lora_r"], lora_alpha=hp["lora_alpha"], lora_dropout=hp["lora_dropout"],
        target_modules=hp["target_modules"], task_type="CAUSAL_LM",
        # An untrained LoRA (B=0) is a no-op; tests that must see the adapter ask for non-zero init.
        init_lora_weights=not cfg.train.init_lora_nonzero,
    )
    return get_peft_model(base, lora), chain + [version.id]


def _strategy(cfg: Config, version: Version) -> str:
    if version.manifest.get("parent") is None:
        return "fresh"
    return cfg.train.strategy


def _loss_curve_png(history: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(h["step"], h["loss"]) for h in history if "loss" in h]
    evals = [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    if train:
        ax.plot(*zip(*train), label="train loss")
    if evals:
        ax.plot(*zip(*evals), marker="o", label="val loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def _check_trainable(version: Version, resume: bool) -> Path:
    """The checkpoints folder, once the version is known to be ready for training."""
    if version.stage("train"):
        raise VersionError(f"{version.model} {version.id} is already trained; prepare new data for the next version")
    if not version.stage("data"):
        raise VersionError(f"{version.id} has no data yet: run `loraship data --model {version.model} FILE.jsonl`")
    ckpt_dir = version.path / CHECKPOINTS
    if ckpt_dir.exists() and any(ckpt_dir.glob("checkpoint-*")) and not resume:
        raise VersionError(
            f"{version.id} has checkpoints from an interrupted run: continue with `loraship train --resume`, "
            f"or delete {ckpt_dir} to start over"
        )
    return ckpt_dir


def _check_same_base(parent: Version | None, parent_stage: dict | None, base_path: Path, fingerprint: dict) -> None:
    if parent_stage and parent_stage["base"]["sha256"] != fingerprint["sha256"]:
        raise VersionError(
            f"{parent.id} was trained on base {parent_stage['base']['path']} (sha256 {parent_stage['base']['sha256'][:12]}), "
            f"but base_model now is {base_path} ({fingerprint['sha256'][:12]}): point base_model back, or start over with --fresh"
        )


def _choose_hparams(cfg: Config, n_rows: int, dev, parent: Version | None, parent_stage: dict | None,
                    strategy: str, log: Progress) -> tuple[dict, dict]:
    parent_lora = parent_stage["lora"] if (strategy == "continue" and parent_stage) else None
    hp, reasons = hparams.choose(cfg.train, n_rows, is_increment=parent is not None,
                                 device=dev.device, parent_lora=parent_lora, strategy=strategy,
                                 parent_learning_rate=(parent_stage or {}).get("hyperparameters", {}).get("learning_rate"))
    log(f"device: {dev.reason}")
    for k in ("lora_r", "lora_alpha", "num_train_epochs", "learning_rate", "per_device_train_batch_size",
              "gradient_accumulation_steps", "max_seq_length", "warmup_steps"):
        log(f"  {k} = {hp[k]}  ({reasons[k]})")
    return hp, reasons


def _encode(cfg: Config, tok, train_rows: list, val_rows: list, max_len: int, log: Progress):
    enc_train = encode_rows(tok, train_rows, max_len, cfg.ollama.system)
    enc_val = encode_rows(tok, val_rows, max_len, cfg.ollama.system)
    if enc_train.truncated or enc_val.truncated:
        log(f"truncated {enc_train.truncated + enc_val.truncated} rows longer than {max_len} tokens")
    return enc_train, enc_val


def _load_for_training(cfg: Config, version: Version, base_path: Path, dev, strategy: str, parent, parent_stage,
                       hp: dict, enc_train, log: Progress):
    """The peft model (base + adapter chain), its retention keeper and the speed plan."""
    from transformers import set_seed

    quant = _qlora_config(dev) if cfg.train.load_in_4bit else None
    model = base_model.load_model(base_path, dev.torch_dtype(), cfg.train.trust_remote_code, quant)
    # The adapter's initial weights are drawn here, before the Trainer seeds anything: without
    # this, two runs with the same recorded seed started from unrelated adapters.
    set_seed(hp["seed"])
    hp["target_modules"] = hparams.resolve_targets(model, hp["target_modules"])
    model, chain = _build_peft_model(cfg, version, strategy, model, parent, parent_stage, hp, log)
    keeper = retention.for_version(model, hp, strategy, parent.path / paths.ADAPTER_DIR if parent else None)
    fast = speed.plan(cfg.train, model, dev.device, dev.torch_dtype().itemsize, hp, *row_lengths(enc_train))
    log(f"  padding_free = {fast.padding_free}  ({fast.padding_free_reason})")
    log(f"  gradient_checkpointing = {fast.checkpointing.enabled}  ({fast.checkpointing.reason})")
    log(f"  liger_kernel = {fast.liger}  ({fast.liger_reason})")
    log(f"  fast_dropout = {fast.fast_dropout}  ({fast.fast_dropout_reason})")
    if hp["gradient_accumulation_steps"] > 1:
        log(f"  micro_batch = {fast.micro_batch} x {fast.accumulation}  ({fast.fold_reason})")
    return model, chain, keeper, fast


def _run(trainer: Any, ckpt_dir: Path, resume: bool, seed: int, log: Progress) -> Any:
    import torch

    torch.manual_seed(seed)
    start_from = None
    if resume:
        start_from = resumable_checkpoint(ckpt_dir)
        _discard_torn_checkpoints(ckpt_dir, start_from, log)
        log(f"resuming from {start_from.name}" if start_from else "no complete checkpoint to resume from: "
            "training from the first step")
    return trainer.train(resume_from_checkpoint=str(start_from) if start_from else None)


def _save_adapter(trainer: Any, keeper: Any, tok: Any, version: Version, ckpt_dir: Path) -> bool:
    """Write the adapter and rename it into place; False on the ranks that do not write."""
    tmp_adapter = version.path / f"{paths.TMP_PREFIX}{paths.ADAPTER_DIR}"
    if is_main_process():
        shutil.rmtree(tmp_adapter, ignore_errors=True)
    if keeper is not None:
        keeper.detach(trainer.model)  # the parent's adapter is not part of this version
    # Every rank takes part: under FSDP the full adapter state dict is gathered from all of them
    # (a rank-0-only save_pretrained would hang or write a shard); only the main process writes.
    trainer.save_model(str(tmp_adapter))
    if not is_main_process():
        return False
    (tmp_adapter / "training_args.bin").unlink(missing_ok=True)  # a pickle; the manifest records the arguments
    tok.save_pretrained(tmp_adapter)
    _loss_curve_png(trainer.state.log_history, version.path / LOSS_PNG)
    # An adapter folder without a train stage is what an earlier run killed between this rename
    # and the manifest write left behind: not a finished result, and in the way of the rename.
    shutil.rmtree(version.path / paths.ADAPTER_DIR, ignore_errors=True)
    os.replace(tmp_adapter, version.path / paths.ADAPTER_DIR)
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    return True


def _record(cfg: Config, strategy: str, parent, chain, fingerprint, dev, fast, hp, reasons, enc_train, enc_val,
            trainer, meter, result, has_val: bool, started: float) -> dict[str, Any]:
    """The manifest's `stages.train`."""
    history, state = trainer.state.log_history, trainer.state
    evals = [h["eval_loss"] for h in history if "eval_loss" in h]
    return {
        "strategy": strategy,
        "parent_adapter": parent.id if parent else None,
        "adapter_chain": chain,
        "base": fingerprint,
        "device": {"device": dev.device, "dtype": dev.dtype, "reason": dev.reason,
                   "gradient_checkpointing": fast.checkpointing.enabled,
                   "load_in_4bit": cfg.train.load_in_4bit, "world_size": int(os.environ.get("WORLD_SIZE", "1"))},
        "speed": fast.record(),  # padding-free, checkpointing estimate, Liger, logging interval, with reasons
        "hyperparameters": {k: v for k, v in hp.items()},
        "reasons": reasons,
        "increment": retention.manifest_record(hp, reasons),
        "lora": {"lora_r": hp["lora_r"], "lora_alpha": hp["lora_alpha"], "target_modules": hp["target_modules"]},
        "system_prompt": cfg.ollama.system,
        "rows": {"train": len(enc_train.input_ids), "val": len(enc_val.input_ids),
                 "truncated": enc_train.truncated + enc_val.truncated,
                 "dropped_no_answer": enc_train.dropped_no_answer + enc_val.dropped_no_answer},
        "train_label_tokens": enc_train.n_label_tokens,
        "train_tokens": int(state.num_input_tokens_seen),
        "tokens_per_s": round(state.num_input_tokens_seen / max(meter.seconds, 1e-9), 1),
        "global_steps": state.global_step,
        "epochs_run": state.epoch,
        "early_stopped": bool(has_val and state.epoch is not None and state.epoch < hp["num_train_epochs"] - 1e-6),
        "best_eval_loss": min(evals) if evals else None,
        "final_train_loss": result.training_loss,
        "loss_curve": [{k: h[k] for k in ("step", "epoch", "loss", "eval_loss") if k in h} for h in history
                       if "loss" in h or "eval_loss" in h],
        "runtime_s": round(time.time() - started, 1),
        "finished_at": manifest.now_iso(),
    }


def train_version(
    cfg: Config, version: Version, *, resume: bool = False, log: Progress = lambda s: None,
    progress: console.Progress | None = None,
) -> dict[str, Any]:
    """Train `version` (whose data stage is done). Returns the manifest's `stages.train` record.

    The adapter is written to a temp folder and renamed into place; until then the
    version has no `stages.train` and nothing looks finished. Checkpoints stay in
    `checkpoints/` so `--resume` can continue after an interrupt.
    """
    from transformers import EarlyStoppingCallback, Trainer, TrainerCallback

    ckpt_dir = _check_trainable(version, resume)
    started = time.time()
    dev = device_mod.choose(cfg.train.device, cfg.train.dtype)
    base_path = base_model.resolve(cfg)
    fingerprint = base_model.fingerprint(base_path)
    parent, parent_stage = _parent_stage(version)
    _check_same_base(parent, parent_stage, base_path, fingerprint)
    strategy = _strategy(cfg, version)
    data_dir = version.path / paths.DATA_DIR
    train_rows = data.load_rows(data_dir / "incremental_replay_final.jsonl")
    val_rows = data.load_rows(data_dir / "val.jsonl")
    hp, reasons = _choose_hparams(cfg, len(train_rows), dev, parent, parent_stage, strategy, log)
    tok = base_model.load_tokenizer(base_path, cfg.train.trust_remote_code)
    enc_train, enc_val = _encode(cfg, tok, train_rows, val_rows, hp["max_seq_length"], log)
    model, chain, keeper, fast = _load_for_training(cfg, version, base_path, dev, strategy, parent, parent_stage,
                                                    hp, enc_train, log)

    train_ds = _items(enc_train)
    draws = replay_epochs.draws_for(data_dir, version.stage("data"), train_rows, hp["num_train_epochs"])
    if draws is not None:
        later = [_items(encode_rows(tok, rows, hp["max_seq_length"], cfg.ollama.system)) for rows in draws.per_epoch[1:]]
        train_ds = replay_epochs.EpochReplayDataset(train_ds, later)
        planned = draws.record([])
        log(f"replay drawn again each epoch: {planned['epochs'][0]['rows']} rows per epoch from {planned['pool_rows']}"
            f" eligible; {planned['distinct_rows_replayed']} distinct rows over {len(draws.per_epoch)} epochs")
    val_ds = [{"input_ids": i, "labels": lab} for i, lab in zip(enc_val.input_ids, enc_val.labels)]
    has_val = len(val_ds) > 0
    args = training_arguments(cfg, dev, hp, fast, ckpt_dir, has_val)
    meter = _token_meter(TrainerCallback)
    # After the meter, whose on_log adds tokens/s to the logs the console shows and keeps.
    callbacks = [meter, console.console_callback(TrainerCallback, version.path / console.TRAIN_LOG, log, progress)]
    if draws is not None:
        callbacks.append(replay_epochs.epoch_callback(TrainerCallback, train_ds))
    if has_val and cfg.train.early_stopping_patience > 0:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=cfg.train.early_stopping_patience))
    trainer = completion_loss.trainer_class(Trainer, keeper)(
        model=model, args=args, train_dataset=train_ds, eval_dataset=val_ds if has_val else None,
        data_collator=fast.collator(tok.pad_token_id), callbacks=callbacks,
    )
    console.quiet_trainer(trainer)
    result = _run(trainer, ckpt_dir, resume, hp["seed"], log)
    if not _save_adapter(trainer, keeper, tok, version, ckpt_dir):
        return {}
    record = _record(cfg, strategy, parent, chain, fingerprint, dev, fast, hp, reasons, enc_train, enc_val,
                     trainer, meter, result, has_val, started)
    if draws is not None:
        record["replay_each_epoch"] = draws.record(train_ds.served)
    return record


def _items(enc) -> list[dict]:
    return [{"input_ids": i, "labels": lab, "replay": r} for i, lab, r in zip(enc.input_ids, enc.labels, enc.replay)]


def _token_meter(callback_base):
    """Time spent inside optimizer steps (not evaluation or checkpointing) and tokens/s in the logs.

    Tokens are the Trainer's own non-padding count (`include_num_input_tokens_seen`),
    summed over all processes.
    """

    class TokenMeter(callback_base):
        def __init__(self):
            self.seconds = 0.0
            self._t0 = None

        def on_step_begin(self, args, state, control, **kw):
            self._t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            if self._t0 is not None:
                self.seconds += time.perf_counter() - self._t0

        def on_log(self, args, state, control, logs=None, **kw):
            if logs is not None and self.seconds > 0:
                logs["tokens_per_s"] = round(state.num_input_tokens_seen / self.seconds, 1)

    return TokenMeter()


def _qlora_config(dev):
    from loraship.errors import ConfigError

    if dev.device != "cuda":
        raise ConfigError("train.load_in_4bit (QLoRA) needs CUDA; this machine trains on " + dev.device)
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ConfigError("train.load_in_4bit needs bitsandbytes: pip install bitsandbytes") from None
    import torch
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                              bnb_4bit_compute_dtype=torch.bfloat16, bnb_4bit_use_double_quant=True)
