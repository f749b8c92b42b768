"""The audit log, runs/<model>/audit.jsonl: one JSON line per promotion, rollback and publish.

Lines are appended whole (O_APPEND) and never rewritten. Aliases are derived from the
promote and rollback lines only; publish lines record what went to a registry.
"""

from __future__ import annotations

import getpass
import json
import os
from typing import Any

from loraship import paths
from loraship.errors import VersionError
from loraship.store import atomic

MOVES = ("promote", "rollback")


def user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # a container user with no passwd entry and no USER
        return f"uid {os.getuid()}"


def entries(model: str) -> list[dict[str, Any]]:
    path = paths.audit_log(model)
    if not path.exists():
        return []
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise VersionError(f"{path} line {n} is not valid JSON ({e.msg}): repair or remove that line") from None
    return out


def moves(model: str) -> list[dict[str, Any]]:
    """Promotions and rollbacks, oldest first."""
    return [e for e in entries(model) if e.get("action") in MOVES]


def aliases(model: str) -> dict[str, str]:
    """alias → version id, as the audit log leaves them."""
    out: dict[str, str] = {}
    for e in moves(model):
        out[e["alias"]] = e["version"]
    return out


def append(model: str, entry: dict[str, Any]) -> None:
    atomic.append_line(paths.audit_log(model), json.dumps(entry, sort_keys=True))
