"""Move an alias (`<model>:latest`, `:prod`, ...) to a version only behind a passed gate; audit; roll back.

The gate covers a digest, not a name: a version may be promoted only while the server
serves the very manifest that was compared. Every move is copied on the server, read
back, and appended to runs/<model>/audit.jsonl; that log is also where rollback finds
the previously promoted version. With publish.registry configured, the alias is also
re-pushed to the registry (release/publish.py); the registry must answer before anything moves.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from loraship.config import Config
from loraship.errors import GateError, VersionError
from loraship.release import audit, checks, publish
from loraship.serve.ollama_client import (
    call,
    client,
    resolve_host,
    same_digest,
    served_digests,
    short,
)
from loraship.store import manifest, versions
from loraship.store.versions import Version

# The audit log lives in release/audit.py; these names stay importable from here.
_user = audit.user
audit_entries = audit.entries
aliases = audit.aliases


def _move(host: str, c: Any, served: dict[str, str], version: Version, alias: str, action: str,
          extra: dict[str, Any]) -> dict[str, Any]:
    """Copy `<model>:vN` onto the alias, read it back, append the audit line."""
    source, dest = f"{version.model}:{version.id}", f"{version.model}:{alias}"
    checks.check_served(version, served, host)
    before = served.get(dest)
    call(host, f"copying {source} to {dest}", lambda: c.copy(source, dest))
    after = served_digests(host, c).get(dest)
    if not same_digest(after, served[source]):
        raise GateError(f"{dest} reads back as {short(after)}, not {short(served[source])}: the copy did not "
                        "take; run again")
    entry = {"time": manifest.now_iso(), "user": _user(), "host": host, "action": action, "alias": alias,
             "tag": dest, "version": version.id, "from_version": aliases(version.model).get(alias),
             "from_digest": before, "to_digest": after, **extra}
    audit.append(version.model, entry)
    return entry


def promote(cfg: Config, version: Version, alias: str = "latest", *, force: bool = False,
            reason: str | None = None, log: Callable[[str], None] = lambda s: None,
            progress: Callable[[int, int], None] = lambda a, b: None) -> dict[str, Any]:
    """Point `<model>:<alias>` at the version if its gate passed at the served digest (or --force --reason)."""
    checks.validate_alias(alias)
    reason = (reason or "").strip() or None
    if force and not reason:
        raise GateError("--force needs --reason '...': an override is recorded with why")
    host = resolve_host(cfg.ollama.host)
    c = client(host, cfg.ollama.timeout_s)
    served = served_digests(host, c)
    checks.check_served(version, served, host)  # no override: a forced promotion still ships what was registered
    extra = checks.gate_or_override(version, served.get(f"{version.model}:{version.id}"), host, force, reason)
    publish.preflight(cfg)
    entry = _move(host, c, served, version, alias, "promote", extra)
    return publish.repush_alias(cfg, version, alias, entry, log=log, progress=progress)


def _promotion_stack(history: list[dict[str, Any]]) -> list[str]:
    """Promotions push a version; a rollback pops back to its target, so repeated rollbacks walk back in time."""
    stack: list[str] = []
    for e in history:
        if e["action"] == "rollback" and e["version"] in stack:
            del stack[stack.index(e["version"]) + 1:]
        elif not stack or stack[-1] != e["version"]:  # promoting the alias's own version again moves nothing
            stack.append(e["version"])
    return stack


def _previous(model: str, alias: str) -> str:
    history = [e for e in audit.moves(model) if e["alias"] == alias]
    if not history:
        raise VersionError(f"{model}:{alias} was never promoted: nothing to roll back")
    stack = _promotion_stack(history)
    if len(stack) < 2:
        raise VersionError(f"{model}:{alias} has no version promoted before {stack[-1]}: nothing to roll back to; "
                           "pass --to vK to choose one")
    return stack[-2]


def rollback(cfg: Config, model: str, alias: str = "latest", to: str | None = None, *,
             log: Callable[[str], None] = lambda s: None,
             progress: Callable[[int, int], None] = lambda a, b: None) -> dict[str, Any]:
    """Point the alias back at the previously promoted version (or `to`); the next run trains on top of it."""
    checks.validate_alias(alias)
    target = versions.get(model, to or _previous(model, alias))
    host = resolve_host(cfg.ollama.host)
    c = client(host, cfg.ollama.timeout_s)
    report = (target.stage("compare") or {}).get("report_sha256")
    publish.preflight(cfg)
    entry = _move(host, c, served_digests(host, c), target, alias, "rollback", {"report_sha256": report})
    state = versions.read_state(model)
    state["next_parent"] = target.id
    versions.write_state(model, state)
    return publish.repush_alias(cfg, target, alias, entry, log=log, progress=progress)
