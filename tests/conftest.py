"""Shared fixtures: an isolated state dir, a tiny Llama model llama.cpp can convert
(loraship.tiny_model), an Ollama server (the test double unless OLLAMA_HOST is set)."""

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
    from transformers import AutoTokenizer

    from loraship.tiny_model import build_tiny_model

    out = build_tiny_model(tmp_path_factory.mktemp("tiny-base"))
    assert AutoTokenizer.from_pretrained(out).chat_template, "the SmolLM2 GGUF should carry its chat template"
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


def pytest_collection_modifyitems(config, items):
    """With OLLAMA_HOST set, every test that talks to Ollama targets that real server and is
    marked `ollama_real` (select it with `-m ollama_real`); without it, they use the double."""
    if not os.environ.get("OLLAMA_HOST"):
        return
    for item in items:
        if "ollama_host" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.ollama_real)
