"""A GGUF's tokenizer, rebuilt for transformers from the GGUF's own fields, for each tokenizer type
llama.cpp's vectors prove.

transformers can convert a GGUF tokenizer itself, but neither its route nor GPT-2's one regex is
right for every family (measured on llama.cpp's `ggml-vocab-*.gguf` vectors): 5.24 misses the
whitespace runs of SentencePiece vocabularies and refuses Gemma 4's; GPT-2's regex splits digits,
emoji and CJK unlike Qwen2's and Llama 3's. So loraship builds the tokenizer itself, from tokens,
merges or scores, token types and special-token ids, with the pre-tokenizer that
`tokenizer.ggml.pre` names (the regexes are those of the models' own tokenizer.json, which
llama.cpp's `llama-vocab.cpp` quotes) and one documented SentencePiece layout. The result is the same
on every transformers release. A type or pre-tokenizer not in the tables is refused in one line:
training on tokens llama.cpp would never produce is worse than not starting.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loraship.errors import ConfigError

CONTROL, USER_DEFINED = 3, 4  # llama.cpp token types that are special tokens

GPT2_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_TIKTOKEN_TAIL = r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
LLAMA3_REGEX = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}" + _TIKTOKEN_TAIL
QWEN2_REGEX = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}" + _TIKTOKEN_TAIL


@dataclass(frozen=True)
class BytePreTokenizer:
    """How a byte-level BPE family splits text before merging (llama-vocab.cpp's regex_exprs)."""

    splits: tuple[str, ...]  # applied in order, each keeping its matches as pieces
    nfc: bool = False  # Qwen2's tokenizer.json normalises to NFC first
    ignore_merges: bool = False  # Llama 3: a piece that is a whole token is taken as is


BYTE_LEVEL_PRE = {
    "gpt-2": BytePreTokenizer((GPT2_REGEX,)),
    "smollm": BytePreTokenizer((r"\p{N}", GPT2_REGEX)),
    "starcoder": BytePreTokenizer((r"\p{N}", GPT2_REGEX)),
    "qwen2": BytePreTokenizer((QWEN2_REGEX,), nfc=True),
    "llama-bpe": BytePreTokenizer((LLAMA3_REGEX,), ignore_merges=True),
    "llama3": BytePreTokenizer((LLAMA3_REGEX,), ignore_merges=True),
    "llama-v3": BytePreTokenizer((LLAMA3_REGEX,), ignore_merges=True),
}
SUPPORTED = ("byte-level BPE (tokenizer.ggml.pre " + ", ".join(sorted(BYTE_LEVEL_PRE)) + "), SentencePiece ('llama') "
             "and Gemma 4's BPE ('gemma4')")


def fields(gguf: Path) -> dict[str, Any]:
    from gguf import GGUFReader

    try:
        rd = GGUFReader(str(gguf))
    except (OSError, ValueError) as e:
        raise ConfigError(f"{gguf}: not a readable GGUF file ({e})") from None
    return {k: f.contents() for k, f in rd.fields.items() if k.startswith(("tokenizer.", "general.architecture"))}


def special_token(f: dict[str, Any], key: str) -> str | None:
    tokens = f["tokenizer.ggml.tokens"]
    i = f.get(key)
    return tokens[i] if isinstance(i, int) and 0 <= i < len(tokens) else None


def special_added_tokens(f: dict[str, Any]) -> list:
    from tokenizers import AddedToken

    return [AddedToken(t, special=True, normalized=False)
            for t, kind in zip(f["tokenizer.ggml.tokens"], f["tokenizer.ggml.token_type"])
            if kind in (CONTROL, USER_DEFINED)]


def bos_post_processor(f: dict[str, Any], add_bos: bool):
    """Prepend BOS the way llama.cpp does when the GGUF says add_bos_token (TemplateProcessing is
    also what the converter reads back as add_bos_token)."""
    from tokenizers import processors

    bos = special_token(f, "tokenizer.ggml.bos_token_id")
    if not add_bos or bos is None:
        return None
    bos_id = f["tokenizer.ggml.bos_token_id"]
    return processors.TemplateProcessing(single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1",
                                         special_tokens=[(bos, bos_id)])


def wrap(backend: Any, f: dict[str, Any], **extra: Any) -> Any:
    """A PreTrainedTokenizerFast around a tokenizers backend, with the GGUF's special tokens."""
    from transformers import PreTrainedTokenizerFast

    eos = special_token(f, "tokenizer.ggml.eos_token_id")
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=special_token(f, "tokenizer.ggml.bos_token_id"),
        eos_token=eos,
        unk_token=special_token(f, "tokenizer.ggml.unknown_token_id"),
        pad_token=special_token(f, "tokenizer.ggml.padding_token_id") or eos,
        chat_template=f.get("tokenizer.chat_template"),
        clean_up_tokenization_spaces=False,
        **extra,
    )


def byte_level_tokenizer(f: dict[str, Any], source: str = "the GGUF") -> Any:
    """A GGUF whose tokenizer.ggml.model is "gpt2", with the pre-tokenizer tokenizer.ggml.pre names."""
    from tokenizers import (
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
    )

    pre_name = f.get("tokenizer.ggml.pre") or "default"
    pre = BYTE_LEVEL_PRE.get(pre_name)
    if pre is None:
        raise ConfigError(f"{source}: byte-level BPE with pre-tokenizer {pre_name!r}, which loraship does "
                          f"not know; supported: {SUPPORTED}. Start from a model whose pre-tokenizer is listed")
    tokens = f["tokenizer.ggml.tokens"]
    merges = [tuple(m.split(" ", 1)) for m in f.get("tokenizer.ggml.merges") or []]
    backend = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges,
                                   byte_fallback=False, ignore_merges=pre.ignore_merges))
    if pre.nfc:
        backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in pre.splits]
        + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    backend.decoder = decoders.ByteLevel()
    post = bos_post_processor(f, bool(f.get("tokenizer.ggml.add_bos_token", False)))
    backend.post_processor = post or processors.ByteLevel(trim_offsets=False)
    backend.add_special_tokens(special_added_tokens(f))
    return wrap(backend, f)


def gemma4_tokenizer(f: dict[str, Any]) -> Any:
    """Gemma 4's vocabulary (tokenizer.ggml.model "gemma4"): BPE over raw UTF-8 with spaces as ▁ and
    byte fallback, the layout of transformers' GemmaTokenizer. llama.cpp splits the text at newline
    runs first; GemmaTokenizer does not, and the vectors show both give the same ids. The control
    tokens (<|turn>, <turn|>, ...) are listed as extra special tokens because llama.cpp's converter
    (gguf.LlamaHfVocab) marks as CONTROL exactly the tokenizer's special tokens."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

    tokens, kinds = f["tokenizer.ggml.tokens"], f["tokenizer.ggml.token_type"]
    # llama.cpp splits a merge at its first space after the first character (a token may start with one)
    merges = [(m[:i], m[i + 1:]) for m in f.get("tokenizer.ggml.merges") or [] if (i := m.find(" ", 1)) > 0]
    unk = special_token(f, "tokenizer.ggml.unknown_token_id")
    backend = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, byte_fallback=True,
                                   fuse_unk=True, unk_token=unk))
    backend.normalizer = normalizers.Replace(" ", "▁")
    backend.pre_tokenizer = pre_tokenizers.Split(" ", behavior="merged_with_previous")
    backend.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    backend.post_processor = bos_post_processor(f, bool(f.get("tokenizer.ggml.add_bos_token", True)))
    backend.add_special_tokens(special_added_tokens(f))
    named = {special_token(f, f"tokenizer.ggml.{k}_token_id") for k in ("bos", "eos", "unknown", "padding", "mask")}
    control = [t for t, kind in zip(tokens, kinds) if kind == CONTROL and t not in named]
    return wrap(backend, f, mask_token=special_token(f, "tokenizer.ggml.mask_token_id"),
                extra_special_tokens=control)


def tokenizer_files(f: dict[str, Any], source: str) -> tuple[Any, bytes | None]:
    """The transformers tokenizer for a GGUF's tokenizer fields, and the tokenizer.model bytes a
    SentencePiece vocabulary also needs (None otherwise); a one-line ConfigError where unsupported."""
    from loraship.base import spm_tokenizer

    kind = f.get("tokenizer.ggml.model")
    if "tokenizer.ggml.tokens" not in f:
        raise ConfigError(f"{source}: the GGUF holds no tokenizer (tokenizer.ggml.tokens is missing)")
    if kind == "gpt2":
        return byte_level_tokenizer(f, source), None
    if kind == "llama":
        return spm_tokenizer.spm_tokenizer(f), spm_tokenizer.sentencepiece_model(f)
    if kind == "gemma4":
        return gemma4_tokenizer(f), None
    raise ConfigError(f"{source}: tokenizer type {kind!r} (pre-tokenizer {f.get('tokenizer.ggml.pre')!r}) is not "
                      f"supported; supported: {SUPPORTED}. Start from the model's Hugging Face folder instead")


def gguf_tokenizer(gguf: Path) -> tuple[Any, bytes | None]:
    """tokenizer_files() of a GGUF file, its fields read once."""
    return tokenizer_files(fields(gguf), str(gguf))
