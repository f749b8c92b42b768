"""The checks a release step makes before it moves anything: a valid alias, the version served at its
registered digest, and a passed gate at that digest (or a recorded --force --reason override).
Shared by promote, rollback and publish."""

from __future__ import annotations

import re
from typing import Any

from loraship.errors import GateError, VersionError
from loraship.serve.ollama_client import same_digest, short
from loraship.serve.registry import BASE_TAG
from loraship.store.hashing import sha256_file
from loraship.store.versions import Version

_ALIAS_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,79}$")


def validate_alias(alias: str) -> str:
    # vN is the versions' own tag: an alias by that name would overwrite a registered version;
    # `base` is the training base's own tag (compare's baseline row).
    if not isinstance(alias, str) or not _ALIAS_RE.match(alias) or re.match(r"^v[0-9]+$", alias) or alias == BASE_TAG:
        raise VersionError(f"alias {alias!r} is not valid: use lowercase letters, digits, '_', '-', '.', not vN "
                           "and not base (e.g. latest, prod)")
    return alias


_GERUND = {"promote": "promoting", "publish": "publishing"}


def passed_gate(version: Version, served: str | None, host: str, action: str = "promote") -> str:
    """The report sha256 of a passed comparison of the digest served now; else GateError."""
    cmp = version.stage("compare")
    tag = f"{version.model}:{version.id}"
    if not cmp:
        parent = version.manifest.get("parent")
        pair = f"{version.model}:{parent} {tag}" if parent else tag
        raise GateError(f"{tag} has no comparison: run `loraship compare {pair}` first")
    again = f"`loraship compare {' '.join(cmp.get('tags') or [tag])}`"
    gate = cmp.get("gate") or {}
    verdict = gate.get("verdict") or ("PASS" if gate.get("passed") else "FAIL")  # older records: no verdict
    if verdict != "PASS" or not gate.get("passed"):  # only PASS promotes; INCONCLUSIVE is no evidence
        what = "was inconclusive" if verdict == "INCONCLUSIVE" else "failed"
        more = f"; {gate['decide']}" if gate.get("decide") else ""
        raise GateError(f"{tag}'s gate {what} ({gate.get('reason', 'see its report')}{more}): {action} refuses; "
                        "--force --reason '...' records an override")
    if not same_digest(cmp.get("digest"), served):
        raise GateError(f"{tag} was compared at digest {short(cmp.get('digest'))} but {host} serves "
                        f"{short(served)}: run {again} again before {_GERUND[action]}")
    report = version.path / cmp["report"]
    if not report.exists() or sha256_file(report) != cmp["report_sha256"]:
        raise GateError(f"{report} changed or vanished since the comparison: run {again} again")
    return cmp["report_sha256"]


def check_served(version: Version, served: dict[str, str], host: str) -> None:
    """The server serves the version's tag at the digest it was registered with."""
    source = f"{version.model}:{version.id}"
    if source not in served:
        raise VersionError(f"{source} is not served by {host}: run `loraship register --model {version.model} "
                           f"{version.id}`")
    registered = (version.stage("register") or {}).get("digest")
    if not same_digest(served[source], registered):
        raise GateError(f"{source} on {host} has digest {short(served[source])}, not the registered "
                        f"{short(registered)}: it was changed outside loraship; "
                        f"`loraship register --model {version.model} {version.id} --force` first")


def gate_or_override(version: Version, served: str | None, host: str, force: bool, reason: str | None,
                     action: str = "promote") -> dict[str, Any]:
    """The audit fields of a passed gate, or of a --force --reason override of a gate that did not pass."""
    extra: dict[str, Any] = {"forced": force}
    try:
        extra["report_sha256"] = passed_gate(version, served, host, action)
    except GateError as e:
        if not force:
            raise
        extra.update(override_reason=reason, overridden=str(e),
                     report_sha256=(version.stage("compare") or {}).get("report_sha256"))
    return extra
