"""What is being compared: one tag (or GGUF) standing for one version, and its parent.

A module of its own so that compare, backends and scoring all import it without
importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class Candidate:
    tag: str  # Ollama tag ("mining:v2") or a label for the llama.cpp backend
    version: str  # "v2"
    parent: str | None = None  # "v1"; gain and retention are measured against it when compared
    expected_digest: str | None = None  # recorded at register time, checked before scoring
    gguf_path: Path | None = None  # for the llama.cpp backend
