"""A base's digest is remembered only while the file is provably the same one (store/hash_cache.py)."""

from __future__ import annotations

import hashlib
import os
import time

import pytest

from loraship.store import hash_cache


@pytest.fixture
def big(tmp_path, monkeypatch):
    monkeypatch.setattr(hash_cache, "MIN_BYTES", 0)
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"a" * 4096)
    _age(path)
    return path


def _age(path, seconds=60):
    """Back-date the file past the racy window, as a model downloaded a while ago is."""
    old = time.time() - seconds
    os.utime(path, (old, old))


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_digest_is_reused_while_the_file_is_untouched(big, tmp_path):
    cache = tmp_path / "cache.json"
    assert hash_cache.sha256_file_cached(big, cache) == (_sha(big), False)
    assert hash_cache.sha256_file_cached(big, cache) == (_sha(big), True)


def test_rewrite_with_the_old_size_and_mtime_is_still_seen(big, tmp_path):
    """`touch -d` can put the mtime back; the change time it moves cannot be."""
    cache = tmp_path / "cache.json"
    hash_cache.sha256_file_cached(big, cache)
    st = big.stat()
    with open(big, "r+b") as f:
        f.write(b"b")
    os.utime(big, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert big.stat().st_size == st.st_size and big.stat().st_mtime_ns == st.st_mtime_ns
    digest, cached = hash_cache.sha256_file_cached(big, cache)
    assert not cached and digest == _sha(big) != hashlib.sha256(b"a" * 4096).hexdigest()


def test_replaced_file_is_hashed_again(big, tmp_path):
    cache = tmp_path / "cache.json"
    hash_cache.sha256_file_cached(big, cache)
    other = tmp_path / "other"
    other.write_bytes(b"c" * 4096)
    os.replace(other, big)
    _age(big)
    assert hash_cache.sha256_file_cached(big, cache) == (_sha(big), False)


def test_a_file_modified_just_now_is_not_remembered(tmp_path, monkeypatch):
    monkeypatch.setattr(hash_cache, "MIN_BYTES", 0)
    monkeypatch.setattr(hash_cache, "RACY_NS", 3600 * 10**9)  # "just now" even on a stalled machine
    cache, fresh = tmp_path / "cache.json", tmp_path / "fresh.safetensors"
    fresh.write_bytes(b"x" * 100)
    assert hash_cache.sha256_file_cached(fresh, cache)[1] is False
    assert hash_cache.sha256_file_cached(fresh, cache)[1] is False
    assert not cache.exists()


def test_a_broken_cache_is_an_empty_one(big, tmp_path):
    cache = tmp_path / "cache.json"
    cache.write_text("{not json")
    assert hash_cache.sha256_file_cached(big, cache) == (_sha(big), False)
    assert hash_cache.sha256_file_cached(big, cache) == (_sha(big), True)
