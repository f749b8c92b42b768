"""Register a version in Ollama: Modelfile, blob upload by digest, `<model>:vN` via the official client.

Nothing is recorded (manifest, Modelfile, checksums) until the server has created the tag
and read it back with the TEMPLATE and stops that were sent: a failed or interrupted
registration leaves the version exactly as it was, and running it again is safe.
"""

from __future__ import annotations

import ast
import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from loraship import paths
from loraship.config import Config
from loraship.errors import LorashipError, OllamaError, VersionError
from loraship.export import pipeline as export
from loraship.export import verify
from loraship.serve import chat_templates, modelfile
from loraship.serve.ollama_client import (
    bare_digest,
    call,
    client,
    resolve_host,
    same_digest,
    served_digests,
    short,
)
from loraship.store import atomic, manifest
from loraship.store.hashing import sha256_file
from loraship.store.versions import Version

Log = Callable[[str], None]
Progress = Callable[[int, int], None]
_CHUNK = 1 << 20


def tag_for(version: Version) -> str:
    return f"{version.model}:{version.id}"


def served_num_ctx(cfg: Config, train: dict[str, Any]) -> int:
    """The context a served model gets: ollama.num_ctx, else room for the longest training row."""
    return cfg.ollama.num_ctx or max(2048, int(train["hyperparameters"]["max_seq_length"]))


def _served_settings(cfg: Config, gguf: Path, num_ctx: int, template_file: Path | None = None,
                     stops: list[str] | None = None) -> tuple[chat_templates.ChatFormat, dict[str, Any]]:
    """The chat format and the settings a served tag gets. The TEMPLATE comes from the chat template
    inside the GGUF itself: what is served is what was verified."""
    chat_template, bos, eos = chat_templates.gguf_chat_metadata(gguf)
    fmt = chat_templates.resolve_chat_format(chat_template, template_file=template_file, stops=stops,
                                             bos_token=bos, eos_token=eos)
    return fmt, dict(template=fmt.template, stops=list(fmt.stops), num_ctx=num_ctx,
                     temperature=cfg.ollama.temperature, seed=cfg.ollama.seed, system=cfg.ollama.system,
                     license=cfg.ollama.license)


def build_modelfile(cfg: Config, version: Version, template_file: Path | None = None,
                    stops: list[str] | None = None) -> tuple[str, dict[str, Any]]:
    """The Modelfile text (FROM relative to the version folder) and the matching create() arguments."""
    exp = version.stage("export")
    quant = cfg.export.quants[0].upper()
    rel_gguf = exp["ggufs"].get(quant) or next(iter(exp["ggufs"].values()))
    gguf = version.path / rel_gguf
    train = version.stage("train")
    fmt, settings = _served_settings(cfg, gguf, served_num_ctx(cfg, train), template_file, stops)
    family = f"{fmt.family} ({fmt.variant})"
    gguf_sha = sha256_file(gguf)
    header = {
        "loraship version": f"{version.model} {version.id}",
        "parent": version.manifest.get("parent") or "none (first version)",
        "base model": train["base"]["path"],
        "base sha256": train["base"]["sha256"],
        "gguf": rel_gguf,
        "gguf sha256": gguf_sha,
        "template family": family,
    }
    text = modelfile.render_modelfile(gguf_path=rel_gguf, **settings, header=header)
    return text, {"args": modelfile.ollama_create_args(**settings), "gguf": gguf,
                  "blob_digest": "sha256:" + gguf_sha, "family": family}


def _check_exported(version: Version) -> None:
    exp = version.stage("export")
    if not exp:
        raise VersionError(f"{version.id} is not exported: run `loraship export --model {version.model} {version.id}`")
    if not exp.get("verified") and not exp.get("allow_unverified"):
        failures = "; ".join(exp.get("verification_failures") or []) or "see its manifest"
        raise VersionError(f"{version.model} {version.id} failed verification at export ({failures}): fix and "
                           f"re-export, or `loraship export --model {version.model} {version.id} --force "
                           "--allow-unverified` to ship it anyway (recorded)")
    export.verify_version(version)  # the GGUF on disk is still the one that was verified


def _existing(version: Version, tag: str, host: str, served: dict[str, str], text: str,
              force: bool) -> dict[str, Any] | None:
    """The previous record when this exact registration is already served (a no-op); raise on a collision."""
    if tag not in served or force:
        return None
    previous = version.stage("register") or {}
    ours = same_digest(previous.get("digest"), served[tag])
    if ours and previous.get("modelfile_sha256") == hashlib.sha256(text.encode("utf-8")).hexdigest():
        return {**previous, "host": host, "noop": True}
    if ours:
        raise OllamaError(f"{tag} on {host} was registered from a different Modelfile (the config changed "
                          "since): pass --force to replace it")
    raise OllamaError(f"{tag} already exists on {host} with digest {short(served[tag])}, which this version "
                      "did not register: pass --force to replace it")


def _blob_exists(http: Any, digest: str) -> bool:
    # The client's create_blob always uploads (and hashes the file again); a HEAD first skips
    # re-sending a multi-GB file the server already holds.
    import ollama

    r = http.head(f"/api/blobs/{digest}")
    if r.status_code in (200, 404):
        return r.status_code == 200
    raise ollama.ResponseError(r.text or f"HEAD /api/blobs answered {r.status_code}", r.status_code)


def _upload(http: Any, path: Path, digest: str, progress: Progress) -> None:
    import ollama

    total = path.stat().st_size

    def chunks():
        sent = 0
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                sent += len(chunk)
                progress(sent, total)
                yield chunk

    # Content-Length rather than chunked encoding: proxies in front of Ollama handle it better.
    r = http.post(f"/api/blobs/{digest}", content=chunks(), headers={"Content-Length": str(total)})
    if r.status_code not in (200, 201):
        raise ollama.ResponseError(r.text, r.status_code)


def _ensure_blob(host: str, timeout: float, gguf: Path, digest: str, log: Log, progress: Progress) -> None:
    """HEAD and POST /api/blobs (documented API calls the client has no progress-reporting form of)
    through httpx itself, never the client's private connection."""
    import httpx

    with httpx.Client(base_url=host, timeout=timeout) as http:
        if call(host, "checking the blob", lambda: _blob_exists(http, digest)):
            log(f"server already has {gguf.name} ({short(digest)}): upload skipped")
            return
        log(f"uploading {gguf.name} ({gguf.stat().st_size / 1e6:.1f} MB) to {host}")
        call(host, f"uploading {gguf.name}", lambda: _upload(http, gguf, digest, progress))


def _go_unquote(value: str) -> str:
    # Go's %#v quotes with strconv.Quote, whose escapes are a subset of Python's.
    try:
        out = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return value
    return out if isinstance(out, str) else value


def shown_stops(parameters: str | None) -> list[str]:
    """The stop strings in /api/show's `parameters` (one `name  %#v-quoted value` per line)."""
    stops = []
    for line in (parameters or "").splitlines():
        name, _, value = line.strip().partition(" ")
        if name == "stop":
            stops.append(_go_unquote(value.strip()))
    return stops


def _stored_problem(shown: Any, args: dict[str, Any]) -> str | None:
    """How a served model's TEMPLATE or stops differ from the create() arguments; None when they do not."""
    if (shown.template or "") != args["template"]:
        return "a TEMPLATE other than the one sent"  # e.g. its `{{ .Prompt }}` fallback
    if shown_stops(shown.parameters) != args["parameters"]["stop"]:
        return f"stops {shown_stops(shown.parameters)}, not the {args['parameters']['stop']} sent"
    return None


def _read_back(host: str, c: Any, tag: str, args: dict[str, Any]) -> str:
    """The served digest, once the server shows the TEMPLATE and stops that were sent."""
    shown = call(host, f"reading {tag} back", lambda: c.show(tag))
    problem = _stored_problem(shown, args)
    if problem:
        raise OllamaError(f"{host} stored {problem} for {tag}: nothing recorded")
    digest = served_digests(host, c).get(tag.lower())
    if not digest:
        raise OllamaError(f"{tag} does not appear in {host}'s /api/tags after create: nothing recorded")
    return digest


def _withdraw(host: str, c: Any, tag: str, log: Log) -> None:
    """Remove a tag created moments ago that cannot be recorded: nothing unrecorded stays served
    (a wrong template rambles), and a plain retry needs no --force."""
    try:
        call(host, f"removing {tag}", lambda: c.delete(tag), retries=1)
        log(f"removed {tag} from {host} again: it could not be checked, so it is not recorded")
    except LorashipError:
        log(f"could not remove {tag} from {host}: `loraship register --force` replaces it")


def _record(version: Version, record: dict[str, Any], text: str) -> dict[str, Any]:
    mf = version.path / paths.MODELFILE
    atomic.write_text(mf, text)
    # The copy under Modelfiles/ is for review in git; its FROM is relative to the version folder.
    rel_home = os.path.relpath(version.path, paths.project_root())
    atomic.write_text(paths.modelfile_copy(version.model, version.id),
                      f"# review copy of {rel_home}/{paths.MODELFILE} (FROM is relative to that folder)\n" + text)
    record = {**record, "modelfile_sha256": sha256_file(mf), "registered_at": manifest.now_iso()}

    def change(m: dict) -> None:
        m["stages"]["register"] = record
        m["artifacts"]["Modelfile"] = {"path": paths.MODELFILE, "sha256": record["modelfile_sha256"],
                                       "bytes": mf.stat().st_size}

    verify.add_checksum(version.path, mf)
    manifest.update(version.path, change)
    return record


def register_version(
    cfg: Config, version: Version, *, force: bool = False, template_file: Path | None = None,
    stops: list[str] | None = None, log: Log = lambda s: None, progress: Progress = lambda a, b: None,
) -> dict[str, Any]:
    """Create `<model>:vN` from the version's GGUF and record its served digest; a repeat is a no-op."""
    _check_exported(version)
    host = resolve_host(cfg.ollama.host)
    tag = tag_for(version)
    text, built = build_modelfile(cfg, version, template_file, stops)  # bad input fails before any call
    c = client(host, cfg.ollama.timeout_s)
    previous = _existing(version, tag, host, served_digests(host, c), text, force)
    if previous:
        return previous
    gguf, blob, args = built["gguf"], built["blob_digest"], built["args"]
    _ensure_blob(host, cfg.ollama.timeout_s, gguf, blob, log, progress)
    call(host, f"creating {tag}", lambda: c.create(model=tag, files={gguf.name: blob}, stream=False, **args))
    try:
        digest = _read_back(host, c, tag, args)
    except LorashipError:
        _withdraw(host, c, tag, log)
        raise
    record = {"tag": tag, "host": host, "digest": digest, "blob_digest": blob, "template_family": built["family"]}
    return _record(version, record, text)


BASE_TAG = "base"  # `<model>:base`: the training base, served like the versions (compare's baseline row)


def register_base(cfg: Config, model: str, gguf: Path, num_ctx: int, *, log: Log = lambda s: None,
                  progress: Progress = lambda a, b: None) -> str:
    """Serve the base's GGUF as `<model>:base` with the TEMPLATE, stops and options a version gets,
    so a comparison's baseline answers through the same engine as its candidates. Created again
    only when the server lacks it or serves other settings; returns the tag."""
    host = resolve_host(cfg.ollama.host)
    tag = f"{model}:{BASE_TAG}"
    args = modelfile.ollama_create_args(**_served_settings(cfg, gguf, num_ctx)[1])
    c = client(host, cfg.ollama.timeout_s)
    blob = "sha256:" + sha256_file(gguf)
    if tag in served_digests(host, c):
        shown = call(host, f"reading {tag}", lambda: c.show(tag))
        same_model = f"sha256-{bare_digest(blob)}" in (shown.modelfile or "")
        if same_model and _stored_problem(shown, args) is None:
            return tag
    _ensure_blob(host, cfg.ollama.timeout_s, gguf, blob, log, progress)
    log(f"serving the training base as {tag} (the baseline answers through Ollama like the versions)")
    call(host, f"creating {tag}", lambda: c.create(model=tag, files={gguf.name: blob}, stream=False, **args))
    _read_back(host, c, tag, args)
    return tag

