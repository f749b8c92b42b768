"""GGUF metadata as /api/create and /api/show read it: key/values and the parameter count."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

FILE_TYPES = {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1",
              10: "Q2_K", 11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M",
              16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K", 32: "BF16"}

_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q",
            12: "d"}


def read_gguf(path: Path) -> tuple[dict[str, Any], int]:
    """Key/values (long arrays elided, as /api/show does) and the parameter count."""
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise ValueError("not a GGUF file")
        _version, n_tensors, n_kv = struct.unpack("<IQQ", f.read(20))

        def string() -> str:
            (n,) = struct.unpack("<Q", f.read(8))
            return f.read(n).decode("utf-8", "replace")

        def value(t: int) -> Any:
            if t == 8:
                return string()
            if t == 9:
                (item, n) = struct.unpack("<IQ", f.read(12))
                items = [value(item) for _ in range(n)]
                return items if n <= 64 else None
            fmt = "<" + _SCALARS[t]
            return struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0]

        kv = {}
        for _ in range(n_kv):
            key = string()
            (t,) = struct.unpack("<I", f.read(4))
            kv[key] = value(t)
        params = 0
        for _ in range(n_tensors):
            string()
            (n_dims,) = struct.unpack("<I", f.read(4))
            dims = struct.unpack(f"<{n_dims}Q", f.read(8 * n_dims))
            f.read(12)  # type and offset
            count = 1
            for d in dims:
                count *= d
            params += count
    return kv, params
