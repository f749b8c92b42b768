"""OllamaDouble: lifecycle, model lookups and the blob endpoints; the rest comes from the mixins
(models.py, chat.py, push_pull.py)."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from .blobs_manifests import Model, Store
from .chat import ChatAPI
from .faults import Faults, HTTPError
from .models import ModelsAPI
from .names import InvalidName
from .push_pull import TransferAPI
from .server import Handler, QuietServer

VERSION = "0.24.0"


class OllamaDouble(ModelsAPI, ChatAPI, TransferAPI):
    """Start with .start() (or a with-block), point ollama.Client(host=.url) at it."""

    def __init__(self, models_dir: str | Path, *, version: str = VERSION) -> None:
        self.store = Store(Path(models_dir))
        self.version = version
        self.faults = Faults()
        self.requests: list[tuple[str, str]] = []
        self._server: QuietServer | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.RLock()      # manifests and blobs change under it
        self._gen_lock = threading.Lock()   # one generation at a time, like one runner
        self._llamas: dict[tuple[str, int], Any] = {}
        self.prompts: list[str] = []        # every prompt handed to the runner, in order
    # -------------------------------------------------------------- lifecycle
    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("OllamaDouble is not started")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> OllamaDouble:
        handler = type("Handler", (Handler,), {"double": self})
        self._server = QuietServer(("127.0.0.1", 0), handler)
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
        except InvalidName:
            raise HTTPError(400, "invalid model name") from None
        if path is None:
            raise HTTPError(status, message or f"model '{name}' not found")
        raw = path.read_bytes()
        return Model(Store.display_name(path), path, json.loads(raw), raw)

    def ps(self) -> dict[str, Any]:
        """GET /api/ps: the models the runner holds. Everything here runs on the CPU, so
        size_vram is 0, as a real server without a GPU reports; size is the GGUF's bytes."""
        loaded = {path: n_ctx for path, n_ctx in tuple(self._llamas)}  # no lock: ps answers mid-generation too
        until = (datetime.now() + timedelta(minutes=5)).astimezone().isoformat()
        return {"models": [
            {**{k: t[k] for k in ("name", "model", "size", "digest", "details")}, "expires_at": until,
             "size_vram": 0, "context_length": loaded[blob]}
            for t in self.tags()["models"]
            if (blob := str(self.model_blob(self.model(t["name"])))) in loaded]}

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
