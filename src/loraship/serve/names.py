"""Ollama model names, `[host[:port]/][namespace/]model[:tag]`, validated as Ollama validates them
(types/model/name.go), and what loraship reads out of them.

loraship's own tags are `<model>:vN` on the local server, where `<model>` is also a folder
under runs/ and so keeps the stricter local rule (paths.validate_model_name). A published copy
lives under a registry: `<host[:port]>/<namespace>/<model>:vN`, whose parts must also be valid
repository components for an OCI registry (lowercase, separators only between characters).
"""

from __future__ import annotations

import re
from typing import NamedTuple

from loraship import paths
from loraship.errors import ConfigError, VersionError

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"
# distribution/reference: a path component of a repository name
_REGISTRY_COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|[-]*)[a-z0-9]+)*$")


class OllamaName(NamedTuple):
    host: str
    namespace: str
    model: str
    tag: str

    def __str__(self) -> str:
        return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"

    def shortest(self) -> str:
        """Name.DisplayShortest: default host and namespace left out."""
        if self.host.lower() != DEFAULT_HOST:
            return str(self)
        if self.namespace.lower() != DEFAULT_NAMESPACE:
            return f"{self.namespace}/{self.model}:{self.tag}"
        return f"{self.model}:{self.tag}"

    def is_local(self) -> bool:
        return self.host.lower() == DEFAULT_HOST and self.namespace.lower() == DEFAULT_NAMESPACE


def _valid_part(kind: str, s: str) -> bool:
    """types/model/name.go isValidPart."""
    if not s or len(s) > (350 if kind == "host" else 80):
        return False
    if not (s[0].isascii() and (s[0].isalnum() or s[0] == "_")):
        return False
    extra = {"host": "_-.:", "namespace": "_-", "model": "_-.", "tag": "_-."}[kind]
    return all(c.isascii() and (c.isalnum() or c in extra) for c in s[1:])


def _allowed(kind: str) -> str:
    return {"host": "'_', '-', '.', ':'", "namespace": "'_', '-'"}.get(kind, "'_', '-', '.'")


def split_ollama_name(name: str) -> OllamaName:
    """`[host/][namespace/]model[:tag]` with Ollama's defaults, or a one-line ConfigError."""
    if not isinstance(name, str) or "@" in name:
        raise ConfigError(f"Ollama name {name!r} is not valid: use [host/][namespace/]model[:tag]")
    rest, tag = name, DEFAULT_TAG
    if rest.rfind(":") > rest.rfind("/"):
        rest, _, tag = rest.rpartition(":")
    parts = rest.split("/")
    if len(parts) > 3 and "://" not in rest:
        parts = ["/".join(parts[:-2]), *parts[-2:]]
    host, ns = DEFAULT_HOST, DEFAULT_NAMESPACE
    if len(parts) >= 3:
        host = parts[-3].split("://", 1)[-1]
    if len(parts) >= 2:
        ns = parts[-2]
    parsed = OllamaName(host, ns, parts[-1], tag)
    for kind, value in zip(OllamaName._fields, parsed, strict=True):
        if not _valid_part(kind, value):
            raise ConfigError(
                f"Ollama name {name!r} is not valid: the {kind} {value!r} must be 1-"
                f"{350 if kind == 'host' else 80} characters, start with a letter, digit or '_'"
                f" and use only letters, digits, {_allowed(kind)}")
    return parsed


def validate_ollama_name(name: str) -> str:
    """Return `name` unchanged if Ollama accepts it; raise a one-line ConfigError otherwise."""
    split_ollama_name(name)
    return name


def explicit_host(name: str) -> bool:
    """Whether the name spells out a host (three parts), as ParseNameBare reads it."""
    rest = name.rpartition(":")[0] if name.rfind(":") > name.rfind("/") else name
    return rest.count("/") >= 2


def _version_parts(tag: str) -> OllamaName:
    """A tag that names a version: Ollama-valid, with a local model folder name and a vN tag."""
    if not isinstance(tag, str) or tag.rfind(":") <= tag.rfind("/"):
        raise VersionError(f"tag {tag!r} must be MODEL:vN, e.g. mining:v2 "
                           "(or the full form HOST[:PORT]/NAMESPACE/MODEL:vN)")
    name = split_ollama_name(tag)
    paths.validate_model_name(name.model)
    paths.parse_version_id(name.tag)
    return name


def parse_version_tag(tag: str) -> tuple[str, str]:
    """(model, vN) of a tag on the local server: `mining:v2`, or its full form
    `registry.ollama.ai/library/mining:v2`. A registry copy is refused with the command that
    handles it."""
    name = _version_parts(tag)
    if not name.is_local():
        raise VersionError(f"{tag!r} names a published copy ({name.host}/{name.namespace}); compare and "
                           f"promote work on the registered tag {name.model}:{name.tag} on the local server "
                           f"(`loraship publish -m {name.model} {name.tag}` ships it to a registry)")
    return name.model, name.tag


def parse_publish_target(target: str) -> tuple[OllamaName | None, str]:
    """`vN`, `MODEL:vN` or `HOST[:PORT]/NAMESPACE/MODEL:vN`: (the name when it carries one, vN)."""
    if ":" not in target and "/" not in target:
        paths.parse_version_id(target)
        return None, target
    name = _version_parts(target)
    if explicit_host(target):
        return name, name.tag
    if "/" in target:
        raise VersionError(f"{target!r} has a namespace but no registry: write HOST[:PORT]/{target}, "
                           "or set publish.registry")
    return OllamaName("", "", name.model, name.tag), name.tag


def registry_name(registry: str, namespace: str, model: str, tag: str) -> str:
    """`registry/namespace/model:tag`, valid for Ollama and as an OCI repository name."""
    name = f"{registry}/{namespace}/{model}:{tag}"
    if "/" in registry + namespace:
        raise ConfigError(f"registry {registry!r} with namespace {namespace!r} does not make a valid name "
                          f"({name!r}): write the registry as HOST[:PORT] and the namespace without '/'")
    split_ollama_name(name)
    for kind, part in (("namespace", namespace), ("model", model)):
        if not _REGISTRY_COMPONENT.match(part):
            raise ConfigError(f"the {kind} {part!r} is not a valid registry repository component: use "
                              "lowercase letters and digits, with '.', '_' or '-' only between them")
    return name
