"""Move an alias (`<model>:latest`, `:prod`, ...) to a version only behind a passed gate; audit; roll back."""

from __future__ import annotations

import getpass
import json
from typing import Any

from . import atomic, paths, versions
from .config import Config
from .errors import GateError, VersionError
from .ollama_client import call, client, resolve_host, served_digests
from .versions import Version

_ALIAS_RE = r"^[a-z0-9][a-z0-9_.-]{0,79}$"


def _validate_alias(alias: str) -> str:
    import re

    if not re.match(_ALIAS_RE, alias or "") or re.match(r"^v[0-9]+$", alias):
        raise VersionError(f"alias {alias!r} is not valid: use lowercase letters, digits, '_', '-', '.' and not vN "
                           "(e.g. latest, prod)")
    return alias


def audit_entries(model: str) -> list[dict[str, Any]]:
    path = paths.audit_log(model)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def aliases(model: str) -> dict[str, str]:
    """alias → version id, as the audit log leaves them."""
    out: dict[str, str] = {}
    for e in audit_entries(model):
        out[e["alias"]] = e["version"]
    return out


def _gate_for(version: Version) -> dict[str, Any]:
    cmp = version.stage("compare")
    if not cmp:
        raise GateError(f"{version.id} has no comparison: run `loraship compare {version.model}:{version.id} ...` first")
    if not cmp.get("gate", {}).get("passed"):
        raise GateError(f"{version.id}'s gate failed ({cmp['gate'].get('reason', 'see its report')}): "
                        "promote refuses; --force --reason '...' records an override")
    return cmp


def _move(cfg: Config, version: Version, alias: str, action: str, extra: dict[str, Any]) -> dict[str, Any]:
    host = resolve_host(cfg.ollama.host)
    c = client(host, cfg.ollama.timeout_s)
    source, dest = f"{version.model}:{version.id}", f"{version.model}:{alias}"
    served = served_digests(host, c)
    if source not in served:
        raise VersionError(f"{source} is not served by {host}: run `loraship register --model {version.model} {version.id}`")
    registered = (version.stage("register") or {}).get("digest")
    if registered and served[source] != registered:
        raise GateError(f"{source} on {host} has digest {served[source][:19]}, not the registered {registered[:19]}: "
                        "re-register it before promoting")
    before = served.get(dest)
    call(host, f"copying {source} to {dest}", lambda: c.copy(source, dest))
    after = served_digests(host, c).get(dest)
    if after != served[source]:
        raise GateError(f"{dest} reads back as {after}, not {served[source]}: the copy did not take; run again")
    entry = {"time": versions.manifest.now_iso(), "user": getpass.getuser(), "action": action, "alias": alias,
             "tag": dest, "version": version.id, "from_digest": before, "to_digest": after, "host": host, **extra}
    atomic.append_line(paths.audit_log(version.model), json.dumps(entry, sort_keys=True))
    return entry


def promote(cfg: Config, version: Version, alias: str = "latest", *, force: bool = False,
            reason: str | None = None) -> dict[str, Any]:
    _validate_alias(alias)
    extra: dict[str, Any] = {"forced": force}
    try:
        cmp = _gate_for(version)
        host = resolve_host(cfg.ollama.host)
        served = served_digests(host, client(host, cfg.ollama.timeout_s)).get(f"{version.model}:{version.id}")
        if cmp["digest"] != served:
            raise GateError(f"{version.id} was compared at digest {str(cmp['digest'])[:19]} but {host} serves "
                            f"{str(served)[:19]}: compare again before promoting")
        extra["report_sha256"] = cmp["report_sha256"]
    except GateError:
        if not force:
            raise
        if not reason:
            raise GateError("--force needs --reason '...': an override is recorded with why") from None
        extra["override_reason"] = reason
        extra["report_sha256"] = (version.stage("compare") or {}).get("report_sha256")
    return _move(cfg, version, alias, "promote", extra)


def _promotion_stack(history: list[dict[str, Any]]) -> list[str]:
    """Promotions push a version; a rollback pops back to its target, so repeated rollbacks walk back in time."""
    stack: list[str] = []
    for e in history:
        if e["action"] == "promote":
            stack.append(e["version"])
        elif e["version"] in stack:
            del stack[stack.index(e["version"]) + 1:]
        else:
            stack.append(e["version"])
    return stack


def rollback(cfg: Config, model: str, alias: str = "latest", to: str | None = None) -> dict[str, Any]:
    """Point the alias back at the previously promoted version (or `to`); the next run trains on top of it."""
    _validate_alias(alias)
    history = [e for e in audit_entries(model) if e["alias"] == alias]
    if to is None:
        if not history:
            raise VersionError(f"{model}:{alias} was never promoted: nothing to roll back")
        stack = _promotion_stack(history)
        if len(stack) < 2:
            raise VersionError(f"{model}:{alias} has no earlier promoted version than {stack[-1]}: pass --to vK")
        to = stack[-2]
    target = versions.get(model, to)
    entry = _move(cfg, target, alias, "rollback", {"from_version": history[-1]["version"] if history else None})
    state = versions.read_state(model)
    state["next_parent"] = target.id
    versions.write_state(model, state)
    return entry
