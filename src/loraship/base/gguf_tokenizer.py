"""A GGUF's byte-level BPE ("gpt2") tokenizer, rebuilt for transformers from the GGUF's own fields.

transformers can convert a GGUF tokenizer itself, but how depends on its release: 5.17
(what stock CUDA images ship) turns SmolLM2's byte-level BPE into a byte-fallback
tokenizer whose end-of-sequence token is `<|im_start|>`; the GGUF that llama.cpp's
converter then writes aborts llama.cpp on the first tokenize (`byte_to_token`:
unordered_map::at). Built here from tokens, merges, token types and the special-token
ids, the tokenizer is the same on every release (the one 5.24 builds).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

CONTROL, USER_DEFINED = 3, 4  # llama.cpp token types that are special tokens


def _fields(gguf: Path) -> dict[str, Any]:
    from gguf import GGUFReader

    rd = GGUFReader(str(gguf))
    return {k: f.contents() for k, f in rd.fields.items() if k.startswith("tokenizer.")}


def tokenizer_model(gguf: Path) -> str | None:
    return _fields(gguf).get("tokenizer.ggml.model")


def gpt2_tokenizer(gguf: Path) -> Any:
    """A PreTrainedTokenizerFast for a GGUF whose tokenizer.ggml.model is "gpt2"."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    f = _fields(gguf)
    tokens, types = f["tokenizer.ggml.tokens"], f["tokenizer.ggml.token_type"]
    merges = [tuple(m.split(" ", 1)) for m in f.get("tokenizer.ggml.merges") or []]
    backend = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, byte_fallback=False))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=bool(f.get("tokenizer.ggml.add_space_prefix")),
                                                     use_regex=True)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                for t, kind in zip(tokens, types) if kind in (CONTROL, USER_DEFINED)])

    def token(key: str) -> str | None:
        i = f.get(key)
        return tokens[i] if isinstance(i, int) and 0 <= i < len(tokens) else None

    eos = token("tokenizer.ggml.eos_token_id")
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=token("tokenizer.ggml.bos_token_id"),
        eos_token=eos,
        unk_token=token("tokenizer.ggml.unknown_token_id"),
        pad_token=token("tokenizer.ggml.padding_token_id") or eos,
        chat_template=f.get("tokenizer.chat_template"),
        clean_up_tokenization_spaces=False,
    )
