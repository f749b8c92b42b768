"""Every vocabulary a family fixture uses (and GPT-2's) tokenizes exactly as llama.cpp's own test
vectors say (`ggml-vocab-<name>.gguf.inp/.out`, made with each model's Hugging Face tokenizer),
whether it is rebuilt from the GGUF (what `base from-gguf` writes) or read back from the saved
folder, on the floor releases as on the newest."""

from __future__ import annotations

import pytest

from loraship.base import families, gguf_tokenizer, spm_tokenizer
from loraship.base.from_gguf import load_gguf_tokenizer, write_tokenizer
from loraship.errors import ConfigError

VOCABS = sorted({f.vocab for f in families.FAMILIES.values()} | {"gpt-2"})


def mismatches(encode, vectors) -> list[str]:
    return [f"{text!r}: got {encode(text)[:12]}, llama.cpp's vector {ids[:12]}"
            for text, ids in vectors if encode(text) != ids]


@pytest.mark.parametrize("vocab", VOCABS)
def test_from_gguf_tokenizer_reproduces_llama_cpp_vectors(vocab, llama_models, tmp_path):
    from transformers import AutoTokenizer

    gguf = llama_models / f"ggml-vocab-{vocab}.gguf"
    vectors = families.read_vectors(llama_models, vocab)
    assert len(vectors) >= 40
    tokenizer = gguf_tokenizer.gguf_tokenizer(gguf)
    write_tokenizer(tokenizer, tmp_path)  # what `base from-gguf` leaves in the model folder
    tok = tokenizer[0]
    saved = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    for name, t in (("rebuilt", tok), ("saved", saved)):
        bad = mismatches(lambda s, t=t: t(s, add_special_tokens=False)["input_ids"], vectors)
        assert not bad, f"{vocab} ({name}): {len(bad)} of {len(vectors)} differ:\n" + "\n".join(bad[:5])


@pytest.mark.parametrize("vocab", [v for v in VOCABS if v in ("llama-spm", "phi-3")])
def test_sentencepiece_model_file_reproduces_the_vectors(vocab, llama_models, tmp_path):
    """tokenizer.model, written by hand from the GGUF, is a SentencePiece model that sentencepiece
    itself loads and that tokenizes as the vectors say (llama.cpp's converter reads this file)."""
    import sentencepiece

    f = gguf_tokenizer.fields(llama_models / f"ggml-vocab-{vocab}.gguf")
    (tmp_path / "tokenizer.model").write_bytes(spm_tokenizer.sentencepiece_model(f))
    sp = sentencepiece.SentencePieceProcessor(model_file=str(tmp_path / "tokenizer.model"))
    assert (sp.unk_id(), sp.bos_id(), sp.vocab_size()) == (0, 1, 32000)
    bad = mismatches(sp.encode, families.read_vectors(llama_models, vocab))
    assert not bad, "\n".join(bad[:5])


@pytest.mark.parametrize("vocab", ["qwen2", "llama-spm"])
def test_llama_cpp_tokenizes_the_vocab_gguf_as_the_vectors_say(vocab, llama_models):
    """The other side of HF ↔ GGUF parity: llama.cpp itself on the same vocabulary."""
    from loraship.export import llama_runtime

    llm = llama_runtime.llama_cpp().Llama(model_path=str(llama_models / f"ggml-vocab-{vocab}.gguf"),
                                          vocab_only=True, verbose=False)
    try:
        bad = mismatches(lambda s: llm.tokenize(s.encode(), add_bos=False, special=False),
                         [(t, ids) for t, ids in families.read_vectors(llama_models, vocab) if t])
    finally:
        llm.close()
    assert not bad, "\n".join(bad[:5])


def test_an_unknown_pre_tokenizer_is_refused_in_one_line(llama_models, tmp_path):
    f = gguf_tokenizer.fields(llama_models / "ggml-vocab-qwen2.gguf")
    f["tokenizer.ggml.pre"] = "deepseek-llm"
    with pytest.raises(ConfigError) as e:
        gguf_tokenizer.byte_level_tokenizer(f, "model.gguf")
    msg = str(e.value)
    assert "\n" not in msg and "'deepseek-llm'" in msg and "qwen2" in msg and "llama-bpe" in msg


def test_an_unsupported_tokenizer_type_is_refused_in_one_line(llama_models):
    with pytest.raises(ConfigError) as e:  # Gemma 4's own BPE type
        load_gguf_tokenizer(llama_models / "ggml-vocab-gemma-4.gguf")
    assert "\n" not in str(e.value) and "'gemma4'" in str(e.value) and "Hugging Face folder" in str(e.value)


@pytest.mark.parametrize("name", sorted(families.FAMILIES))
def test_family_fixture_carries_what_a_download_carries(name, llama_models, family_base):
    import json

    from transformers import AutoTokenizer

    fam = families.family(name)
    path = family_base(name)
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    assert tok.eos_token == fam.eos and tok.chat_template == (
        llama_models / "templates" / f"{fam.template}.jinja").read_text(encoding="utf-8")
    config = json.loads((path / "config.json").read_text())
    assert config["architectures"] == [fam.architecture] and config["vocab_size"] == len(tok)
    gen = json.loads((path / "generation_config.json").read_text())
    eos = gen["eos_token_id"] if isinstance(gen["eos_token_id"], list) else [gen["eos_token_id"]]
    assert tok.convert_tokens_to_ids(fam.eos) in eos
    assert (path / "tokenizer.model").exists() == (fam.vocab in ("llama-spm", "phi-3"))
    bad = mismatches(lambda s: tok(s, add_special_tokens=False)["input_ids"], families.read_vectors(llama_models, fam.vocab))
    assert not bad, "\n".join(bad[:5])
