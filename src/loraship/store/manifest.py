"""The per-version manifest: the one record of what a version is and how it was made."""

from __future__ import annotations

import json
import platform
from collections.abc import Callable
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from loraship.errors import VersionError
from loraship.paths import MANIFEST
from loraship.store import atomic

SCHEMA = 1
_LIBRARIES = ("loraship", "torch", "transformers", "peft", "accelerate", "llama_cpp_python", "gguf", "ollama")


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def library_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in _LIBRARIES:
        try:
            out[name] = metadata.version(name.replace("_", "-"))
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def new(model: str, version: str, parent: str | None) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "model": model,
        "id": version,
        "parent": parent,
        "created_at": now_iso(),
        "libraries": library_versions(),
        "stages": {},
        "artifacts": {},
    }


def read(version_dir: Path) -> dict[str, Any]:
    path = Path(version_dir) / MANIFEST
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise VersionError(f"{path}: no manifest; this folder is not a finished version") from e
    except json.JSONDecodeError as e:
        raise VersionError(f"{path}: manifest is not valid JSON (line {e.lineno}): {e.msg}") from e


def write(version_dir: Path, manifest: dict[str, Any]) -> None:
    atomic.write_json(Path(version_dir) / MANIFEST, manifest)


def update(version_dir: Path, change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Read, change, write atomically. Callers hold the model lock."""
    m = read(version_dir)
    change(m)
    m["updated_at"] = now_iso()
    write(version_dir, m)
    return m
