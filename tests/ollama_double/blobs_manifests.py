"""Blobs and manifests on disk, laid out as $OLLAMA_MODELS is, and a manifest read back."""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from .faults import HTTPError
from .goenc import go_manifest
from .names import require

MEDIA = "application/vnd.ollama.image."
MANIFEST_MEDIA = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_MEDIA = "application/vnd.docker.container.image.v1+json"
DIGEST_RE = re.compile(r"^sha256[:-][0-9a-fA-F]{64}$")


def local_manifest_bytes(manifest: dict[str, Any]) -> bytes:
    """What manifest.WriteManifest writes: json.NewEncoder(f).Encode, so a trailing newline."""
    return go_manifest(manifest) + b"\n"


def manifest_blobs(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """The layers, then the config when it has a digest: the blobs a push or pull moves."""
    config = manifest.get("config") or {}
    return [*(manifest.get("layers") or []), *([config] if config.get("digest") else [])]


class Store:
    """Blobs and manifests laid out as $OLLAMA_MODELS is."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        (self.root / "blobs").mkdir(parents=True, exist_ok=True)
        (self.root / "manifests").mkdir(parents=True, exist_ok=True)

    def blob(self, digest: str) -> Path:
        if not DIGEST_RE.match(digest or ""):
            raise HTTPError(400, "invalid digest format")
        return self.root / "blobs" / digest.replace(":", "-")

    def put_blob(self, data: bytes) -> tuple[str, bool]:
        """Store bytes as a blob; (digest, created)."""
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        path = self.blob(digest)
        if path.exists():
            return digest, False
        tmp = path.with_name(f".tmp-{os.getpid()}-{threading.get_ident()}")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        return digest, True

    def manifest_path(self, name: str) -> Path:
        n = require(name)
        return self.root / "manifests" / n.host / n.namespace / n.model / n.tag

    def find(self, name: str) -> Path | None:
        """The stored manifest for a name, matched case-insensitively as Ollama does."""
        want = self.manifest_path(name).relative_to(self.root).as_posix().lower()
        for path in self.manifests():
            if path.relative_to(self.root).as_posix().lower() == want:
                return path
        return None

    def manifests(self) -> list[Path]:
        base = self.root / "manifests"
        return sorted(p for p in base.glob("*/*/*/*") if p.is_file() and not p.name.startswith("."))

    def write_manifest(self, path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".tmp-{path.name}")
        tmp.write_bytes(data)
        os.replace(tmp, path)

    def prune(self, digests: set[str]) -> None:
        """Delete blobs of `digests` that no remaining manifest references."""
        used = set()
        for path in self.manifests():
            used.update(x["digest"] for x in manifest_blobs(json.loads(path.read_bytes())))
        for digest in digests - used:
            self.blob(digest).unlink(missing_ok=True)

    @staticmethod
    def display_name(path: Path) -> str:
        host, ns, model, tag = path.parts[-4:]
        if host == "registry.ollama.ai":
            return f"{model}:{tag}" if ns == "library" else f"{ns}/{model}:{tag}"
        return f"{host}/{ns}/{model}:{tag}"


@dataclass
class Model:
    """A manifest read back: what chat, generate and show need."""

    name: str
    path: Path
    manifest: dict[str, Any]
    raw: bytes

    def layers(self, kind: str) -> list[dict[str, Any]]:
        return [x for x in self.manifest["layers"] if x["mediaType"] == MEDIA + kind]

    def text(self, store: Store, kind: str) -> str | None:
        found = self.layers(kind)
        return store.blob(found[-1]["digest"]).read_text("utf-8") if found else None

    def params(self, store: Store) -> dict[str, Any]:
        text = self.text(store, "params")
        return json.loads(text) if text else {}

    def modified_at(self) -> str:
        return datetime.fromtimestamp(self.path.stat().st_mtime).astimezone().isoformat()
