"""The model families people bring, as tiny checkpoints with their real tokenizer and chat template.

Each fixture is the Hugging Face folder a user would have downloaded (config.json, safetensors,
tokenizer.json, tokenizer.model for SentencePiece families, tokenizer_config.json,
chat_template.jinja, generation_config.json with the family's end-of-turn ids), with random
weights of the family's real transformers architecture at a tiny width and the family's real
vocabulary. The vocabularies and templates come from llama.cpp's own test material in the
llama-cpp-python sdist that `make setup` already downloads (`models/ggml-vocab-*.gguf`, with
llama.cpp's `.inp`/`.out` token vectors, and `models/templates/*.jinja`). Nothing is fetched.

Built once under build/cache/families/ (`make families`: build/family_fixtures.py), never committed.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loraship import paths
from loraship.errors import ConfigError, ToolchainError

FIXTURE_VERSION = 1  # bump when a fixture's contents change, so cached folders are rebuilt
_DONE = ".fixture-complete"


@dataclass(frozen=True)
class Family:
    name: str
    architecture: str  # the transformers class, as config.json names it
    vocab: str  # models/ggml-vocab-<vocab>.gguf in llama.cpp
    template: str  # models/templates/<template>.jinja in llama.cpp
    eos: str  # the instruct model's end-of-turn token: tokenizer eos_token, first stop
    generation_eos: tuple[str, ...]  # generation_config.json eos_token_id, in this order
    tie_embeddings: bool
    config: dict[str, Any] = field(default_factory=dict)  # architecture-specific config.json keys
    add_bos: bool | None = None  # None: what the vocabulary GGUF says

    @property
    def model_type(self) -> str:
        return {"Qwen2ForCausalLM": "qwen2", "LlamaForCausalLM": "llama", "MistralForCausalLM": "mistral",
                "Phi3ForCausalLM": "phi3", "Gemma4ForCausalLM": "gemma4_text"}[self.architecture]


FAMILIES: dict[str, Family] = {f.name: f for f in (
    # Qwen2.5-0.5B/3B/7B-Instruct: q/k/v biases, tied embeddings at 0.5B, no BOS, ChatML with a
    # default system prompt.
    Family("qwen2.5", "Qwen2ForCausalLM", "qwen2", "Qwen-Qwen2.5-7B-Instruct", "<|im_end|>",
           ("<|im_end|>", "<|endoftext|>"), True, {"attention_bias": True}),
    # Llama-3.2-1B/3B-Instruct: tiktoken-style BPE (ignore_merges), llama3 RoPE scaling, tied
    # embeddings, the date-line system header. llama.cpp ships Llama 3's vocabulary (`llama-bpe`),
    # the one 3.1 and 3.2 keep but for names of reserved tokens (128008 became <|eom_id|>).
    Family("llama3.2", "LlamaForCausalLM", "llama-bpe", "meta-llama-Llama-3.2-3B-Instruct", "<|eot_id|>",
           ("<|end_of_text|>", "<|eot_id|>"), True,
           {"rope_scaling": {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                             "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
            "rope_theta": 500000.0, "max_position_embeddings": 131072}, add_bos=True),
    # Mistral-7B-Instruct v0.x / Llama 2 / CodeLlama: the SentencePiece 32k vocabulary, [INST] turns,
    # untied embeddings.
    Family("mistral", "MistralForCausalLM", "llama-spm", "mistralai-Mistral-Nemo-Instruct-2407", "</s>",
           ("</s>",), False, {"sliding_window": None}),
    # Phi-3.5-mini-instruct: fused qkv_proj and gate_up_proj, SentencePiece plus added turn tokens.
    Family("phi3.5", "Phi3ForCausalLM", "phi-3", "microsoft-Phi-3.5-mini-instruct", "<|end|>",
           ("<|end|>", "<|assistant|>", "<|endoftext|>"), False, {"pad_token_id": 32000}),
    # Gemma 4 (E2B/E4B/31B-it): its own BPE vocabulary ('gemma4': ▁ for spaces, byte fallback),
    # <|turn>/<turn|> turns with an empty thought channel opened for the answer, scaled embeddings,
    # soft-capped logits, sliding-window layers with a full-attention one whose wider heads rotate
    # only part of their dimensions (proportional RoPE), tied embeddings. The sdist ships Gemma 4's
    # vocabulary and templates only (no Gemma 2/3 SentencePiece model), so this is the Gemma fixture.
    Family("gemma4", "Gemma4ForCausalLM", "gemma-4", "google-gemma-4-31B-it", "<turn|>",
           ("<eos>", "<turn|>"), True,
           {"head_dim": 64, "global_head_dim": 128, "hidden_size_per_layer_input": 0,
            "layer_types": ["sliding_attention", "full_attention"], "sliding_window": 512,
            "final_logit_softcapping": 30.0, "hidden_activation": "gelu_pytorch_tanh"}),
)}

SHAPE = {"hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2, "max_position_embeddings": 2048, "rms_norm_eps": 1e-5}


# ------------------------------------------------------------- llama.cpp's test material

def read_vectors(models: Path, vocab: str) -> list[tuple[str, list[int]]]:
    """llama.cpp's token test vectors for a vocabulary: (text, ids) pairs from .inp / .out."""
    inp = (models / f"ggml-vocab-{vocab}.gguf.inp").read_text(encoding="utf-8")
    out = (models / f"ggml-vocab-{vocab}.gguf.out").read_text(encoding="utf-8").splitlines()
    texts = inp.split("\n__ggml_vocab_test__\n")
    if texts[-1] == "":  # most files end with the separator; gemma-4's does not
        texts.pop()
    if len(texts) != len(out):
        raise ToolchainError(f"ggml-vocab-{vocab}: {len(texts)} test strings but {len(out)} result lines")
    return [(t, [int(x) for x in ids.split()]) for t, ids in zip(texts, out)]


# ------------------------------------------------------------- the fixture

def family(name: str) -> Family:
    if name not in FAMILIES:
        raise ConfigError(f"unknown model family {name!r}; known: {', '.join(FAMILIES)}")
    return FAMILIES[name]


def fixture_dir(name: str) -> Path:
    return paths.tools_dir() / "families" / f"{name}-{FIXTURE_VERSION}"


def family_tokenizer(fam: Family, models: Path) -> tuple[Any, bytes | None]:
    """The family's real tokenizer from its vocabulary GGUF, with the instruct model's EOS and
    template, and the tokenizer.model bytes of a SentencePiece vocabulary (else None)."""
    from loraship.base import gguf_tokenizer

    f = gguf_tokenizer.fields(models / f"ggml-vocab-{fam.vocab}.gguf")
    if fam.add_bos is not None:
        f["tokenizer.ggml.add_bos_token"] = fam.add_bos
    f["tokenizer.ggml.eos_token_id"] = f["tokenizer.ggml.tokens"].index(fam.eos)
    f["tokenizer.chat_template"] = (models / "templates" / f"{fam.template}.jinja").read_text(encoding="utf-8")
    return gguf_tokenizer.tokenizer_files(f, f"ggml-vocab-{fam.vocab}")


def _config(fam: Family, tok: Any) -> Any:
    from transformers import AutoConfig

    ids = [tok.convert_tokens_to_ids(t) for t in fam.generation_eos]
    extra = dict(SHAPE, vocab_size=len(tok), tie_word_embeddings=fam.tie_embeddings,
                 bos_token_id=tok.bos_token_id, eos_token_id=ids if len(ids) > 1 else ids[0])
    extra.update(fam.config)
    extra.setdefault("pad_token_id", tok.pad_token_id)
    return AutoConfig.for_model(fam.model_type, architectures=[fam.architecture], **extra)


def build_fixture(name: str, models: Path, seed: int = 0, log: Callable[[str], None] = lambda s: None) -> Path:
    """The family's tiny checkpoint folder (built once; a second call costs nothing). `models`:
    llama.cpp's models/ folder (export.toolchain.llama_models_dir())."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    from loraship.base.from_gguf import write_tokenizer

    fam = family(name)
    out = fixture_dir(name)
    if (out / _DONE).exists():
        return out
    log(f"building the {name} fixture ({fam.architecture}, vocabulary {fam.vocab}, template {fam.template})")
    tokenizer = family_tokenizer(fam, models)
    config = _config(fam, tokenizer[0])
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    tmp = out.parent / f".tmp-{out.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        GenerationConfig(bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id,
                         pad_token_id=config.pad_token_id).save_pretrained(tmp)
        write_tokenizer(tokenizer, tmp)
        (tmp / "family.json").write_text(json.dumps({"family": name, "vocab": fam.vocab, "template": fam.template,
                                                     "architecture": fam.architecture, "seed": seed}, indent=1))
        (tmp / _DONE).write_text(f"{FIXTURE_VERSION}\n")
        shutil.rmtree(out, ignore_errors=True)
        os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out

