"""Shared fixtures: an isolated state dir, a tiny Llama model llama.cpp can convert
(loraship.base.tiny), an Ollama server (the test double unless OLLAMA_HOST is set)."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import pytest

from helpers import PREPARED, Project, Server, build_exported
from loraship.serve import ollama_client
from registry_fixture import registry  # noqa: F401  (fixture: a real OCI registry on loopback)

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
    from loraship.base.smollm2 import smollm2_gguf

    return smollm2_gguf()


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory, smollm2_gguf) -> Path:
    """A tiny random Llama model with SmolLM2's tokenizer and chat template, saved as safetensors."""
    from transformers import AutoTokenizer

    from loraship.base.tiny import build_tiny_model

    out = build_tiny_model(tmp_path_factory.mktemp("tiny-base"))
    assert AutoTokenizer.from_pretrained(out).chat_template, "the SmolLM2 GGUF should carry its chat template"
    return out


@pytest.fixture(scope="session")
def llama_models() -> Path:
    """llama.cpp's models/ folder: vocabulary GGUFs with token vectors, real chat templates."""
    from loraship.export.toolchain import llama_models_dir

    return llama_models_dir()


@pytest.fixture(scope="session")
def family_base(llama_models):
    """family name -> its tiny checkpoint folder (built once into build/cache/families/)."""
    from loraship.base import families

    return lambda name: families.build_fixture(name, llama_models)


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


@pytest.fixture
def model_name(ollama_host):
    """A model name for one test: the plain name on the double; on a real server a unique one, with
    every tag it made deleted afterwards, failed or not, so the suite can run again on that server."""
    made: list[str] = []
    real = bool(os.environ.get("OLLAMA_HOST"))  # before the test points OLLAMA_HOST at the double

    def name(base: str) -> str:
        made.append(f"{base}-{uuid.uuid4().hex[:8]}" if real else base)
        return made[-1]

    yield name
    if real:
        import ollama

        c = ollama.Client(host=ollama_host)
        for m in c.list().models:
            if any(m.model.startswith(f"{n}:") or f"/{n}:" in m.model for n in made):
                c.delete(m.model)


# ------------------------------------------------------------------ a registered project

@pytest.fixture
def server(ollama_host, tmp_path, monkeypatch):
    """The double (fault hooks, request log) unless OLLAMA_HOST names a real server.

    Asking for conftest's `ollama_host` marks the test `ollama_real` when OLLAMA_HOST is set
    (run them with `-m ollama_real`); its URL is used then. Otherwise this test starts its own
    double, whose object (faults, requests) `ollama_host` does not hand out.
    """
    if os.environ.get("OLLAMA_HOST"):
        yield Server(ollama_client.resolve_host(ollama_host))
        return
    from ollama_double import OllamaDouble

    double = OllamaDouble(tmp_path / "ollama-double").start()
    monkeypatch.setenv("OLLAMA_HOST", double.url)
    try:
        yield Server(double.url, double)
    finally:
        double.stop()


@pytest.fixture
def project(isolated_home, exported, server):
    """This test's own copy of the exported versions; a unique model name on a real server."""
    model = PREPARED if server.double else f"lstest-{uuid.uuid4().hex[:10]}"
    shutil.copytree(exported / "runs" / PREPARED, isolated_home / "runs" / model)
    shutil.copytree(exported / "ollama", isolated_home / "ollama")
    (isolated_home / "train").mkdir(exist_ok=True)
    shutil.copy(exported / "train" / f"{PREPARED}.yaml", isolated_home / "train" / f"{model}.yaml")
    yield Project(model, isolated_home, server)
    if server.double is None:  # leave a real server as it was, publish's registry-named copies too
        c = server.client()
        for name in server.tags():
            if name.startswith(f"{model}:") or f"/{model}:" in name:
                c.delete(name)


@pytest.fixture(scope="session")
def exported(tmp_path_factory, tiny_base):
    return build_exported(tmp_path_factory, tiny_base)
