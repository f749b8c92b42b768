"""Model names as an Ollama server parses them (types/model/name.go: ParseName, IsValid), written
here for the double itself so that a mistake in loraship's own name rules cannot hide in it."""

from __future__ import annotations

from typing import NamedTuple

DEFAULT_HOST, DEFAULT_NAMESPACE, DEFAULT_TAG = "registry.ollama.ai", "library", "latest"
_MISSING = "!missing!"  # what an empty part cut around a separator becomes: never valid


class Name(NamedTuple):
    host: str
    namespace: str
    model: str
    tag: str


def _cut_last(s: str, sep: str) -> tuple[str, str, bool]:
    i = s.rfind(sep)
    if i < 0:
        return s, "", False
    return s[:i] or _MISSING, s[i + 1:] or _MISSING, True


def parse_bare(s: str) -> Name:
    host = namespace = tag = ""
    if s.rfind(":") > s.rfind("/"):  # "/" never appears in a tag, so the last ":" after it starts one
        s, tag, _ = _cut_last(s, ":")
    s, model, cut = _cut_last(s, "/")
    if not cut:
        return Name(host, namespace, s, tag)
    s, namespace, cut = _cut_last(s, "/")
    if not cut:
        return Name(host, s, model, tag)
    scheme, sep, rest = s.partition("://")
    return Name(rest if sep else scheme, namespace, model, tag)


def parse(s: str) -> Name:
    """The name with Ollama's defaults filled in (it may still be invalid: see valid())."""
    n = parse_bare(s)
    return Name(n.host or DEFAULT_HOST, n.namespace or DEFAULT_NAMESPACE, n.model, n.tag or DEFAULT_TAG)


def _valid_part(kind: str, s: str) -> bool:
    if not 1 <= len(s) <= (350 if kind == "host" else 80):
        return False
    word = lambda c: c.isascii() and (c.isalnum() or c == "_")  # noqa: E731
    if not word(s[0]):
        return False
    for c in s[1:]:
        if c in "_-" or word(c):
            continue
        if c == "." and kind != "namespace":
            continue
        if c == ":" and kind == "host":
            continue
        return False
    return True


def valid(n: Name) -> bool:
    return all(_valid_part(k, p) for k, p in zip(("host", "namespace", "model", "tag"), n))


class InvalidName(ValueError):
    """A name an Ollama server answers with "invalid model name"."""


def require(s: str) -> Name:
    n = parse_valid(s)
    if n is None:
        raise InvalidName(s)
    return n


def parse_valid(s: str) -> Name | None:
    n = parse(s) if isinstance(s, str) else None
    return n if n is not None and valid(n) else None


def display_shortest(n: Name) -> str:
    if n.host.lower() != DEFAULT_HOST:
        return f"{n.host}/{n.namespace}/{n.model}:{n.tag}"
    if n.namespace.lower() != DEFAULT_NAMESPACE:
        return f"{n.namespace}/{n.model}:{n.tag}"
    return f"{n.model}:{n.tag}"
