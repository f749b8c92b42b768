"""/api/create, /api/show, /api/tags, /api/copy and /api/delete (server/create.go, images.go, routes.go).

A mixin of OllamaDouble: it uses self.store, self._lock, self.model() and self.model_blob().
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import PurePosixPath
from typing import Any

from .blobs_manifests import CONFIG_MEDIA, MANIFEST_MEDIA, MEDIA, Model, Store, local_manifest_bytes
from .faults import HTTPError
from .gguf_meta import FILE_TYPES, read_gguf
from .goenc import go_json, go_quote, go_value, human_number
from .gorender import GoTemplateError, template_vars
from .names import parse_valid
from .params import check_options, name_of


class ModelsAPI:
    def create(self, body: dict):
        """Validate (errors before streaming), then return the progress generator."""
        name = name_of(body, "model", "name")
        if parse_valid(name) is None:
            raise HTTPError(400, "invalid model name")
        files = body.get("files") or {}
        for key in [*files, *(body.get("adapters") or {})]:
            parts = PurePosixPath(key).parts
            if not key or key.startswith("/") or ".." in parts or "\\" in key or ":" in key:
                raise HTTPError(400, "file path must be relative")
        # A real server creates the model whatever the parameters say (recorded: an unknown name and
        # a wrongly typed value both answer 200); the ones it knows, with the right type, are kept.
        params = check_options(body.get("parameters"), strict=False, drop_bad=True)
        if body.get("template"):
            try:
                template_vars(body["template"])
            except GoTemplateError as e:
                raise HTTPError(400, f"template error: {e}") from None
        return self._create_steps(name, body, files, params)

    def _create_steps(self, name: str, body: dict, files: dict, params: dict):
        with self._lock:
            layers, statuses, config = yield from self._base_layers(body, files)
            if body.get("quantize"):
                self._refuse_quantize(config)
            layers, statuses, params = self._overrides(layers, statuses, body, params)
            yield from ({"status": s} for s in statuses)
            config["rootfs"] = {"type": "layers", "diff_ids": [x["digest"] for x in layers]}
            cfg_digest, _ = self.store.put_blob(go_json(config))
            manifest = {"schemaVersion": 2, "mediaType": MANIFEST_MEDIA,
                        "config": {"mediaType": CONFIG_MEDIA, "digest": cfg_digest,
                                   "size": self.store.blob(cfg_digest).stat().st_size},
                        "layers": layers}
            yield {"status": "writing manifest"}
            path = self.store.find(name) or self.store.manifest_path(name)
            old = json.loads(path.read_bytes()) if path.exists() else None
            self.store.write_manifest(path, local_manifest_bytes(manifest))
            if old is not None:
                self.store.prune({x["digest"] for x in [old["config"], *old["layers"]]})
        yield {"status": "success"}

    @staticmethod
    def _refuse_quantize(config: dict) -> None:
        """A server quantizes F16, BF16 and F32 files only, by the name of their file type (an all-F32
        file reads as "unknown", so it is refused too: recorded). The double quantizes nothing, and
        says so rather than create an unquantized model as if it had."""
        if config.get("file_type") not in ("F16", "BF16", "F32"):
            raise HTTPError(500, "quantization is only supported for F16, BF16 and F32 models")
        raise HTTPError(501, "the Ollama test double does not implement 'quantize'")

    def _base_layers(self, body: dict, files: dict):
        if body.get("from"):
            base = self.model(body["from"], 404, f'model "{body["from"]}" not found, try pulling it first')
            # parseFromModel: every layer is re-made with `from` set to the base's name
            layers = [{**x, "from": base.name} for x in base.manifest["layers"]]
            config = json.loads(self.store.blob(base.manifest["config"]["digest"]).read_bytes())
            return layers, [f"using existing layer {x['digest']}" for x in layers], config
        if not files:
            raise HTTPError(400, "neither 'from' or 'files' was specified")
        layers, config = [], {}
        for key in sorted(files):
            yield {"status": "parsing GGUF"}
            config = self._gguf_layer(files[key], layers) or config
        for _key, digest in sorted((body.get("adapters") or {}).items()):
            self._gguf_layer(digest, layers, kind="adapter")
        return layers, [f"using existing layer {x['digest']}" for x in layers], config

    def _gguf_layer(self, digest: str, layers: list, kind: str = "model") -> dict | None:
        try:
            path = self.store.blob(digest)
        except HTTPError as e:  # GetBlobsPath's error surfaces from create as a 500 (recorded)
            raise HTTPError(500, e.message) from None
        if not path.exists():
            raise HTTPError(500, f"open {path}: no such file or directory")
        try:
            kv, n_params = read_gguf(path)
        except (ValueError, struct.error, KeyError):
            raise HTTPError(400, "unknown type") from None
        # `from` is the blob's own path on this server, as 0.24.0 writes it (../shared/OLLAMA_API.md):
        # it travels into every pushed manifest, so registries show where the origin keeps models.
        layers.append({"mediaType": MEDIA + kind, "digest": digest, "size": path.stat().st_size,
                       "from": str(path)})
        if kind != "model":
            return None
        arch = kv.get("general.architecture", "")
        return {"model_format": "gguf", "model_family": arch, "model_families": [arch],
                "model_type": human_number(n_params),
                # KV.FileType(): a general.file_type of 0 (all F32) reads as unset, so "unknown" (recorded)
                "file_type": FILE_TYPES.get(kv.get("general.file_type") or -1, "unknown"),
                "architecture": "amd64", "os": "linux"}

    def _overrides(self, layers: list, statuses: list, body: dict, params: dict):
        def put(kind: str, data: bytes, replace: bool = True) -> None:
            nonlocal layers
            if replace:
                layers = [x for x in layers if x["mediaType"] != MEDIA + kind]
            digest, created = self.store.put_blob(data)
            layers.append({"mediaType": MEDIA + kind, "digest": digest, "size": len(data)})
            statuses.append(f"{'creating new' if created else 'using existing'} layer {digest}")

        for kind in ("template", "system"):
            if body.get(kind):
                put(kind, body[kind].encode("utf-8"))
        licenses = body.get("license") or []
        for i, text in enumerate([licenses] if isinstance(licenses, str) else licenses):
            put("license", text.encode("utf-8"), replace=i == 0)
        old = [x for x in layers if x["mediaType"] == MEDIA + "params"]
        merged = json.loads(self.store.blob(old[-1]["digest"]).read_bytes()) if old else {}
        merged.update(params)
        if merged:
            put("params", go_json(dict(sorted(merged.items()))) + b"\n")
        if body.get("messages"):
            msgs = [{"role": m.get("role", ""), "content": m.get("content", "")} for m in body["messages"]]
            put("messages", go_json(msgs) + b"\n")
        return layers, statuses, merged

    # -------------------------------------------------------------- listing and showing
    def details(self, model: Model) -> dict[str, Any]:
        cfg = json.loads(self.store.blob(model.manifest["config"]["digest"]).read_bytes())
        return {"parent_model": "", "format": cfg.get("model_format", ""),
                "family": cfg.get("model_family", ""), "families": cfg.get("model_families"),
                "parameter_size": cfg.get("model_type", ""),
                "quantization_level": cfg.get("file_type", "")}

    def tags(self) -> dict[str, Any]:
        models = []
        with self._lock:
            for path in self.store.manifests():
                m = self.model(Store.display_name(path))
                size = sum(x["size"] for x in [m.manifest["config"], *m.manifest["layers"]])
                models.append({"name": m.name, "model": m.name, "modified_at": m.modified_at(),
                               "size": size, "digest": hashlib.sha256(m.raw).hexdigest(),
                               "details": self.details(m), "_mtime": path.stat().st_mtime})
        models.sort(key=lambda x: -x.pop("_mtime"))
        return {"models": models}

    def show(self, body: dict) -> dict[str, Any]:
        name = name_of(body, "model", "name")
        with self._lock:
            m = self.model(name)
            kv, n_params = read_gguf(self.model_blob(m))
            for key in ("general.name", "tokenizer.chat_template"):  # GetModelInfo leaves these out
                kv.pop(key, None)
            params = m.params(self.store)
            template = m.text(self.store, "template")
            system = m.text(self.store, "system")
            licenses = [self.store.blob(x["digest"]).read_text("utf-8") for x in m.layers("license")]
            msgs = json.loads(m.text(self.store, "messages") or "[]")
            parent = next((x.get("from", "") for x in m.manifest["layers"] if x["mediaType"] == MEDIA + "model"), "")
            resp = {"modelfile": self._modelfile(m, template, system, params, licenses, msgs),
                    "parameters": "\n".join(f"{k:<30} {go_value(v)}" for k, vs in sorted(params.items())
                                            for v in (vs if isinstance(vs, list) else [vs])),
                    "template": template or "{{ .Prompt }}", "details": {**self.details(m), "parent_model": parent},
                    "model_info": {**kv, "general.parameter_count": n_params},
                    "capabilities": self._capabilities(template), "modified_at": m.modified_at()}
        if system:
            resp["system"] = system
        if licenses:
            resp["license"] = "\n".join(licenses)
        if msgs:
            resp["messages"] = msgs
        return resp

    def _modelfile(self, m: Model, template, system, params, licenses, msgs) -> str:
        lines = ['# Modelfile generated by "ollama show"',
                 "# To build a new Modelfile based on this, replace FROM with:",
                 f"# FROM {m.name}", "", f"FROM {self.model_blob(m)}"]
        lines.append(f"TEMPLATE {go_quote(template or '{{ .Prompt }}')}")  # the default one, shown too
        if system:
            lines.append(f"SYSTEM {go_quote(system)}")
        for k, vs in sorted(params.items()):
            for v in vs if isinstance(vs, list) else [vs]:
                lines.append(f"PARAMETER {k} {go_quote(v if isinstance(v, str) else go_value(v))}")
        lines += [f"LICENSE {go_quote(text)}" for text in licenses]
        lines += [f"MESSAGE {x['role']} {go_quote(x['content'])}" for x in msgs]
        return "\n".join(lines) + "\n"

    @staticmethod
    def _capabilities(template: str | None) -> list[str]:
        ids = template_vars(template) if template else set()
        return ["completion"] + [c for c, v in (("tools", "tools"), ("insert", "suffix")) if v in ids]

    def copy(self, body: dict) -> None:
        src, dst = name_of(body, "source"), name_of(body, "destination")
        for label, value in (("source", src), ("destination", dst)):
            if parse_valid(value) is None:
                raise HTTPError(400, f'{label} "{value}" is invalid')
        with self._lock:
            m = self.model(src, 404, f'model "{src}" not found')
            target = self.store.find(dst) or self.store.manifest_path(dst)
            self.store.write_manifest(target, m.raw)

    def delete(self, body: dict) -> None:
        name = name_of(body, "model", "name")
        with self._lock:
            m = self.model(name)
            m.path.unlink()
            self.store.prune({x["digest"] for x in [m.manifest["config"], *m.manifest["layers"]]})
