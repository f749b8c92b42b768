"""A GGUF's metadata and tensor types, read by llama.cpp's own gguf C API (ggml's `gguf.h`).

gguf-py's GGUFReader parses every metadata field into numpy views, element by element:
a 50k-token vocabulary and its merges take seconds per file, paid on every export for a
type mix and a few keys. ggml's `gguf_init_from_file` with `no_alloc` reads the same
header in C in milliseconds, and it is the parser llama.cpp itself loads models with.

`open_header` returns None when the linked ggml lacks the API (an older or stripped
build); callers then fall back to gguf-py (gguf_tools.describe).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from loraship.export import llama_runtime

# enum gguf_type (gguf.h): the scalar types and their getters.
_SCALARS = {0: ("u8", ctypes.c_uint8), 1: ("i8", ctypes.c_int8), 2: ("u16", ctypes.c_uint16),
            3: ("i16", ctypes.c_int16), 4: ("u32", ctypes.c_uint32), 5: ("i32", ctypes.c_int32),
            6: ("f32", ctypes.c_float), 7: ("bool", ctypes.c_bool), 10: ("u64", ctypes.c_uint64),
            11: ("i64", ctypes.c_int64), 12: ("f64", ctypes.c_double)}
GGUF_TYPE_STRING, GGUF_TYPE_ARRAY = 8, 9


class _InitParams(ctypes.Structure):
    _fields_ = [("no_alloc", ctypes.c_bool), ("ctx", ctypes.c_void_p)]


@functools.lru_cache(maxsize=1)
def _lib() -> Any | None:
    """libggml-base (where gguf.h's functions live) with the calls typed, or None without them."""
    path = llama_runtime.find_library(llama_runtime.library_dir(llama_runtime.llama_cpp()), "ggml-base")
    if path is None:
        return None
    try:
        lib = ctypes.CDLL(str(path))
        signatures = {
            "gguf_init_from_file": (ctypes.c_void_p, [ctypes.c_char_p, _InitParams]),
            "gguf_free": (None, [ctypes.c_void_p]),
            "gguf_find_key": (ctypes.c_int64, [ctypes.c_void_p, ctypes.c_char_p]),
            "gguf_get_kv_type": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_int64]),
            "gguf_get_arr_type": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_int64]),
            "gguf_get_arr_n": (ctypes.c_size_t, [ctypes.c_void_p, ctypes.c_int64]),
            "gguf_get_arr_str": (ctypes.c_char_p, [ctypes.c_void_p, ctypes.c_int64, ctypes.c_size_t]),
            "gguf_get_val_str": (ctypes.c_char_p, [ctypes.c_void_p, ctypes.c_int64]),
            "gguf_get_n_tensors": (ctypes.c_int64, [ctypes.c_void_p]),
            "gguf_get_tensor_type": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_int64]),
            "ggml_type_name": (ctypes.c_char_p, [ctypes.c_int]),
            **{f"gguf_get_val_{name}": (ct, [ctypes.c_void_p, ctypes.c_int64]) for name, ct in _SCALARS.values()},
        }
        for name, (restype, argtypes) in signatures.items():
            fn = getattr(lib, name)  # AttributeError: this build lacks the API
            fn.restype, fn.argtypes = restype, argtypes
    except (OSError, AttributeError):
        return None
    return lib


class Header:
    """One GGUF's header (no tensor data loaded). Getters check the stored type first:
    ggml aborts the process on a getter of the wrong type."""

    def __init__(self, lib: Any, ctx: int):
        self._lib, self._ctx = lib, ctx

    def _key(self, key: str) -> int:
        return int(self._lib.gguf_find_key(self._ctx, key.encode()))

    def value(self, key: str) -> Any:
        """A scalar or string value; None when absent or an array."""
        i = self._key(key)
        if i < 0:
            return None
        kind = self._lib.gguf_get_kv_type(self._ctx, i)
        if kind == GGUF_TYPE_STRING:
            return self._lib.gguf_get_val_str(self._ctx, i).decode("utf-8", errors="replace")
        if kind in _SCALARS:
            return getattr(self._lib, f"gguf_get_val_{_SCALARS[kind][0]}")(self._ctx, i)
        return None

    def string_at(self, key: str, index: Any) -> str | None:
        """Element `index` of a string array (the vocabulary), or None."""
        i = self._key(key)
        if i < 0 or not isinstance(index, int) or self._lib.gguf_get_kv_type(self._ctx, i) != GGUF_TYPE_ARRAY:
            return None
        if self._lib.gguf_get_arr_type(self._ctx, i) != GGUF_TYPE_STRING:
            return None
        if not 0 <= index < self._lib.gguf_get_arr_n(self._ctx, i):
            return None
        return self._lib.gguf_get_arr_str(self._ctx, i, index).decode("utf-8", errors="replace")

    def tensor_types(self) -> list[str]:
        """Each tensor's ggml type name, upper-cased as gguf-py names them (Q4_K, F32, ...)."""
        n = self._lib.gguf_get_n_tensors(self._ctx)
        return [self._lib.ggml_type_name(self._lib.gguf_get_tensor_type(self._ctx, t)).decode().upper()
                for t in range(n)]


class UnreadableGGUF(ValueError):
    pass


def _own_reason(path: Path) -> str:
    """Why ggml refused, when its log went elsewhere (llama-cpp-python's logger may be quieted)."""
    from loraship.export.gguf_tools import GGUF_MAGIC

    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        return f"invalid magic {magic!r}, expected {GGUF_MAGIC!r}"
    return "ggml could not parse its header: truncated or corrupt"


@contextlib.contextmanager
def open_header(path: Path) -> Iterator[Header | None]:
    """The header of `path` through ggml, or None where ggml lacks the gguf API.
    Raises UnreadableGGUF (with ggml's own reason) for a file ggml cannot parse."""
    lib = _lib()
    if lib is None:
        yield None
        return
    # ggml explains a refusal on fd 2, or through llama-cpp-python's log callback on sys.stderr
    py = io.StringIO()
    with llama_runtime.captured_stderr() as said, contextlib.redirect_stderr(py):
        ctx = lib.gguf_init_from_file(str(path).encode(), _InitParams(True, None))
    if not ctx:
        lines = [line.strip() for line in [*py.getvalue().splitlines(), *said()] if line.strip()]
        raise UnreadableGGUF(" ".join(lines[-2:]) or _own_reason(path))
    try:
        yield Header(lib, ctx)
    finally:
        lib.gguf_free(ctx)
