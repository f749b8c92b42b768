"""sha256 of files and folders, streamed so a multi-GB GGUF never sits in memory."""

from __future__ import annotations

import hashlib
from pathlib import Path

_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def sha256_tree(root: Path) -> str:
    """One digest for a folder: relative paths and contents of every file, in sorted order."""
    root = Path(root)
    h = hashlib.sha256()
    for p in sorted(q for q in root.rglob("*") if q.is_file()):
        h.update(p.relative_to(root).as_posix().encode() + b"\0")
        h.update(sha256_file(p).encode() + b"\n")
    return h.hexdigest()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def artifact_record(path: Path, relative_to: Path) -> dict:
    """What the manifest stores for one artifact: path, sha256, bytes."""
    path = Path(path)
    if path.is_dir():
        size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        digest = sha256_tree(path)
    else:
        size = path.stat().st_size
        digest = sha256_file(path)
    return {"path": path.relative_to(relative_to).as_posix(), "sha256": digest, "bytes": size}
