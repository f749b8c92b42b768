"""Every vocabulary a family fixture uses (and GPT-2's) tokenizes exactly as llama.cpp's own test
vectors say (`ggml-vocab-<name>.gguf.inp/.out`, made with each model's Hugging Face tokenizer),
whether it is rebuilt from the GGUF (what `base from-gguf` writes) or read back from the saved
folder, on the floor releases as on the newest."""

from __future__ import annotations

import pytest

from loraship.base import families, gguf_tokenizer, spm_tokenizer
from loraship.base.from_gguf import write_tokenizer
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


def test_gemma4_control_tokens_are_the_saved_tokenizers_special_tokens(llama_models, tmp_path):
    """llama.cpp's converter (gguf.LlamaHfVocab) marks as CONTROL exactly the tokenizer's special
    tokens: <|turn> and <turn|> must be among them, or the exported model would print its turn
    markers as text."""
    from transformers import AutoTokenizer

    f = gguf_tokenizer.fields(llama_models / "ggml-vocab-gemma-4.gguf")
    write_tokenizer(gguf_tokenizer.tokenizer_files(f, "gemma-4"), tmp_path)
    saved = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    control = {t for t, kind in zip(f["tokenizer.ggml.tokens"], f["tokenizer.ggml.token_type"])
               if kind == gguf_tokenizer.CONTROL}
    assert {"<|turn>", "<turn|>", "<bos>", "<eos>"} <= control
    assert set(saved.all_special_tokens) == control
    text = "<|turn>user\nHi<turn|>\n"
    assert saved(text, add_special_tokens=False)["input_ids"][:1] == [f["tokenizer.ggml.tokens"].index("<|turn>")]
    assert saved.decode(saved(text)["input_ids"], skip_special_tokens=True) == "user\nHi\n"


@pytest.mark.parametrize("vocab", ["qwen2", "llama-spm", "gemma-4"])
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
    f = gguf_tokenizer.fields(llama_models / "ggml-vocab-qwen2.gguf")
    f["tokenizer.ggml.model"] = "t5"  # a Unigram vocabulary: no route here
    with pytest.raises(ConfigError) as e:
        gguf_tokenizer.tokenizer_files(f, "model.gguf")
    msg = str(e.value)
    assert "\n" not in msg and "'t5'" in msg and "gemma4" in msg and "Hugging Face folder" in msg


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


def test_from_gguf_refuses_in_one_line_what_transformers_cannot_read(llama_models, tmp_path):
    """Gemma 4's tokenizer is rebuilt, but transformers' GGUF reader maps its architecture
    incompletely (a config validation error here; shape mismatches with real weights): the user
    gets one line and the way out, no traceback and no half-written folder."""
    from click.testing import CliRunner

    from loraship.cli import cli

    out = tmp_path / "base"
    result = CliRunner().invoke(cli, ["base", "from-gguf", str(llama_models / "ggml-vocab-gemma-4.gguf"), str(out)])
    assert result.exit_code == 2, result.output
    errors = [ln for ln in result.output.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and "'gemma4'" in errors[0] and "Hugging Face folder" in errors[0], result.output
    assert "Traceback" not in result.output
    assert not out.exists() and not list(tmp_path.glob(".tmp-*"))
