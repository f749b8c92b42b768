"""Reading rows for the data stage.

Two kinds of JSONL come in here:

* user input, in one of three formats detected per row (chat ``messages``,
  ``instruction``/``input``/``output``, ``question``/``answer``), validated and
  turned into normalised rows; every bad row becomes a ``Problem`` that names its
  file, line, reason and fix;
* normalised rows that ``prepare()`` wrote into an earlier version's ``data/``
  folder (``load_rows``).

Normalised row (key order is fixed so that files are byte-reproducible)::

    {"id", "messages": [{"role", "content"}, ...], "topic", "source",
     "origin": "new" | "replay", "from_version": "vK", "hash"}
"""

from __future__ import annotations

import hashlib
import json
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loraship.errors import DataError, VersionError
from loraship.paths import parse_version_id

ROLES = ("system", "user", "assistant")
ORIGINS = ("new", "replay")
_BOM = b"\xef\xbb\xbf"

# One hint per kind of problem: the message a user sees ends with the fix.
HINTS = {
    "not UTF-8": "re-save the file as UTF-8",
    "invalid JSON": "each line must hold exactly one JSON object",
    "wrong type": "see the expected type above",
    "missing field": "chat rows need 'messages'; instruction rows 'instruction' and 'output';"
    " Q&A rows 'question' and 'answer'",
    "mixed formats": "use one format per row: 'messages', or 'instruction'/'output', or 'question'/'answer'",
    "empty content": "fill in the text or remove the row",
    "unknown role": "roles are system, user and assistant",
    "wrong role order": "after an optional first system message, turns alternate user/assistant"
    " and end with assistant",
    "too long": "shorten the row or raise data.max_chars",
    "duplicate id": "give every row its own id, or drop 'id' to get '<file>:<line>' ids",
}


@dataclass(frozen=True, order=True)
class Problem:
    """One rejected input row. Ordered by where it is, so the first one is reported first."""

    file_index: int
    line: int
    file: str
    kind: str
    detail: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.kind}: {self.detail} ({HINTS[self.kind]})"

    def record(self) -> dict[str, Any]:
        return {"file": self.file, "line": self.line, "reason": self.kind, "detail": self.detail,
                "hint": HINTS[self.kind]}


@dataclass
class ParsedRow:
    """A valid input row: where it came from, its detected format and its normalised form."""

    file_index: int
    line: int
    file: str
    fmt: str
    row: dict[str, Any]


class _RowError(Exception):
    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind, self.detail = kind, detail


# ---------------------------------------------------------------- hashing / rows


def _norm_text(text: str) -> str:
    # NFC first: a composed and a decomposed "é" look the same to a reader.
    return " ".join(unicodedata.normalize("NFC", text).lower().split())


def row_hash(messages: list[dict[str, str]]) -> str:
    """sha256 of the normalised conversation: roles plus lowercased, whitespace-collapsed text.

    Whitespace is collapsed, so the tab and newline separators below cannot occur
    inside a normalised content and the encoding is unambiguous.
    """
    text = "\n".join(f"{m['role']}\t{_norm_text(m['content'])}" for m in messages)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def make_row(row_id: str, messages: list[dict[str, str]], topic: str | None, source: str | None,
             origin: str, from_version: str) -> dict[str, Any]:
    return {"id": row_id, "messages": messages, "topic": topic, "source": source,
            "origin": origin, "from_version": from_version, "hash": row_hash(messages)}


def dumps_rows(rows: list[dict[str, Any]]) -> str:
    """JSONL text. U+2028/2029 are escaped: `str.splitlines()` readers would split on them."""
    lines = []
    for r in rows:
        s = json.dumps(r, ensure_ascii=False)
        lines.append(s.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029") + "\n")
    return "".join(lines)


# ---------------------------------------------------------------- input validation


def _text(obj: dict[str, Any], key: str, where: str | None = None) -> str:
    name = where or key
    if key not in obj or obj[key] is None:
        raise _RowError("missing field", f"'{name}' is missing")
    value = obj[key]
    if not isinstance(value, str):
        raise _RowError("wrong type", f"'{name}' must be a string, got {type(value).__name__}")
    if not value.strip():
        raise _RowError("empty content", f"'{name}' is empty")
    return value


def _check_order(msgs: list[dict[str, str]]) -> None:
    start = 1 if msgs[0]["role"] == "system" else 0
    for j, m in enumerate(msgs[start:]):
        expected = "user" if j % 2 == 0 else "assistant"
        if m["role"] != expected:
            raise _RowError("wrong role order",
                            f"messages[{start + j}] is '{m['role']}', expected '{expected}'")
    if len(msgs) == start:
        raise _RowError("wrong role order", "only a system message; a user and an assistant turn must follow")
    if msgs[-1]["role"] != "assistant":
        raise _RowError("wrong role order",
                        f"the last message is '{msgs[-1]['role']}'; a conversation must end with 'assistant'")


def _chat(obj: dict[str, Any]) -> list[dict[str, str]]:
    msgs = obj["messages"]
    if not isinstance(msgs, list):
        raise _RowError("wrong type", f"'messages' must be a list of {{role, content}} objects,"
                                      f" got {type(msgs).__name__}")
    if not msgs:
        raise _RowError("missing field", "'messages' is an empty list")
    out = []
    for i, m in enumerate(msgs):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise _RowError("wrong type", f"'{where}' must be an object with role and content,"
                                          f" got {type(m).__name__}")
        if "role" not in m:
            raise _RowError("missing field", f"'{where}.role' is missing")
        role = m["role"]
        if not isinstance(role, str):
            raise _RowError("wrong type", f"'{where}.role' must be a string, got {type(role).__name__}")
        if role not in ROLES:
            raise _RowError("unknown role", f"'{where}.role' is {role!r}")
        out.append({"role": role, "content": _text(m, "content", f"{where}.content")})
    _check_order(out)
    return out


def _instruction(obj: dict[str, Any]) -> list[dict[str, str]]:
    user = _text(obj, "instruction")
    extra = obj.get("input")
    if extra is not None and not isinstance(extra, str):
        raise _RowError("wrong type", f"'input' must be a string, got {type(extra).__name__}")
    if extra and extra.strip():
        user = f"{user}\n\n{extra}"
    return [{"role": "user", "content": user}, {"role": "assistant", "content": _text(obj, "output")}]


def _qa(obj: dict[str, Any]) -> list[dict[str, str]]:
    return [{"role": "user", "content": _text(obj, "question")},
            {"role": "assistant", "content": _text(obj, "answer")}]


_FORMATS = {"chat": _chat, "instruction": _instruction, "qa": _qa}
# Any one of these keys claims the row for its format, so a half-written row is
# reported as missing its other field rather than as "unknown format".
_MARKERS = {"messages": "chat", "instruction": "instruction", "output": "instruction",
            "question": "qa", "answer": "qa"}


def detect_format(obj: dict[str, Any]) -> str:
    found = sorted({fmt for key, fmt in _MARKERS.items() if key in obj})
    if not found:
        raise _RowError("missing field", "no 'messages', 'instruction'/'output' or 'question'/'answer' field")
    if len(found) > 1:
        raise _RowError("mixed formats", f"the row has fields of several formats ({', '.join(found)})")
    return found[0]


def _optional_text(obj: dict[str, Any], key: str) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _RowError("wrong type", f"'{key}' must be a string or null, got {type(value).__name__}")
    return value.strip() or None


def _row_id(obj: dict[str, Any], default: str) -> str:
    if "id" not in obj or obj["id"] is None:
        return default
    value = obj["id"]
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise _RowError("wrong type", f"'id' must be a string or an integer, got {type(value).__name__}")
    text = str(value).strip()
    if not text:
        raise _RowError("empty content", "'id' is empty")
    return text


def normalise(obj: Any, default_id: str, max_chars: int, version_id: str) -> tuple[str, dict[str, Any]]:
    """One decoded JSON value → (format, normalised row); raises _RowError with the reason."""
    if not isinstance(obj, dict):
        raise _RowError("wrong type", f"a row must be a JSON object, got {type(obj).__name__}")
    fmt = detect_format(obj)
    messages = _FORMATS[fmt](obj)
    size = sum(len(m["content"]) for m in messages)
    if size > max_chars:
        raise _RowError("too long", f"{size} characters, over the limit of {max_chars}")
    row = make_row(_row_id(obj, default_id), messages, _optional_text(obj, "topic"),
                   _optional_text(obj, "source"), "new", version_id)
    return fmt, row


def _parse_line(raw: bytes, default_id: str, max_chars: int, version_id: str) -> tuple[str, dict[str, Any]]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _RowError("not UTF-8", f"invalid byte 0x{raw[e.start]:02x} at byte {e.start + 1} of the line") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise _RowError("invalid JSON", f"{e.msg} at column {e.colno}") from None
    return normalise(obj, default_id, max_chars, version_id)


def read_input(path: Path, file_index: int, label: str, max_chars: int,
               version_id: str) -> tuple[list[ParsedRow], list[Problem]]:
    """Every non-blank line of one input file, as valid rows and problems (1-based line numbers)."""
    data = _read_bytes(path)
    if data.startswith(_BOM):  # editors on Windows add one; it is not part of the first row
        data = data[len(_BOM):]
    rows, problems = [], []
    for n, raw in enumerate(data.split(b"\n"), start=1):
        raw = raw.rstrip(b"\r")
        if not raw.strip():
            continue
        try:
            fmt, row = _parse_line(raw, f"{label}:{n}", max_chars, version_id)
        except _RowError as e:
            problems.append(Problem(file_index, n, str(path), e.kind, e.detail))
            continue
        rows.append(ParsedRow(file_index, n, str(path), fmt, row))
    return rows, problems


def _read_bytes(path: Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: input file not found (check the path)") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder, not a JSONL file (pass the .jsonl files inside it)") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read it: {e.strerror}") from None


# ---------------------------------------------------------------- prepare()'s own files


def _stored_problem(row: Any) -> str | None:
    if not isinstance(row, dict):
        return "not a JSON object"
    for key in ("id", "origin", "from_version"):
        if not isinstance(row.get(key), str):
            return f"'{key}' is missing or not a string"
    if row["origin"] not in ORIGINS:
        return f"'origin' is {row['origin']!r}, expected 'new' or 'replay'"
    try:
        parse_version_id(row["from_version"])
    except VersionError:
        return f"'from_version' is {row['from_version']!r}, expected vN"
    msgs = row.get("messages")
    if not isinstance(msgs, list) or not msgs or not all(
        isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str) for m in msgs
    ):
        return "'messages' is not a list of {role, content} objects"
    for key in ("topic", "source"):
        if row.get(key) is not None and not isinstance(row[key], str):
            return f"'{key}' is not a string or null"
    return None


def load_rows(path: Path) -> list[dict[str, Any]]:
    """Read a normalised JSONL written by prepare(). The hash is recomputed from the messages,
    so deduplication never trusts a stale or hand-edited hash field."""
    path = Path(path)
    data = _read_bytes(path)
    rows = []
    for n, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DataError(f"{path}:{n}: not a loraship data row: {e} (the file is written by"
                            " `loraship data`; restore it rather than editing it)") from None
        problem = _stored_problem(row)
        if problem:
            raise DataError(f"{path}:{n}: not a loraship data row: {problem} (the file is written by"
                            " `loraship data`; restore it rather than editing it)")
        row["hash"] = row_hash(row["messages"])
        rows.append(row)
    return rows
