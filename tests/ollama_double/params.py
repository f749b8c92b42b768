"""Request fields as Ollama's handlers bind them: names, options, and the defaults a runner uses."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from .faults import HTTPError

# api/types.go in Ollama: the Options fields and the Runner fields (their json names and Go types),
# the only keys a server's options and parameters know.
PARAMETER_KINDS = {
    "num_keep": "int", "seed": "int", "num_predict": "int", "top_k": "int", "top_p": "float",
    "min_p": "float", "typical_p": "float", "repeat_last_n": "int", "temperature": "float",
    "repeat_penalty": "float", "presence_penalty": "float", "frequency_penalty": "float", "stop": "list",
    "num_ctx": "int", "num_batch": "int", "num_gpu": "int", "main_gpu": "int", "use_mmap": "bool",
    "num_thread": "int",
}

DEFAULTS = {"num_ctx": 2048, "temperature": 0.8, "top_k": 40, "top_p": 0.9, "min_p": 0.0,
            "typical_p": 1.0, "repeat_penalty": 1.1, "presence_penalty": 0.0,
            "frequency_penalty": 0.0, "num_predict": -1, "seed": -1, "stop": []}


def now() -> str:
    return datetime.now().astimezone().isoformat()


def name_of(body: dict, *keys: str) -> str:
    for key in keys:
        value = body.get(key)
        if value:
            if not isinstance(value, str):
                raise HTTPError(400, f"json: cannot unmarshal {type(value).__name__} into Go struct "
                                     f"field .{key} of type string")
            return value
    return ""


def check_options(opts: Any, strict: bool, drop_bad: bool = False) -> dict[str, Any]:
    """Options / create parameters: known names with JSON values of the right kind. `drop_bad`:
    a wrongly typed value is left out instead of refused (what /api/create does, recorded)."""
    if opts is None:
        return {}
    if not isinstance(opts, dict):
        raise HTTPError(400, "json: cannot unmarshal options into map[string]interface {}")
    out = {}
    for key, value in opts.items():
        kind = PARAMETER_KINDS.get(key)
        if kind is None:
            if strict:
                raise HTTPError(400, f"unknown parameter '{key}'")
            continue  # Ollama logs "invalid option provided" and ignores it
        ok = {"int": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
              "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
              "bool": lambda v: isinstance(v, bool),
              "list": lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v)}[kind]
        if value is not None and not ok(value):
            if drop_bad:
                continue
            want = {"int": "integer", "float": "float32", "bool": "boolean",
                    "list": "array of strings"}[kind]
            raise HTTPError(400, f"option {key!r} must be of type {want}".replace("'", '"'))
        out[key] = int(value) if kind == "int" and value is not None else value
    return out
