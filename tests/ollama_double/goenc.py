"""Go-compatible encodings: what encoding/json, fmt and strconv write, byte for byte.

Manifests, params layers and API answers are compared by digest, so the double must write
the same bytes a real server writes.
"""

from __future__ import annotations

import json
import unicodedata
from decimal import Decimal
from typing import Any


def go_json(obj: Any) -> bytes:
    """encoding/json.Marshal: compact, with <, > and & escaped."""
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    for raw, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026")):
        text = text.replace(raw, esc)
    return text.encode("utf-8")


def go_value(v: Any) -> str:
    """fmt's %#v for the JSON values a params layer holds (numbers decode as float64)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return go_string(v)
    d = Decimal(repr(float(v))).normalize()
    sign, digits, exponent = d.as_tuple()
    exp10 = len(digits) + exponent - 1
    if -4 <= exp10 < 6:  # strconv 'g' with shortest digits switches to %e at 1e6
        return format(d, "f")
    rest = "".join(map(str, digits[1:]))
    return f"{'-' if sign else ''}{digits[0]}{'.' + rest if rest else ''}e{exp10:+03d}"


_GO_ESCAPES = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t",
               "\v": "\\v", "\\": "\\\\", '"': '\\"'}


def go_string(s: str) -> str:
    """strconv.Quote."""
    out = []
    for c in s:
        if c in _GO_ESCAPES:
            out.append(_GO_ESCAPES[c])
        elif c == " " or unicodedata.category(c)[0] in "LMNPS":
            out.append(c)
        elif ord(c) < 0x10000:
            out.append(f"\\x{ord(c):02x}" if ord(c) < 0x80 else f"\\u{ord(c):04x}")
        else:
            out.append(f"\\U{ord(c):08x}")
    return '"' + "".join(out) + '"'


def human_number(n: int) -> str:
    """format.HumanNumber, as /api/show's parameter_size uses it."""
    for limit, unit, digits in ((1e9, "B", 1), (1e6, "M", 2)):
        if n >= limit:
            x = n / limit
            return f"{x:.0f}{unit}" if x == int(x) else f"{x:.{digits}f}{unit}"
    return f"{n / 1e3:.0f}K" if n >= 1000 else str(n)


def go_quote(s: str) -> str:
    """parser.Command's quote(): quotes only what needs it, as `ollama show` prints."""
    if "\n" in s or s.startswith(" ") or s.endswith(" "):
        return '"""' + s + '"""' if '"' in s else '"' + s + '"'
    return s


def _layer(x: dict[str, Any]) -> dict[str, Any]:
    """manifest.Layer: fields in struct order; `from` and `name` are omitempty."""
    out = {"mediaType": x.get("mediaType", ""), "digest": x.get("digest", ""), "size": int(x.get("size", 0))}
    for key in ("from", "name"):
        if x.get(key):
            out[key] = x[key]
    return out


def go_manifest(m: dict[str, Any]) -> bytes:
    """json.Marshal(manifest.Manifest): unknown fields dropped, struct field order.

    A server writes its own manifests with json.NewEncoder(f).Encode (this plus "\\n"),
    pushes json.Marshal of the same struct, and writes a pulled one with json.Marshal: so a
    pulled copy's bytes (and /api/tags digest) differ from the origin's.
    """
    layers = m.get("layers")
    return go_json({"schemaVersion": int(m.get("schemaVersion", 0)), "mediaType": m.get("mediaType", ""),
                    "config": _layer(m.get("config") or {}),
                    "layers": None if layers is None else [_layer(x) for x in layers]})
