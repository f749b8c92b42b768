"""Publish a registered version to an OCI registry, so other machines can `ollama pull` it.

Ollama pushes a model under a name that carries the registry: `<model>:vN` is copied on the
local server to `<registry>/<namespace>/<model>:vN` and pushed through the official client.
The push is then checked from the registry's side, through its HTTP API v2: the pushed
manifest's model layer must be the version's GGUF (its sha256). Only then are the registry,
the pushed name and the model layer digest recorded, in the manifest and the audit log.
Nothing is recorded when anything fails.

A version is published behind the same gate as a promotion (or --force --reason, audited).
An alias (`latest`) is pushed only for the version the audit log says it points at; promote
and rollback re-push it themselves when a registry is configured.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from loraship.config import Config
from loraship.errors import ConfigError, GateError, LorashipError, VersionError
from loraship.release import audit
from loraship.release.checks import check_served, gate_or_override, validate_alias
from loraship.serve import names
from loraship.serve.ollama_client import call, client, resolve_host, served_digests, short
from loraship.store import manifest
from loraship.store.hashing import sha256_file
from loraship.store.versions import Version

Log = Callable[[str], None]
Progress = Callable[[int, int], None]
MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"
MODEL_LAYER = "application/vnd.ollama.image.model"


class PublishError(LorashipError):
    """A registry did not answer, refused a push, or holds something other than what was pushed."""


@dataclass(frozen=True)
class Target:
    registry: str  # HOST[:PORT]
    namespace: str
    insecure: bool

    def name(self, model: str, tag: str) -> str:
        return names.registry_name(self.registry, self.namespace, model, tag)

    def url(self, path: str) -> str:
        # Ollama's --insecure means plain HTTP (makeRequest rewrites the scheme); so does ours.
        return f"{'http' if self.insecure else 'https'}://{self.registry}{path}"


def target(cfg: Config) -> Target | None:
    """The configured registry (publish.registry, publish.namespace, publish.insecure); None when unset."""
    p = cfg.publish
    if not p.registry:
        return None
    return Target(p.registry.strip(), p.namespace.strip(), p.insecure)


def _require_target(cfg: Config) -> Target:
    t = target(cfg)
    if t is None:
        raise ConfigError("no registry to publish to: set publish.registry (HOST[:PORT]) in train/<model>.yaml, "
                          "pass --registry HOST[:PORT], or name it: `loraship publish HOST:PORT/NAMESPACE/MODEL:vN`")
    return t


# ------------------------------------------------------------------ the registry's side

def _get(t: Target, path: str, timeout: float, accept: str | None = None) -> Any:
    import httpx

    try:
        return httpx.get(t.url(path), headers={"Accept": accept} if accept else None, timeout=timeout)
    except httpx.HTTPError as e:
        hint = "" if t.insecure else "; a plain-HTTP registry needs publish.insecure: true (--insecure)"
        raise PublishError(f"registry {t.registry} did not answer {t.url(path)} ({type(e).__name__}: "
                           f"{str(e).splitlines()[0] if str(e) else 'no detail'}): is it running? "
                           f"(`make registry-up` starts one){hint}") from None


def check_registry(t: Target, timeout: float = 10.0) -> None:
    """The registry answers the Docker Registry HTTP API v2 without asking for a login."""
    r = _get(t, "/v2/", timeout)
    if r.status_code == 401:
        raise PublishError(f"registry {t.registry} asks for a login; Ollama pushes with its own key only to "
                           "ollama.com: use a registry the Ollama server can push to without one")
    if r.status_code != 200 or not r.headers.get("Docker-Distribution-API-Version", "").startswith("registry/2"):
        raise PublishError(f"{t.url('/v2/')} answered HTTP {r.status_code}, not the Docker Registry HTTP API "
                           "v2: check publish.registry (HOST[:PORT] of the registry itself)")


def read_back(t: Target, model: str, tag: str, timeout: float) -> tuple[dict[str, Any], str]:
    """The pushed manifest as the registry serves it, and its digest."""
    r = _get(t, f"/v2/{t.namespace}/{model}/manifests/{tag}", timeout, accept=MANIFEST_V2)
    if r.status_code != 200:
        raise PublishError(f"{t.name(model, tag)} is not readable from the registry after the push "
                           f"(HTTP {r.status_code}: {r.text.strip()[:200]})")
    try:
        m = json.loads(r.content)
        layers = [x for x in m["layers"] if x.get("mediaType") == MODEL_LAYER]
    except (ValueError, KeyError, TypeError, AttributeError):
        raise PublishError(f"the registry's manifest for {t.name(model, tag)} is not an Ollama model "
                           "manifest (no layers)") from None
    if len(layers) != 1:
        raise PublishError(f"the registry's manifest for {t.name(model, tag)} has {len(layers)} model layers, "
                           "not one")
    digest = r.headers.get("Docker-Content-Digest") or ""
    return m, digest


def _model_layer(m: dict[str, Any]) -> str:
    return next(x["digest"] for x in m["layers"] if x.get("mediaType") == MODEL_LAYER)


def gguf_digest(version: Version) -> str:
    """The version's GGUF as registered: the blob the local server's model layer was made from."""
    reg = version.stage("register") or {}
    if reg.get("blob_digest"):
        return reg["blob_digest"]
    exp = version.stage("export") or {}
    return "sha256:" + sha256_file(version.path / next(iter(exp["ggufs"].values())))


# ------------------------------------------------------------------ pushing one name

def _stream(host: str, c: Any, name: str, insecure: bool, progress: Progress) -> None:
    """Push through the official client, reporting bytes of all layers together."""
    seen: dict[str, tuple[int, int]] = {}

    def run() -> None:
        import ollama

        try:
            for p in c.push(name, insecure=insecure, stream=True):
                if p.digest and p.total:
                    seen[p.digest] = (p.completed or 0, p.total)
                    progress(sum(d for d, _ in seen.values()), sum(t for _, t in seen.values()))
        except ollama.ResponseError as e:  # the server's own words, e.g. the registry's refusal
            lines = str(e.error).strip().splitlines() or ["no detail"]
            raise PublishError(f"Ollama at {host} could not push {name}: {lines[0]}") from None

    call(host, f"pushing {name}", run, retries=1)


def push_one(host: str, c: Any, t: Target, source: str, tag: str, expected: str, timeout: float,
             progress: Progress) -> dict[str, Any]:
    """Copy `source` to the registry name, push it, read it back; the model layer must be `expected`."""
    model = source.split(":", 1)[0]
    name = t.name(model, tag)
    had_copy = name.lower() in served_digests(host, c)
    started = time.perf_counter()
    try:
        call(host, f"copying {source} to {name}", lambda: c.copy(source, name))
        _stream(host, c, name, t.insecure, progress)
        pushed_s = time.perf_counter() - started
        m, manifest_digest = read_back(t, model, tag, timeout)
    except LorashipError:
        if not had_copy:  # leave the server as it was: a retry starts clean
            _forget(host, c, name)
        raise
    layer = _model_layer(m)
    if layer != expected:
        raise PublishError(f"the registry's {name} has model layer {layer}, not {source}'s GGUF {expected}: "
                           "something else was pushed to that name meanwhile; nothing recorded, publish again")
    return {"name": name, "model_layer": layer, "manifest_digest": manifest_digest,
            "push_s": round(pushed_s, 3), "verify_s": round(time.perf_counter() - started - pushed_s, 3)}


def _forget(host: str, c: Any, name: str) -> None:
    try:
        call(host, f"removing {name}", lambda: c.delete(name), retries=1)
    except LorashipError:
        pass  # the copy shares every blob with <model>:vN; a leftover name costs nothing


# ------------------------------------------------------------------ publish

def _target_for(cfg: Config, override: names.OllamaName | None) -> Target:
    if override is not None and override.host:
        return Target(override.host, override.namespace, cfg.publish.insecure)
    return _require_target(cfg)


def _check_alias(version: Version, alias: str) -> None:
    validate_alias(alias)
    points = audit.aliases(version.model).get(alias)
    if points != version.id:
        now = f"points at {points}" if points else "was never promoted"
        raise VersionError(f"{version.model}:{alias} {now}, not {version.id}: `loraship promote "
                           f"{version.model}:{version.id} --alias {alias}` moves it (and re-pushes it to the "
                           "registry)")


def publish(cfg: Config, version: Version, *, alias: str | None = None, force: bool = False,
            reason: str | None = None, to: names.OllamaName | None = None, log: Log = lambda s: None,
            progress: Progress = lambda a, b: None) -> dict[str, Any]:
    """Push `<model>:vN` (and `alias`) to the registry, verify it there, then record it."""
    t = _target_for(cfg, to)
    t.name(version.model, version.id)  # a name the registry would refuse fails before any call
    reason = (reason or "").strip() or None
    if force and not reason:
        raise GateError("--force needs --reason '...': an override is recorded with why")
    source = f"{version.model}:{version.id}"
    if not version.stage("register"):
        raise VersionError(f"{source} is not registered: run `loraship register --model {version.model} "
                           f"{version.id}` (publish pushes what the local server serves)")
    if alias:
        _check_alias(version, alias)
    host = resolve_host(cfg.ollama.host)
    c = client(host, cfg.ollama.timeout_s)
    served = served_digests(host, c)
    check_served(version, served, host)
    extra = gate_or_override(version, served.get(source), host, force, reason, action="publish")
    check_registry(t)
    expected = gguf_digest(version)
    log(f"pushing {source} to {t.name(version.model, version.id)}")
    pushes = [push_one(host, c, t, source, version.id, expected, cfg.ollama.timeout_s, progress)]
    if alias:
        pushes.append(push_one(host, c, t, source, alias, expected, cfg.ollama.timeout_s, progress))
    return _record(version, host, t, pushes, alias, extra)


def _record(version: Version, host: str, t: Target, pushes: list[dict[str, Any]], alias: str | None,
            extra: dict[str, Any]) -> dict[str, Any]:
    when = manifest.now_iso()
    own = pushes[0]
    record = {"registry": t.registry, "namespace": t.namespace, "insecure": t.insecure, "name": own["name"],
              "model_layer": own["model_layer"], "manifest_digest": own["manifest_digest"],
              "published_at": when, **extra}

    def change(m: dict) -> None:
        m["stages"].setdefault("publish", {})[own["name"]] = record

    manifest.update(version.path, change)
    entry = {"time": when, "user": audit.user(), "host": host, "action": "publish", "version": version.id,
             "tag": f"{version.model}:{version.id}", "registry": t.registry, "namespace": t.namespace,
             "pushed": {p["name"]: p["manifest_digest"] for p in pushes}, "model_layer": own["model_layer"],
             "pushed_alias": alias, **extra}
    audit.append(version.model, entry)
    return {**record, "pushes": pushes, "alias": alias}


# ------------------------------------------------------------------ promote and rollback

def preflight(cfg: Config) -> None:
    """With a registry configured, it must answer before an alias moves (so a move is never half-shipped)."""
    t = target(cfg)
    if t is not None:
        t.name("model", "latest")  # a bad publish.namespace fails here, not after the move
        check_registry(t)


def repush_alias(cfg: Config, version: Version, alias: str, entry: dict[str, Any], *, log: Log = lambda s: None,
                 progress: Progress = lambda a, b: None) -> dict[str, Any]:
    """After promote/rollback moved `<model>:<alias>` to the version: push `<registry>/.../<model>:<alias>`."""
    t = target(cfg)
    if t is None:
        return entry
    host = resolve_host(cfg.ollama.host)
    c = client(host, cfg.ollama.timeout_s)
    source = f"{version.model}:{version.id}"
    log(f"re-pushing {t.name(version.model, alias)} ({source})")
    try:
        push = push_one(host, c, t, source, alias, gguf_digest(version), cfg.ollama.timeout_s, progress)
    except LorashipError as e:
        raise PublishError(f"{version.model}:{alias} -> {version.id} is done and audited, but re-pushing it to "
                           f"{t.registry} failed: {e} (`loraship publish -m {version.model} {version.id} "
                           f"--alias {alias}` retries)") from None
    audit.append(version.model, {"time": manifest.now_iso(), "user": audit.user(), "host": host,
                                 "action": "publish", "version": version.id, "tag": source,
                                 "registry": t.registry, "namespace": t.namespace,
                                 "pushed": {push["name"]: push["manifest_digest"]},
                                 "model_layer": push["model_layer"], "pushed_alias": alias,
                                 "after": entry["action"]})
    log(f"pushed {push['name']} (model layer {short(push['model_layer'])})")
    return {**entry, "published": push}
