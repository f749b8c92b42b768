"""The base model's tokenizer, read from a GGUF, tokenizes as llama.cpp does on every transformers release."""

from __future__ import annotations

import pytest

from loraship.base.from_gguf import load_gguf_tokenizer
from loraship.export import llama_runtime

PROBES = ["Hello world", " leading space", "ünïcödé 日本 🙂", "def f(x):\n\treturn x**2  # ok",
          "  two  spaces\n\nnew line", "Varnholt Basin's 610 metres", "<|im_start|>user\nWhat?<|im_end|>\n"]


@pytest.fixture(scope="module")
def tok(smollm2_gguf):
    return load_gguf_tokenizer(smollm2_gguf)


def test_special_tokens_are_the_ggufs(tok):
    # transformers 5.17's own GGUF conversion made <|im_start|> the end-of-sequence token
    assert (tok.bos_token, tok.eos_token, tok.unk_token, tok.pad_token) == (
        "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|im_end|>")
    assert len(tok) == 49152 and tok.chat_template


def test_ids_match_llama_cpp_on_the_same_gguf(tok, smollm2_gguf):
    llm = llama_runtime.llama_cpp().Llama(model_path=str(smollm2_gguf), vocab_only=True, verbose=False)
    try:
        for text in PROBES:
            want = llm.tokenize(text.encode(), add_bos=False, special=True)
            assert tok(text, add_special_tokens=False)["input_ids"] == want, text
            assert tok.decode(want) == text
    finally:
        llm.close()
