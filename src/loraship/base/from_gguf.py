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

from loraship.base import gguf_tokenizer
from loraship.errors import ConfigError


def load_gguf_tokenizer(gguf: Path):
    """The GGUF's tokenizer for transformers, rebuilt from its own fields (base/gguf_tokenizer.py):
    the same on every transformers release, refused in one line where its type is unknown."""
    return _with_pad(gguf_tokenizer.gguf_tokenizer(gguf)[0])


def _with_pad(tok):
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def write_tokenizer(tokenizer: tuple, out: Path) -> None:
    """gguf_tokenizer()'s pair as a download carries it: tokenizer.json and its config, plus
    tokenizer.model for a SentencePiece vocabulary (llama.cpp's converter reads it for Llama 2,
    Mistral and Phi-3)."""
    tok, sp_model = tokenizer
    _with_pad(tok).save_pretrained(out)
    if sp_model is not None:
        (out / "tokenizer.model").write_bytes(sp_model)


def from_gguf(gguf: Path, out: Path, log: Callable[[str], None] = lambda s: None,
              extra_files: dict[str, str] | None = None) -> Path:
    """`extra_files` (name -> text) are written into the folder before it is renamed into place."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    gguf, out = Path(gguf).absolute(), Path(out)  # not resolve(): a link may name the file *.gguf
    if out.exists() and (out / "config.json").exists():
        log(f"{out} already holds a model: nothing to do")
        return out
    tmp = out.parent / f".tmp-{out.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        f = gguf_tokenizer.fields(gguf)
        tokenizer = gguf_tokenizer.tokenizer_files(f, str(gguf))  # an unsupported one is refused before the long read
        log(f"reading {gguf.name} (dequantizing to float32)")
        # transformers' GGUF reader fails in many ways on an architecture it maps incompletely
        # (Gemma 4: a config validation error from huggingface_hub on a vocabulary-only file, a
        # RuntimeError on mismatched shapes with weights): every one is the same refusal for the user.
        try:
            loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32,
                                                          local_files_only=True)
            config = AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name, local_files_only=True)
        except Exception as e:  # noqa: BLE001 - any failure of the reader is this one-line refusal
            import transformers

            first = next((line for line in str(e).splitlines() if line.strip()), e.__class__.__name__)
            arch = f.get("general.architecture")
            raise ConfigError(f"{gguf}: transformers {transformers.__version__} cannot read this GGUF's "
                              f"{repr(arch) if arch else 'unnamed-architecture'} weights ({first.strip()}); start from the model's Hugging "
                              "Face folder (base_model: <folder>) instead") from None
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        missing, unexpected = plain.load_state_dict(loaded.state_dict(), strict=False)
        real_missing = [k for k in missing if not k.endswith("lm_head.weight")]
        if real_missing or unexpected:
            raise ConfigError(f"{gguf}: weights do not fit the config (missing {real_missing[:3]}, unexpected {unexpected[:3]})")
        if getattr(config, "tie_word_embeddings", False):
            plain.tie_weights()
        plain.save_pretrained(tmp, safe_serialization=True)
        write_tokenizer(tokenizer, tmp)
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text, encoding="utf-8")
        log(f"saved a plain safetensors checkpoint to {out}")
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
