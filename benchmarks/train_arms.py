"""Training arms shared by `make bench` (CPU, the demo model) and `make bench-gpu` (the 0.5B shape).

Every arm trains the same rows (the train split loraship's data stage wrote, read back
by the baselines) with the same LoRA settings, batch and learning rate, in its own process,
and reports non-padding tokens per second of optimizer-step time (the same Trainer callback
hooks in every arm), the training dtype, and peak memory.

  loraship    `loraship train` as shipped: answer-only logits, length-grouped per-batch
              padding, its own speed choices (train/speed.py), recorded in `speed`.
  plain       what a hand-written script does: Trainer + peft, DataCollatorForSeq2Seq
              padding each batch to its longest row, loss on every token, full logits;
              bf16 on CUDA, the Trainer's fp32 on CPU.
  trl         TRL's SFTTrainer: prompt-completion rows with completion_only_loss, its fused
              LM head; padding_free where the attention is flash-varlen (TRL supports
              padding-free only there), else its per-batch padding; checkpointing off
              (TRL defaults it on) when the plain arm fits without it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
MODEL = "bench"


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _config_yaml(spec: dict) -> str:
    lora = spec["lora"]
    return (f"base_model: {spec['base']}\ntrain:\n  num_train_epochs: {spec['epochs']}\n"
            f"  max_seq_length: {spec['max_seq_length']}\n  lora_r: {lora['r']}\n  lora_alpha: {lora['alpha']}\n"
            f"  lora_dropout: {lora['dropout']}\n  per_device_train_batch_size: {spec['batch']}\n"
            f"  gradient_accumulation_steps: {spec['accum']}\n  learning_rate: {spec['lr']}\n"
            "  early_stopping_patience: 0\ndata:\n  split: [0.9, 0.1, 0.0]\n")  # v1: nothing to replay


def _use_home(home: Path) -> None:
    os.environ["LORASHIP_HOME"] = str(home / "runs")
    os.environ["LORASHIP_PROJECT"] = str(home)


def prepare(spec: dict) -> dict:
    """loraship's data stage on the rows once; every arm then trains its train split."""
    from loraship import pipeline
    from loraship.store import versions

    home = Path(tempfile.mkdtemp(prefix="train-home-", dir=spec["work"]))
    (home / "train").mkdir()
    (home / "train" / f"{MODEL}.yaml").write_text(_config_yaml(spec))
    _use_home(home)
    pipeline.stage_data(MODEL, pipeline.load_config(MODEL), [Path(spec["rows_file"])], strict=False)
    train_file = versions.get(MODEL, "v1").path / "data" / "incremental_replay_final.jsonl"
    rows = [json.loads(line) for line in train_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    return {"home": str(home), "train_file": str(train_file), "train_rows": len(rows)}


def _rows(spec: dict) -> list[dict]:
    lines = Path(spec["train_file"]).read_text(encoding="utf-8").splitlines()
    return [{"messages": json.loads(line)["messages"]} for line in lines if line.strip()]


def _peak_memory() -> dict:
    import torch

    if torch.cuda.is_available():
        return {"peak_gpu_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1)}
    return {}


def train_loraship(spec: dict) -> dict:
    from loraship import pipeline

    home = Path(tempfile.mkdtemp(prefix="train-loraship-", dir=spec["work"]))
    shutil.copytree(spec["home"], home, dirs_exist_ok=True)
    _use_home(home)
    cfg = pipeline.load_config(MODEL, overrides=spec.get("overrides") or None)
    rec = pipeline.stage_train(MODEL, cfg, "v1").stage("train")
    shutil.rmtree(home, ignore_errors=True)
    return {"tokens_per_s": rec["tokens_per_s"], "train_tokens": rec["train_tokens"], "train_s": rec["runtime_s"],
            "rows": rec["rows"]["train"], "dtype": rec["device"]["dtype"], "speed": rec.get("speed"),
            "steps": rec["global_steps"], **_peak_memory()}


def step_timer():
    """Seconds inside optimizer steps, the same hooks loraship's token meter uses."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.seconds, self._t0 = 0.0, None

        def on_step_begin(self, *a, **k):
            self._t0 = time.perf_counter()

        def on_step_end(self, *a, **k):
            if self._t0 is not None:
                self.seconds += time.perf_counter() - self._t0

    return StepTimer()


def _lora_config(spec: dict):
    from peft import LoraConfig

    lora = spec["lora"]
    return LoraConfig(r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"], target_modules=TARGETS,
                      task_type="CAUSAL_LM")


def _common_args(spec: dict, out: str) -> dict:
    cuda = _device() == "cuda"
    return dict(output_dir=out, num_train_epochs=spec["epochs"], per_device_train_batch_size=spec["batch"],
                gradient_accumulation_steps=spec["accum"], learning_rate=spec["lr"], lr_scheduler_type="cosine",
                save_strategy="no", report_to=[], use_cpu=not cuda, bf16=cuda, disable_tqdm=True,
                include_num_input_tokens_seen="non_padding", seed=42)


def _result(trainer, timer, rows: int, dtype: str, t0: float, **extra) -> dict:
    tokens = int(trainer.state.num_input_tokens_seen)
    return {"tokens_per_s": round(tokens / max(timer.seconds, 1e-9), 1), "train_tokens": tokens,
            "train_s": round(time.perf_counter() - t0, 1), "rows": rows, "dtype": dtype,
            "steps": trainer.state.global_step, **extra, **_peak_memory()}


def train_plain(spec: dict) -> dict:
    import torch
    from peft import get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainingArguments,
    )

    rows = _rows(spec)
    tok = AutoTokenizer.from_pretrained(spec["base"])
    tok.pad_token = tok.pad_token or tok.eos_token
    texts = [tok.apply_chat_template(r["messages"], tokenize=False) for r in rows]
    enc = tok(texts, truncation=True, max_length=spec["max_seq_length"], add_special_tokens=False)
    ds = [{"input_ids": i, "attention_mask": m, "labels": list(i)} for i, m in zip(enc["input_ids"], enc["attention_mask"])]
    dtype = torch.bfloat16 if _device() == "cuda" else torch.float32
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(spec["base"], dtype=dtype), _lora_config(spec))
    out = tempfile.mkdtemp(dir=spec["work"])
    args = TrainingArguments(**_common_args(spec, out), **_checkpointing(TrainingArguments, spec.get("plain_checkpointing", False)))
    timer = step_timer()
    trainer = Trainer(model=model, args=args, train_dataset=ds, callbacks=[timer],
                      data_collator=DataCollatorForSeq2Seq(tok, label_pad_token_id=-100))  # pads to the batch's longest
    t0 = time.perf_counter()
    trainer.train()
    shutil.rmtree(out, ignore_errors=True)
    return _result(trainer, timer, len(ds), str(dtype).removeprefix("torch."), t0,
                   gradient_checkpointing=spec.get("plain_checkpointing", False))


def _checkpointing(cls, enabled: bool) -> dict:
    from loraship.train.arguments import checkpointing_argument

    return checkpointing_argument(cls, enabled)


def train_trl(spec: dict) -> dict:
    import torch
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    rows = _rows(spec)
    ds = Dataset.from_list([{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]} for r in rows])
    tok = AutoTokenizer.from_pretrained(spec["base"])
    cuda = _device() == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    model = AutoModelForCausalLM.from_pretrained(spec["base"], dtype=dtype)
    attn = str(getattr(model.config, "_attn_implementation", ""))
    padding_free = attn.startswith("flash_attention")  # TRL: padding-free needs FlashAttention
    out = tempfile.mkdtemp(dir=spec["work"])
    common = {**_common_args(spec, out), "include_num_input_tokens_seen": "all" if padding_free else "non_padding"}
    args = SFTConfig(**common, completion_only_loss=True, padding_free=padding_free,
                     max_length=None if padding_free else spec["max_seq_length"], packing=False,
                     **_checkpointing(SFTConfig, spec.get("plain_checkpointing", False)))
    timer = step_timer()
    trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok,
                         peft_config=_lora_config(spec), callbacks=[timer])
    t0 = time.perf_counter()
    trainer.train()
    shutil.rmtree(out, ignore_errors=True)
    return _result(trainer, timer, len(ds), str(dtype).removeprefix("torch."), t0,
                   trl=trl.__version__, padding_free=padding_free, attention=attn)


ARMS = {"train_prepare": prepare, "train_loraship": train_loraship, "train_plain": train_plain, "train_trl": train_trl}
