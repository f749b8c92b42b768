"""A GGUF's header through llama.cpp's gguf C API, checked against gguf-py (export/gguf_header.py)."""

from __future__ import annotations

import pytest

from loraship.errors import ExportError
from loraship.export import gguf_header, gguf_tools


def test_c_api_reads_what_gguf_py_reads(smollm2_gguf):
    """The same type mix, file type, names, template and special tokens as gguf-py's parse
    of every field, on the demo model's real 49k-token vocabulary."""
    fast = gguf_tools._describe(str(smollm2_gguf), 0, 0)
    slow = gguf_tools._describe_with_gguf_py(str(smollm2_gguf))
    assert fast == slow
    assert fast["bos_token"] and fast["eos_token"] and fast["chat_template"]
    assert sum(fast["type_mix"].values()) == fast["n_tensors"] > 100


def test_without_the_c_api_gguf_py_answers(smollm2_gguf, monkeypatch):
    """An older ggml without gguf.h's functions: the fallback gives the same answer."""
    monkeypatch.setattr(gguf_header, "_lib", lambda: None)
    with gguf_header.open_header(smollm2_gguf) as header:
        assert header is None
    assert gguf_tools._describe(str(smollm2_gguf), 1, 1) == gguf_tools._describe_with_gguf_py(str(smollm2_gguf))


def test_typed_getters_never_call_ggml_with_the_wrong_type(smollm2_gguf):
    """ggml aborts the process on a getter of the wrong type: arrays and missing keys give None."""
    with gguf_header.open_header(smollm2_gguf) as header:
        assert header.value("tokenizer.ggml.tokens") is None  # an array
        assert header.value("no.such.key") is None
        assert header.string_at("general.architecture", 0) is None  # not an array
        assert header.string_at("tokenizer.ggml.tokens", 10**9) is None
        assert isinstance(header.value("general.file_type"), int)


def test_a_file_that_is_not_gguf_is_named_with_ggmls_reason(tmp_path):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"NOPE" + b"\0" * 64)
    with pytest.raises(ExportError, match=r"model.gguf is not a GGUF file llama.cpp can read \(.*magic"):
        gguf_tools.describe(bad)
