"""Register a version in Ollama: Modelfile, blob upload by digest, `<model>:vN` via the official client."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from . import atomic, chat_templates, export, manifest, modelfile, paths, verify
from .config import Config
from .errors import OllamaError, VersionError
from .hashing import sha256_file
from .ollama_client import call, client, resolve_host, served_digests
from .versions import Version

Log = Callable[[str], None]
Progress = Callable[[int, int], None]
_CHUNK = 1 << 20


def tag_for(version: Version) -> str:
    return f"{version.model}:{version.id}"


def build_modelfile(cfg: Config, version: Version, template_file: Path | None = None,
                    stops: list[str] | None = None) -> tuple[str, dict[str, Any]]:
    """The Modelfile text (FROM relative to the version folder) and the matching create() arguments."""
    exp = version.stage("export")
    quant = cfg.export.quants[0].upper()
    rel_gguf = exp["ggufs"].get(quant) or next(iter(exp["ggufs"].values()))
    gguf = version.path / rel_gguf
    # The TEMPLATE comes from the chat template inside the GGUF itself: what is served is what was verified.
    chat_template, bos, eos = chat_templates.gguf_chat_metadata(gguf)
    fmt = chat_templates.resolve_chat_format(chat_template, template_file=template_file, stops=stops,
                                             bos_token=bos, eos_token=eos)
    template, family = fmt.template, f"{fmt.family} ({fmt.variant})"
    train = version.stage("train")
    num_ctx = cfg.ollama.num_ctx or max(2048, int(train["hyperparameters"]["max_seq_length"]))
    header = {
        "loraship version": f"{version.model} {version.id}",
        "parent": version.manifest.get("parent") or "none (first version)",
        "base model": train["base"]["path"],
        "base sha256": train["base"]["sha256"],
        "gguf": rel_gguf,
        "gguf sha256": sha256_file(gguf),
        "template family": family,
    }
    params = dict(gguf_path=rel_gguf, template=template, stops=list(fmt.stops), num_ctx=num_ctx,
                  temperature=cfg.ollama.temperature, seed=cfg.ollama.seed, system=cfg.ollama.system,
                  license=cfg.ollama.license)
    text = modelfile.render_modelfile(**params, header=header)
    args = {k: v for k, v in params.items() if k != "gguf_path"}
    return text, {"args": modelfile.ollama_create_args(**args), "gguf": gguf, "family": family}


def _blob_exists(c: Any, digest: str) -> bool:
    # The client's create_blob always uploads; a HEAD on the same connection skips
    # re-sending a multi-GB file the server already holds.
    r = c._client.head(f"/api/blobs/{digest}")
    return r.status_code == 200


def _upload(c: Any, path: Path, digest: str, progress: Progress) -> None:
    total = path.stat().st_size

    def chunks():
        sent = 0
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                sent += len(chunk)
                progress(sent, total)
                yield chunk

    r = c._client.post(f"/api/blobs/{digest}", content=chunks())
    if r.status_code not in (200, 201):
        import ollama

        raise ollama.ResponseError(r.text, r.status_code)


def register_version(
    cfg: Config, version: Version, *, force: bool = False, template_file: Path | None = None,
    stops: list[str] | None = None, log: Log = lambda s: None, progress: Progress = lambda a, b: None,
) -> dict[str, Any]:
    exp = version.stage("export")
    if not exp:
        raise VersionError(f"{version.id} is not exported: run `loraship export --model {version.model} {version.id}`")
    if not exp.get("verified") and not exp.get("allow_unverified"):
        raise VersionError(f"{version.id} failed verification at export: {'; '.join(exp.get('verification_failures', []))}")
    export.verify_version(version)
    host = resolve_host(cfg.ollama.host)
    c = client(host, cfg.ollama.timeout_s)
    tag = tag_for(version)
    text, built = build_modelfile(cfg, version, template_file, stops)
    served = served_digests(host, c)
    previous = version.stage("register")
    if tag in served:
        if previous and previous.get("digest") == served[tag] and previous.get("host") == host and not force:
            return {**previous, "noop": True}
        if not force:
            raise OllamaError(
                f"{tag} already exists on {host} with digest {served[tag][:19]} that this version did not register: "
                "pass --force to replace it"
            )
    gguf = built["gguf"]
    digest = "sha256:" + sha256_file(gguf)
    if call(host, "checking the blob", lambda: _blob_exists(c, digest)):
        log(f"server already has {gguf.name} ({digest[:19]}): upload skipped")
    else:
        log(f"uploading {gguf.name} ({gguf.stat().st_size / 1e6:.1f} MB)")
        call(host, f"uploading {gguf.name}", lambda: _upload(c, gguf, digest, progress))
    args = built["args"]
    call(host, f"creating {tag}", lambda: c.create(model=tag, files={gguf.name: digest}, stream=False, **args))
    shown = call(host, f"reading {tag} back", lambda: c.show(tag))
    if (shown.template or "").strip() != args["template"].strip():
        raise OllamaError(f"{host} stored a different TEMPLATE for {tag} than was sent: refusing to record it")
    served_digest = served_digests(host, c).get(tag)
    if not served_digest:
        raise OllamaError(f"{tag} does not appear in {host}'s /api/tags after create")
    atomic.write_text(version.path / paths.MODELFILE, text)
    # The copy under Modelfiles/ is for review in git; its FROM is relative to the version folder.
    rel_home = os.path.relpath(version.path, paths.project_root())
    atomic.write_text(paths.modelfile_copy(version.model, version.id),
                      f"# review copy of {rel_home}/{paths.MODELFILE} (FROM is relative to that folder)\n" + text)
    record = {
        "tag": tag, "host": host, "digest": served_digest, "blob_digest": digest, "template_family": built["family"],
        "modelfile_sha256": sha256_file(version.path / paths.MODELFILE), "registered_at": manifest.now_iso(),
    }

    def change(m: dict) -> None:
        m["stages"]["register"] = record
        m["artifacts"]["Modelfile"] = {"path": paths.MODELFILE, "sha256": record["modelfile_sha256"],
                                       "bytes": (version.path / paths.MODELFILE).stat().st_size}

    verify.add_checksum(version.path, version.path / paths.MODELFILE)
    manifest.update(version.path, change)
    return record
