"""sha256 of large files, remembered by their file-system identity so a base is hashed once.

Train fingerprints the base and export proves the base is unchanged; on a 7B model each
full hash reads 14 GB. A remembered digest is reused only while everything the kernel
says about the file is as it was: device, inode, size, modification and *change* time in
nanoseconds. Rewriting the file changes mtime and ctime; replacing it changes the inode;
putting the old mtime back with `touch -d` changes ctime, which no user-level call can set.

Like git's "racily clean" index entries, a digest taken while the file was still fresh
(modified less than RACY_NS before it was hashed) is not remembered: a write landing in
the same timestamp tick on a coarse-clock file system could otherwise go unseen.

The cache is one JSON file per runs folder; concurrent writers replace it atomically,
and a lost update only costs a re-hash. A missing or unreadable cache is an empty one.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from loraship.store import atomic
from loraship.store.hashing import sha256_file

MIN_BYTES = 16 << 20  # smaller files hash faster than the cache is read
RACY_NS = 2_000_000_000  # FAT and some network file systems keep 2-second timestamps
CACHE_NAME = "sha256.json"


def _identity(st: os.stat_result) -> list[int]:
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def _load(cache: Path) -> dict:
    try:
        data = json.loads(cache.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def cache_file() -> Path:
    from loraship.paths import runs_root

    return runs_root() / ".cache" / CACHE_NAME


def sha256_file_cached(path: Path, cache: Path | None = None) -> tuple[str, bool]:
    """(sha256, whether it came from the cache) for `path`."""
    path = Path(path).resolve()
    st = path.stat()
    if st.st_size < MIN_BYTES:
        return sha256_file(path), False
    cache = cache or cache_file()
    entry = _load(cache).get(str(path))
    if isinstance(entry, dict) and entry.get("identity") == _identity(st) and isinstance(entry.get("sha256"), str):
        return entry["sha256"], True
    started = time.time_ns()
    digest = sha256_file(path)
    after = path.stat()
    if _identity(after) == _identity(st) and started - after.st_mtime_ns > RACY_NS:
        entries = {k: v for k, v in _load(cache).items() if Path(k).exists()}  # forget deleted files
        entries[str(path)] = {"identity": _identity(st), "sha256": digest}
        try:
            atomic.write_json(cache, entries)
        except OSError:  # a read-only runs folder still hashes, just every time
            pass
    return digest, False
