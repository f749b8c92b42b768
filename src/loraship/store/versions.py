"""The lineage store: list versions, allocate ids, the model lock, the rollback pointer."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from loraship import paths
from loraship.errors import VersionError
from loraship.store import atomic, manifest


@dataclass(frozen=True)
class Version:
    model: str
    id: str
    number: int
    path: Path

    @property
    def manifest(self) -> dict[str, Any]:
        return manifest.read(self.path)

    def stage(self, name: str) -> dict[str, Any] | None:
        return self.manifest.get("stages", {}).get(name)


def list_versions(model: str) -> list[Version]:
    root = paths.model_dir(model)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        m = paths.VERSION_DIR_RE.match(child.name)
        if m and child.is_dir() and (child / paths.MANIFEST).exists():
            n = int(m.group(1))
            found.append(Version(model, f"v{n}", n, child))
    return sorted(found, key=lambda v: v.number)


def get(model: str, ref: str | None = None) -> Version:
    """A version by id ('v3'), or the newest when ref is None or 'newest'."""
    versions = list_versions(model)
    if not versions:
        raise VersionError(f"model {model!r} has no versions yet: run `loraship data --model {model} FILE.jsonl`")
    if ref in (None, "newest"):
        return versions[-1]
    n = paths.parse_version_id(ref)
    for v in versions:
        if v.number == n:
            return v
    known = ", ".join(v.id for v in versions)
    raise VersionError(f"model {model!r} has no version {ref} (known: {known})")


def newest_with_stage(model: str, stage: str) -> Version | None:
    for v in reversed(list_versions(model)):
        if v.stage(stage):
            return v
    return None


def lineage(v: Version) -> list[Version]:
    """The version and its ancestors, oldest first."""
    chain = [v]
    seen = {v.id}
    while (parent := chain[0].manifest.get("parent")) is not None:
        if parent in seen:
            raise VersionError(f"model {v.model!r}: lineage of {v.id} loops at {parent}")
        seen.add(parent)
        chain.insert(0, get(v.model, parent))
    return chain


def read_state(model: str) -> dict[str, Any]:
    path = paths.state_file(model)
    if not path.exists():
        return {"last_number": 0, "next_parent": None}
    return json.loads(path.read_text(encoding="utf-8"))


def write_state(model: str, state: dict[str, Any]) -> None:
    atomic.write_json(paths.state_file(model), state)


@contextlib.contextmanager
def model_lock(model: str) -> Iterator[None]:
    """Exclusive, non-blocking: a second run on the same model fails at once with a clear line.

    flock is released by the kernel when the process dies, so a killed run never
    leaves a stale lock behind.
    """
    path = paths.lock_file(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = path.read_text(encoding="utf-8").strip() or "another process"
            raise VersionError(
                f"model {model!r} is busy: {holder} holds {path}; wait for it to finish"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()}".encode())
        yield
    finally:
        os.close(fd)


def create(model: str, parent: str | None, build: Callable[[Path, dict[str, Any]], None]) -> Version:
    """Allocate the next id and build the version in a temp folder, then rename it into place.

    `build(tmp_dir, manifest)` writes the content and fills the manifest. If it raises,
    the temp folder is removed and the id is still consumed: ids are never reused.
    Callers hold `model_lock(model)`.
    """
    state = read_state(model)
    existing = [v.number for v in list_versions(model)]
    number = max([state.get("last_number", 0), *existing]) + 1
    state["last_number"] = number
    write_state(model, state)
    vid = f"v{number}"
    final = paths.model_dir(model) / f"{vid}_{datetime.now().strftime('%Y%m%d_%H%M%S')}"
    tmp = paths.model_dir(model) / f"{paths.TMP_PREFIX}{final.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        m = manifest.new(model, vid, parent)
        build(tmp, m)
        manifest.write(tmp, m)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Version(model, vid, number, final)


def sweep_temp(model: str) -> list[str]:
    """Remove temp folders left by killed runs (only safe while holding the lock)."""
    root = paths.model_dir(model)
    removed = []
    if root.is_dir():
        for child in root.iterdir():
            if child.name.startswith(paths.TMP_PREFIX) and child.is_dir():
                shutil.rmtree(child, ignore_errors=True)
                removed.append(child.name)
    return removed
