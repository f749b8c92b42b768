"""A GGUF → a plain Hugging Face checkpoint that can be trained and saved.

transformers reads GGUF into float weights (`from_pretrained(dir, gguf_file=...)`) but
refuses `save_pretrained` on such a model, so we build a plain model from the config
and load the dequantized state dict into it. Works offline for any GGUF whose
architecture transformers can read.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

from loraship.errors import ConfigError


def load_gguf_tokenizer(gguf: Path):
    """The GGUF's tokenizer for transformers: byte-level BPE rebuilt from its fields (the same
    on every transformers release), anything else through transformers' own conversion."""
    from transformers import AutoTokenizer

    from loraship.base import gguf_tokenizer

    if gguf_tokenizer.tokenizer_model(gguf) == "gpt2":
        tok = gguf_tokenizer.gpt2_tokenizer(gguf)
    else:
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name, local_files_only=True)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def from_gguf(gguf: Path, out: Path, log: Callable[[str], None] = lambda s: None) -> Path:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    gguf, out = Path(gguf).resolve(), Path(out)
    if out.exists() and (out / "config.json").exists():
        log(f"{out} already holds a model: nothing to do")
        return out
    tmp = out.parent / f".tmp-{out.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        log(f"reading {gguf.name} (dequantizing to float32)")
        try:
            loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32,
                                                          local_files_only=True)
        except (ValueError, OSError, KeyError) as e:
            raise ConfigError(f"{gguf}: transformers cannot read this GGUF ({str(e).splitlines()[0]})") from None
        config = AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name, local_files_only=True)
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        missing, unexpected = plain.load_state_dict(loaded.state_dict(), strict=False)
        real_missing = [k for k in missing if not k.endswith("lm_head.weight")]
        if real_missing or unexpected:
            raise ConfigError(f"{gguf}: weights do not fit the config (missing {real_missing[:3]}, unexpected {unexpected[:3]})")
        if getattr(config, "tie_word_embeddings", False):
            plain.tie_weights()
        plain.save_pretrained(tmp, safe_serialization=True)
        load_gguf_tokenizer(gguf).save_pretrained(tmp)
        log(f"saved a plain safetensors checkpoint to {out}")
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
