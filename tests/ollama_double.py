"""A faithful test double of the Ollama HTTP API parts loraship uses (/work/shared/OLLAMA_API.md).

    with OllamaDouble(tmp_path / "ollama") as ollama:
        client = ollama_client.Client(host=ollama.url)

It stores blobs at <dir>/blobs/sha256-<hex> and manifests at
<dir>/manifests/<host>/<namespace>/<model>/<tag> exactly as a real server does, answers
with the same status codes and error texts, and really generates: /api/chat and
/api/generate render the model's TEMPLATE with loraship.serve.gotemplate (as the server's
Go template would) and run the GGUF blob with llama-cpp-python.

Not implemented (501, never silently ignored): format, tools, images, suffix, think. A
prompt longer than num_ctx is an error here; a real server drops old messages instead.

Faults for tests: `double.faults.drop_upload_after = N` resets the connection after N
bytes of the next blob upload (no blob is stored); `double.faults.fail_next(method,
path, status, message)` answers the next matching request with that error.
`double.requests` records (method, path) of every request.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import socket
import struct
import threading
import time
import unicodedata
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path, PurePosixPath
from typing import Any

from loraship.errors import ConfigError
from loraship.serve import gotemplate
from loraship.serve.modelfile import PARAMETER_KINDS, split_ollama_name

VERSION = "0.24.0"
MEDIA = "application/vnd.ollama.image."
MANIFEST_MEDIA = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_MEDIA = "application/vnd.docker.container.image.v1+json"
DIGEST_RE = re.compile(r"^sha256[:-][0-9a-fA-F]{64}$")
DEFAULTS = {"num_ctx": 2048, "temperature": 0.8, "top_k": 40, "top_p": 0.9, "min_p": 0.0,
            "typical_p": 1.0, "repeat_penalty": 1.1, "presence_penalty": 0.0,
            "frequency_penalty": 0.0, "num_predict": -1, "seed": -1, "stop": []}
FILE_TYPES = {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1",
              10: "Q2_K", 11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M",
              16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K", 32: "BF16"}


class HTTPError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


# ------------------------------------------------------------------ Go-compatible encodings

def go_json(obj: Any) -> bytes:
    """encoding/json.Marshal: compact, with <, > and & escaped."""
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    for raw, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026")):
        text = text.replace(raw, esc)
    return text.encode("utf-8")


def go_value(v: Any) -> str:
    """fmt's %#v for the JSON values a params layer holds (numbers decode as float64)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return go_string(v)
    d = Decimal(repr(float(v))).normalize()
    sign, digits, exponent = d.as_tuple()
    exp10 = len(digits) + exponent - 1
    if -4 <= exp10 < 6:  # strconv 'g' with shortest digits switches to %e at 1e6
        return format(d, "f")
    rest = "".join(map(str, digits[1:]))
    return f"{'-' if sign else ''}{digits[0]}{'.' + rest if rest else ''}e{exp10:+03d}"


_GO_ESCAPES = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t",
               "\v": "\\v", "\\": "\\\\", '"': '\\"'}


def go_string(s: str) -> str:
    """strconv.Quote."""
    out = []
    for c in s:
        if c in _GO_ESCAPES:
            out.append(_GO_ESCAPES[c])
        elif c == " " or unicodedata.category(c)[0] in "LMNPS":
            out.append(c)
        elif ord(c) < 0x10000:
            out.append(f"\\x{ord(c):02x}" if ord(c) < 0x80 else f"\\u{ord(c):04x}")
        else:
            out.append(f"\\U{ord(c):08x}")
    return '"' + "".join(out) + '"'


def human_number(n: int) -> str:
    """format.HumanNumber, as /api/show's parameter_size uses it."""
    for limit, unit, digits in ((1e9, "B", 1), (1e6, "M", 2)):
        if n >= limit:
            x = n / limit
            return f"{x:.0f}{unit}" if x == int(x) else f"{x:.{digits}f}{unit}"
    return f"{n / 1e3:.0f}K" if n >= 1000 else str(n)


def go_quote(s: str) -> str:
    """parser.Command's quote(): quotes only what needs it, as `ollama show` prints."""
    if "\n" in s or s.startswith(" ") or s.endswith(" "):
        return '"""' + s + '"""' if '"' in s else '"' + s + '"'
    return s


# ------------------------------------------------------------------ GGUF metadata

_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q",
            12: "d"}


def read_gguf(path: Path) -> tuple[dict[str, Any], int]:
    """Key/values (long arrays elided, as /api/show does) and the parameter count."""
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise ValueError("not a GGUF file")
        _version, n_tensors, n_kv = struct.unpack("<IQQ", f.read(20))

        def string() -> str:
            (n,) = struct.unpack("<Q", f.read(8))
            return f.read(n).decode("utf-8", "replace")

        def value(t: int) -> Any:
            if t == 8:
                return string()
            if t == 9:
                (item, n) = struct.unpack("<IQ", f.read(12))
                items = [value(item) for _ in range(n)]
                return items if n <= 64 else None
            fmt = "<" + _SCALARS[t]
            return struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0]

        kv = {}
        for _ in range(n_kv):
            key = string()
            (t,) = struct.unpack("<I", f.read(4))
            kv[key] = value(t)
        params = 0
        for _ in range(n_tensors):
            string()
            (n_dims,) = struct.unpack("<I", f.read(4))
            dims = struct.unpack(f"<{n_dims}Q", f.read(8 * n_dims))
            f.read(12)  # type and offset
            count = 1
            for d in dims:
                count *= d
            params += count
    return kv, params


# ------------------------------------------------------------------ faults

@dataclass
class Faults:
    drop_upload_after: int | None = None
    _errors: list[list[Any]] = field(default_factory=list)

    def fail_next(self, method: str, path: str, status: int, message: str, times: int = 1) -> None:
        """Answer the next `times` requests to method+path (a prefix) with this error."""
        self._errors.append([method.upper(), path, status, message, times])

    def take(self, method: str, path: str) -> HTTPError | None:
        for e in self._errors:
            if e[0] == method and path.startswith(e[1]) and e[4] > 0:
                e[4] -= 1
                return HTTPError(e[2], e[3])
        return None


# ------------------------------------------------------------------ on-disk store

class Store:
    """Blobs and manifests laid out as $OLLAMA_MODELS is."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        (self.root / "blobs").mkdir(parents=True, exist_ok=True)
        (self.root / "manifests").mkdir(parents=True, exist_ok=True)

    def blob(self, digest: str) -> Path:
        if not DIGEST_RE.match(digest or ""):
            raise HTTPError(400, "invalid digest format")
        return self.root / "blobs" / digest.replace(":", "-")

    def put_blob(self, data: bytes) -> tuple[str, bool]:
        """Store bytes as a blob; (digest, created)."""
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        path = self.blob(digest)
        if path.exists():
            return digest, False
        tmp = path.with_name(f".tmp-{os.getpid()}-{threading.get_ident()}")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        return digest, True

    def manifest_path(self, name: str) -> Path:
        n = split_ollama_name(name)
        return self.root / "manifests" / n.host / n.namespace / n.model / n.tag

    def find(self, name: str) -> Path | None:
        """The stored manifest for a name, matched case-insensitively as Ollama does."""
        want = self.manifest_path(name).relative_to(self.root).as_posix().lower()
        for path in self.manifests():
            if path.relative_to(self.root).as_posix().lower() == want:
                return path
        return None

    def manifests(self) -> list[Path]:
        base = self.root / "manifests"
        return sorted(p for p in base.glob("*/*/*/*") if p.is_file() and not p.name.startswith("."))

    def write_manifest(self, path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".tmp-{path.name}")
        tmp.write_bytes(data)
        os.replace(tmp, path)

    def prune(self, digests: set[str]) -> None:
        """Delete blobs of `digests` that no remaining manifest references."""
        used = set()
        for path in self.manifests():
            m = json.loads(path.read_bytes())
            used.update(layer["digest"] for layer in [m["config"], *m["layers"]])
        for digest in digests - used:
            self.blob(digest).unlink(missing_ok=True)

    @staticmethod
    def display_name(path: Path) -> str:
        host, ns, model, tag = path.parts[-4:]
        if host == "registry.ollama.ai":
            return f"{model}:{tag}" if ns == "library" else f"{ns}/{model}:{tag}"
        return f"{host}/{ns}/{model}:{tag}"


@dataclass
class Model:
    """A manifest read back: what chat, generate and show need."""

    name: str
    path: Path
    manifest: dict[str, Any]
    raw: bytes

    def layers(self, kind: str) -> list[dict[str, Any]]:
        return [x for x in self.manifest["layers"] if x["mediaType"] == MEDIA + kind]

    def text(self, store: Store, kind: str) -> str | None:
        found = self.layers(kind)
        return store.blob(found[-1]["digest"]).read_text("utf-8") if found else None

    def params(self, store: Store) -> dict[str, Any]:
        text = self.text(store, "params")
        return json.loads(text) if text else {}

    def modified_at(self) -> str:
        return datetime.fromtimestamp(self.path.stat().st_mtime).astimezone().isoformat()


# ------------------------------------------------------------------ the server

def _now() -> str:
    return datetime.now().astimezone().isoformat()


def _name_of(body: dict, *keys: str) -> str:
    for key in keys:
        value = body.get(key)
        if value:
            if not isinstance(value, str):
                raise HTTPError(400, f"json: cannot unmarshal {type(value).__name__} into Go struct "
                                     f"field .{key} of type string")
            return value
    return ""


def _check_options(opts: Any, strict: bool) -> dict[str, Any]:
    """Options / create parameters: known names with JSON values of the right kind."""
    if opts is None:
        return {}
    if not isinstance(opts, dict):
        raise HTTPError(400, "json: cannot unmarshal options into map[string]interface {}")
    out = {}
    for key, value in opts.items():
        kind = PARAMETER_KINDS.get(key)
        if kind is None:
            if strict:
                raise HTTPError(400, f"unknown parameter '{key}'")
            continue  # Ollama logs "invalid option provided" and ignores it
        ok = {"int": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
              "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
              "bool": lambda v: isinstance(v, bool),
              "list": lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v)}[kind]
        if value is not None and not ok(value):
            want = {"int": "integer", "float": "float32", "bool": "boolean",
                    "list": "array of strings"}[kind]
            raise HTTPError(400, f"option {key!r} must be of type {want}".replace("'", '"'))
        out[key] = int(value) if kind == "int" and value is not None else value
    return out


class _QuietServer(ThreadingHTTPServer):
    """A client that hangs up (a dropped upload, a killed register) is normal here, not a traceback."""

    daemon_threads = True

    def handle_error(self, request, client_address):
        import sys

        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


class OllamaDouble:
    """Start with .start() (or a with-block), point ollama.Client(host=.url) at it."""

    def __init__(self, models_dir: str | Path, *, version: str = VERSION) -> None:
        self.store = Store(Path(models_dir))
        self.version = version
        self.faults = Faults()
        self.requests: list[tuple[str, str]] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.RLock()      # manifests and blobs change under it
        self._gen_lock = threading.Lock()   # one generation at a time, like one runner
        self._llamas: dict[tuple[str, int], Any] = {}

    # -------------------------------------------------------------- lifecycle
    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("OllamaDouble is not started")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> OllamaDouble:
        handler = type("Handler", (_Handler,), {"double": self})
        self._server = _QuietServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,),
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        with self._gen_lock:
            for llm in self._llamas.values():
                llm.close()
            self._llamas.clear()

    def __enter__(self) -> OllamaDouble:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -------------------------------------------------------------- lookups
    def model(self, name: str, status: int = 404, message: str | None = None) -> Model:
        try:
            path = self.store.find(name)
        except ConfigError:
            raise HTTPError(400, "invalid model name") from None
        if path is None:
            raise HTTPError(status, message or f"model '{name}' not found")
        raw = path.read_bytes()
        return Model(Store.display_name(path), path, json.loads(raw), raw)

    def model_blob(self, model: Model) -> Path:
        found = model.layers("model")
        if not found:
            raise HTTPError(500, f"model '{model.name}' has no model layer")
        return self.store.blob(found[0]["digest"])

    # -------------------------------------------------------------- blobs
    def head_blob(self, digest: str) -> int:
        if not self.store.blob(digest).exists():
            raise HTTPError(404, f'blob "{digest}" not found')
        return 200

    def post_blob(self, digest: str, chunks, drop) -> int:
        path = self.store.blob(digest)
        if path.exists():
            for _ in chunks:
                pass
            return 200
        tmp = path.with_name(f".partial-{threading.get_ident()}-{path.name}")
        h, seen = hashlib.sha256(), 0
        try:
            with open(tmp, "wb") as f:
                for chunk in chunks:
                    if self.faults.drop_upload_after is not None and seen + len(chunk) >= self.faults.drop_upload_after:
                        self.faults.drop_upload_after = None
                        drop()  # the server goes away mid-upload: nothing is stored
                        return 0
                    f.write(chunk)
                    h.update(chunk)
                    seen += len(chunk)
            got = "sha256:" + h.hexdigest()
            if got != digest:
                raise HTTPError(400, f'digest mismatch, expected "{digest}", got "{got}"')
            with self._lock:
                os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return 201

    # -------------------------------------------------------------- create
    def create(self, body: dict):
        """Validate (errors before streaming), then return the progress generator."""
        name = _name_of(body, "model", "name")
        try:
            split_ollama_name(name)
        except ConfigError:
            raise HTTPError(400, "invalid model name") from None
        files = body.get("files") or {}
        for key in [*files, *(body.get("adapters") or {})]:
            parts = PurePosixPath(key).parts
            if not key or key.startswith("/") or ".." in parts or "\\" in key or ":" in key:
                raise HTTPError(400, "file path must be relative")
        params = _check_options(body.get("parameters"), strict=True)
        if body.get("template"):
            try:
                gotemplate.parse(body["template"])
            except gotemplate.TemplateError as e:
                raise HTTPError(400, f"template error: {e}") from None
        return self._create_steps(name, body, files, params)

    def _create_steps(self, name: str, body: dict, files: dict, params: dict):
        with self._lock:
            layers, statuses, config = yield from self._base_layers(body, files)
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
            self.store.write_manifest(path, go_json(manifest))
            if old is not None:
                self.store.prune({x["digest"] for x in [old["config"], *old["layers"]]})
        yield {"status": "success"}

    def _base_layers(self, body: dict, files: dict):
        if body.get("from"):
            base = self.model(body["from"], 404, f'model "{body["from"]}" not found, try pulling it first')
            layers = [dict(x) for x in base.manifest["layers"]]
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
        path = self.store.blob(digest)
        if not path.exists():
            raise HTTPError(500, f"open {path}: no such file or directory")
        try:
            kv, n_params = read_gguf(path)
        except (ValueError, struct.error, KeyError):
            raise HTTPError(400, "unknown type") from None
        layers.append({"mediaType": MEDIA + kind, "digest": digest, "size": path.stat().st_size})
        if kind != "model":
            return None
        arch = kv.get("general.architecture", "")
        return {"model_format": "gguf", "model_family": arch, "model_families": [arch],
                "model_type": human_number(n_params),
                "file_type": FILE_TYPES.get(kv.get("general.file_type", -1), "unknown"),
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
        name = _name_of(body, "model", "name")
        with self._lock:
            m = self.model(name)
            kv, n_params = read_gguf(self.model_blob(m))
            params = m.params(self.store)
            template = m.text(self.store, "template")
            system = m.text(self.store, "system")
            licenses = [self.store.blob(x["digest"]).read_text("utf-8") for x in m.layers("license")]
            msgs = json.loads(m.text(self.store, "messages") or "[]")
            resp = {"modelfile": self._modelfile(m, template, system, params, licenses, msgs),
                    "parameters": "\n".join(f"{k:<30} {go_value(v)}" for k, vs in sorted(params.items())
                                            for v in (vs if isinstance(vs, list) else [vs])),
                    "template": template or "{{ .Prompt }}", "details": self.details(m),
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
        if template:
            lines.append(f"TEMPLATE {go_quote(template)}")
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
        ids = gotemplate.parse(template).identifiers() if template else set()
        return ["completion"] + [c for c, v in (("tools", "tools"), ("insert", "suffix")) if v in ids]

    def copy(self, body: dict) -> None:
        src, dst = _name_of(body, "source"), _name_of(body, "destination")
        for label, value in (("source", src), ("destination", dst)):
            try:
                split_ollama_name(value)
            except ConfigError:
                raise HTTPError(400, f'{label} "{value}" is invalid') from None
        with self._lock:
            m = self.model(src, 404, f'model "{src}" not found')
            target = self.store.find(dst) or self.store.manifest_path(dst)
            self.store.write_manifest(target, m.raw)

    def delete(self, body: dict) -> None:
        name = _name_of(body, "model", "name")
        with self._lock:
            m = self.model(name)
            m.path.unlink()
            self.store.prune({x["digest"] for x in [m.manifest["config"], *m.manifest["layers"]]})

    # -------------------------------------------------------------- chat and generate
    def _prepare(self, body: dict):
        for key in ("format", "tools", "images", "suffix", "think"):
            if body.get(key):  # fail loudly rather than answer as if honoured
                raise HTTPError(501, f"the Ollama test double does not implement {key!r}")
        name = _name_of(body, "model")
        if not name:
            raise HTTPError(400, "model is required")
        m = self.model(name, 404, f'model "{name}" not found, try pulling it first')
        opts = {**DEFAULTS, **_check_options(m.params(self.store), strict=False),
                **_check_options(body.get("options"), strict=False)}
        return m, opts

    def chat(self, body: dict):
        m, opts = self._prepare(body)
        msgs = body.get("messages") or []
        if not isinstance(msgs, list) or not all(isinstance(x, dict) for x in msgs):
            raise HTTPError(400, "json: cannot unmarshal messages into []api.Message")
        head = {"model": body["model"]}
        if not msgs:
            return iter([{**head, "created_at": _now(), "message": {"role": "assistant", "content": ""},
                          "done_reason": "load", "done": True}])
        prompt = gotemplate.ollama_chat_prompt(
            m.text(self.store, "template") or "{{ .Prompt }}",
            [{"role": x.get("role", ""), "content": x.get("content", "")} for x in msgs],
            model_system=m.text(self.store, "system") or "",
            model_messages=json.loads(m.text(self.store, "messages") or "[]"))
        return self._replies(m, prompt, opts, head, chat=True)

    def generate(self, body: dict):
        m, opts = self._prepare(body)
        head = {"model": body["model"]}
        prompt = body.get("prompt") or ""
        if not prompt:
            return iter([{**head, "created_at": _now(), "response": "", "done": True,
                          "done_reason": "load"}])
        if not body.get("raw"):
            prompt = gotemplate.ollama_generate_prompt(
                body.get("template") or m.text(self.store, "template") or "{{ .Prompt }}",
                prompt, system=body.get("system") or "",
                model_system=m.text(self.store, "system") or "",
                model_messages=json.loads(m.text(self.store, "messages") or "[]"))
        return self._replies(m, prompt, opts, head, chat=False)

    def _replies(self, m: Model, prompt: str, opts: dict, head: dict, chat: bool):
        def chunk(text: str) -> dict:
            body = {"message": {"role": "assistant", "content": text}} if chat else {"response": text}
            return {**head, "created_at": _now(), **body, "done": False}

        stats: dict[str, Any] = {}
        for piece in self._generate(self.model_blob(m), prompt, opts, stats):
            yield chunk(piece)
        final = {**chunk(""), "done": True, **stats}
        if not chat:
            final["context"] = final.pop("_tokens")
        final.pop("_tokens", None)
        yield final

    def _llama(self, path: Path, n_ctx: int) -> tuple[Any, int]:
        t0 = time.perf_counter_ns()
        key = (str(path), n_ctx)
        if key not in self._llamas:
            import llama_cpp

            self._llamas[key] = llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, verbose=False)
        return self._llamas[key], time.perf_counter_ns() - t0

    def _generate(self, path: Path, prompt: str, opts: dict, stats: dict):
        """Text pieces, with stop strings held back and cut as Ollama's runner does."""
        import llama_cpp

        start = time.perf_counter_ns()
        with self._gen_lock:
            llm, load_ns = self._llama(path, int(opts["num_ctx"]))
            tokens = llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)
            room = llm.n_ctx() - len(tokens)
            if room <= 0:
                raise HTTPError(500, f"prompt is {len(tokens)} tokens, more than num_ctx {llm.n_ctx()}")
            limit = min(room, opts["num_predict"]) if opts["num_predict"] > 0 else room
            seed = opts["seed"] if opts["seed"] >= 0 else random.randrange(2**31)
            llm.set_seed(seed)
            stops = list(opts["stop"] or [])
            out, pending, raw, count, reason = [], "", b"", 0, "length"
            t_eval = None
            for tok in llm.generate(tokens, top_k=int(opts["top_k"]), top_p=opts["top_p"],
                                    min_p=opts["min_p"], typical_p=opts["typical_p"],
                                    temp=opts["temperature"], repeat_penalty=opts["repeat_penalty"],
                                    presence_penalty=opts["presence_penalty"],
                                    frequency_penalty=opts["frequency_penalty"]):
                t_eval = t_eval or time.perf_counter_ns()
                if llama_cpp.llama_vocab_is_eog(llm._model.vocab, tok):
                    reason = "stop"
                    break
                count += 1
                out.append(tok)
                raw += llm.detokenize([tok], special=True)
                text, raw = _utf8_prefix(raw)
                pending += text
                cut = min((pending.find(s) for s in stops if s in pending), default=-1)
                if cut >= 0:
                    pending, reason = pending[:cut], "stop"
                    break
                hold = max((n for s in stops for n in range(len(s), 0, -1)
                            if pending.endswith(s[:n])), default=0)
                if len(pending) > hold:
                    yield pending[:len(pending) - hold]
                    pending = pending[len(pending) - hold:]
                if count >= limit:
                    break
            if pending:
                yield pending
            end = time.perf_counter_ns()
        t_eval = t_eval or end
        stats.update(done_reason=reason, total_duration=end - start, load_duration=load_ns,
                     prompt_eval_count=len(tokens), prompt_eval_duration=t_eval - start - load_ns,
                     eval_count=count, eval_duration=end - t_eval, _tokens=tokens + out)


def _utf8_prefix(raw: bytes) -> tuple[str, bytes]:
    """Decode what is complete; keep a trailing partial UTF-8 sequence for the next token."""
    for cut in range(len(raw), max(len(raw) - 4, -1), -1):
        try:
            return raw[:cut].decode("utf-8"), raw[cut:]
        except UnicodeDecodeError:
            continue
    return raw.decode("utf-8", "replace"), b""


# ------------------------------------------------------------------ HTTP plumbing

class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    double: OllamaDouble

    def log_message(self, *args: Any) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def _dispatch(self, method: str) -> None:
        path = self.path.split("?", 1)[0]
        d = self.double
        d.requests.append((method, path))
        try:
            fault = d.faults.take(method, path)
            if fault is not None:
                self._drain()
                raise fault
            self._route(method, path)
        except HTTPError as e:
            self._send(e.status, go_json({"error": e.message}), "application/json; charset=utf-8")
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _route(self, method: str, path: str) -> None:
        d = self.double
        if path.startswith("/api/blobs/") and method in ("HEAD", "POST"):
            digest = path[len("/api/blobs/"):]
            status = d.head_blob(digest) if method == "HEAD" else d.post_blob(digest, self._chunks(), self._reset)
            if status:
                self._send(status, b"", None)
            return
        simple = {("GET", "/"): lambda: self._send(200, b"Ollama is running", "text/plain; charset=utf-8"),
                  ("HEAD", "/"): lambda: self._send(200, b"", None),
                  ("GET", "/api/version"): lambda: self._json({"version": d.version}),
                  ("GET", "/api/tags"): lambda: self._json(d.tags()),
                  ("POST", "/api/show"): lambda: self._json(d.show(self._body())),
                  ("POST", "/api/copy"): lambda: (d.copy(self._body()), self._send(200, b"", None)),
                  ("DELETE", "/api/delete"): lambda: (d.delete(self._body()), self._send(200, b"", None))}
        streams = {("POST", "/api/create"): d.create, ("POST", "/api/chat"): d.chat,
                   ("POST", "/api/generate"): d.generate}
        if (method, path) in simple:
            simple[(method, path)]()
        elif (method, path) in streams:
            body = self._body()
            gen = streams[(method, path)](body)
            self._respond(gen, body.get("stream", True) is not False, path != "/api/create")
        else:
            self._drain()
            self._send(404, b"404 page not found", "text/plain")

    # ---------------------------------------------------------- request body
    def _chunks(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return
                yield self.rfile.read(size)
                self.rfile.readline()
        left = int(self.headers.get("Content-Length") or 0)
        while left > 0:
            data = self.rfile.read(min(left, 1 << 20))
            if not data:
                raise ConnectionResetError("client went away mid-body")
            left -= len(data)
            yield data

    def _drain(self) -> None:
        for _ in self._chunks():
            pass

    def _body(self) -> dict:
        raw = b"".join(self._chunks())
        if not raw.strip():
            raise HTTPError(400, "missing request body")
        try:
            body = json.loads(raw)
        except json.JSONDecodeError as e:
            raise HTTPError(400, f"invalid character in JSON body: {e.msg}") from None
        if not isinstance(body, dict):
            raise HTTPError(400, "json: cannot unmarshal body into a request object")
        return body

    def _reset(self) -> None:
        """Vanish mid-upload: an RST, no response."""
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()
        self.close_connection = True

    # ---------------------------------------------------------- responses
    def _send(self, status: int, body: bytes, ctype: str | None) -> None:
        self.send_response(status)
        if ctype:
            self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, obj: Any) -> None:
        self._send(200, go_json(obj), "application/json; charset=utf-8")

    def _respond(self, gen, stream: bool, generation: bool) -> None:
        """NDJSON when streaming (errors become an {"error"} line after a 200); otherwise one
        JSON: the final object (text joined for chat/generate) or the error's status."""
        try:
            if stream:
                self._ndjson(gen)
                return
            items = list(gen)
            final = dict(items[-1])
            if generation and len(items) > 1:
                if "message" in final:
                    text = "".join(x["message"]["content"] for x in items)
                    final["message"] = {"role": "assistant", "content": text}
                else:
                    final["response"] = "".join(x["response"] for x in items)
            self._json(final)
        finally:
            gen.close()

    def _ndjson(self, gen) -> None:
        first = None
        try:
            first = next(gen)
        except StopIteration:
            pass
        except HTTPError as e:
            first = {"error": e.message}
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        item = first
        while item is not None:
            line = go_json(item) + b"\n"
            self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
            self.wfile.flush()
            if "error" in item:
                break
            try:
                item = next(gen)
            except StopIteration:
                item = None
            except HTTPError as e:
                item = {"error": e.message}
        self.wfile.write(b"0\r\n\r\n")
