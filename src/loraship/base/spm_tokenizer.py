"""SentencePiece vocabularies (Llama 2, Mistral v0.x, CodeLlama, Phi-3) from a GGUF's fields.

Two files come out, as a Hugging Face download carries them:
- tokenizer.json: Llama 2's own layout (the one llama.cpp's vectors were made with): a "▁" prepended
  to each piece of text between special tokens, spaces as "▁", BPE over the vocabulary with merges
  ranked by the merged piece's score (transformers' SentencePieceExtractor order), byte fallback.
- tokenizer.model: the SentencePiece model proto, which llama.cpp's converter reads for these
  families (Phi-3's refuses to convert without it). Written by hand, field by field, so that
  loraship needs no protobuf package; sentencepiece itself loads it back in the tests.
"""

from __future__ import annotations

import struct
from typing import Any

from loraship.base.gguf_tokenizer import (
    bos_post_processor,
    special_added_tokens,
    special_token,
    wrap,
)

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6  # llama.cpp = SentencePiece types


def merges_by_score(tokens: list[str], scores: list[float], types: list[int]) -> list[tuple[str, str]]:
    """Every split of a piece into two pieces of the vocabulary, ranked by the merged piece's score
    (highest first), ties by the ids of the halves: transformers' order for Llama 2."""
    vocab = {t: i for i, t in enumerate(tokens) if types[i] in (NORMAL, USER_DEFINED)}
    ranked = []
    for piece, i in vocab.items():
        local = [(piece[:k], piece[k:]) for k in range(1, len(piece)) if piece[:k] in vocab and piece[k:] in vocab]
        local.sort(key=lambda lr: (vocab[lr[0]], vocab[lr[1]]))
        ranked.extend((scores[i], lr) for lr in local)
    ranked.sort(key=lambda s_lr: s_lr[0], reverse=True)  # stable: ties keep the order above
    return [lr for _, lr in ranked]


def spm_tokenizer(f: dict[str, Any]) -> Any:
    from tokenizers import Tokenizer, decoders, models, normalizers

    tokens, scores, types = f["tokenizer.ggml.tokens"], f["tokenizer.ggml.scores"], f["tokenizer.ggml.token_type"]
    unk = special_token(f, "tokenizer.ggml.unknown_token_id")
    backend = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)},
                                   merges=merges_by_score(tokens, scores, types),
                                   byte_fallback=True, fuse_unk=True, unk_token=unk))
    steps = [normalizers.Replace(" ", "▁")]
    if f.get("tokenizer.ggml.add_space_prefix", True):
        steps.insert(0, normalizers.Prepend("▁"))
    backend.normalizer = normalizers.Sequence(steps)
    backend.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                         decoders.Strip(" ", 1, 0)])
    backend.post_processor = bos_post_processor(f, bool(f.get("tokenizer.ggml.add_bos_token", True)))
    backend.add_special_tokens(special_added_tokens(f))
    return wrap(backend, f)


# ------------------------------------------------------------- tokenizer.model (protobuf)

def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _key(field: int, wire: int) -> bytes:
    return _varint(field << 3 | wire)


def _bytes(field: int, data: bytes) -> bytes:
    return _key(field, 2) + _varint(len(data)) + data


def _int(field: int, value: int) -> bytes:
    return _key(field, 0) + _varint(value & 0xFFFFFFFFFFFFFFFF)


def sentencepiece_model(f: dict[str, Any]) -> bytes:
    """sentencepiece_model.proto's ModelProto for a GGUF SentencePiece vocabulary (a BPE model with
    byte fallback, escaped whitespace, a dummy prefix when add_space_prefix, no normalisation)."""
    tokens, scores, types = f["tokenizer.ggml.tokens"], f["tokenizer.ggml.scores"], f["tokenizer.ggml.token_type"]

    def special(key: str) -> int:
        i = f.get(key)
        return i if isinstance(i, int) else -1

    # The model holds the pieces up to the last ordinary or byte piece; what follows (Phi-3's
    # <|user|>, padding) are added tokens, which tokenizer_config.json carries, as in a download.
    # Types are the ones SentencePiece insists on: one UNKNOWN piece, BOS and EOS as CONTROL.
    size = 1 + max(i for i, k in enumerate(types) if k in (NORMAL, BYTE))
    fixed = {special("tokenizer.ggml.unknown_token_id"): UNKNOWN, special("tokenizer.ggml.bos_token_id"): CONTROL,
             special("tokenizer.ggml.eos_token_id"): CONTROL}
    out = bytearray()
    for i in range(size):  # ModelProto.pieces = 1: piece = 1, score = 2, type = 3
        kind = fixed.get(i, CONTROL if types[i] == UNKNOWN else types[i])
        out += _bytes(1, _bytes(1, tokens[i].encode()) + _key(2, 5) + struct.pack("<f", scores[i]) + _int(3, kind))

    def in_model(key: str) -> int:  # Phi-3's EOS is an added token: the model itself then has none
        i = special(key)
        return i if 0 <= i < size else -1

    trainer = (_int(3, 2) + _int(4, size) + _int(35, 1)  # model_type = BPE, vocab_size, byte_fallback
               + _int(40, in_model("tokenizer.ggml.unknown_token_id")) + _int(41, in_model("tokenizer.ggml.bos_token_id"))
               + _int(42, in_model("tokenizer.ggml.eos_token_id")) + _int(43, -1))  # pad_id
    normalizer = (_bytes(1, b"identity") + _int(3, int(bool(f.get("tokenizer.ggml.add_space_prefix", True))))
                  + _int(4, 0) + _int(5, 1))  # add_dummy_prefix, remove_extra_whitespaces, escape_whitespaces
    return bytes(out + _bytes(2, trainer) + _bytes(3, normalizer))
