"""/api/push and /api/pull against an OCI registry, following Ollama's PushHandler/PullHandler
(server/routes.go) and PushModel/PullModel (server/images.go).

Push: "retrieving manifest", each layer then the config through upload_blob ("pushing <12
hex>"), "pushing manifest" (PUT json.Marshal of the manifest, media type
application/vnd.docker.distribution.manifest.v2+json), "success". Pull: "pulling manifest",
each blob through download_blob, "verifying sha256 digest", "writing manifest" (json.Marshal:
no trailing newline, unlike the origin's own file, so /api/tags digests differ while the
layers are identical), "removing unused layers" when the tag moved, "success".

A mixin of OllamaDouble: it uses self.store, self._lock and self.retry_unit_s.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from typing import Any

from .blobs_manifests import MANIFEST_MEDIA, Store, manifest_blobs
from .download import download_blob
from .faults import HTTPError
from .goenc import go_manifest
from .names import InvalidName, parse_valid
from .params import name_of
from .registry_http import GoError, ModelPath, make_request_with_retry
from .transfer import Options
from .upload import upload_blob

Progress = Iterator[dict[str, Any]]


class TransferAPI:
    retry_unit_s = 1.0  # Ollama sleeps 2**try seconds between retries; tests may shorten the unit

    def _existing_name(self, name: str) -> str:
        """getExistingName: a stored model's own spelling when the name matches one case-insensitively."""
        try:
            path = self.store.find(name)
        except InvalidName:
            return name
        return Store.display_name(path) if path is not None else name

    # -------------------------------------------------------------- push
    def push(self, body: dict) -> Progress:
        name = name_of(body, "model", "name")
        if not name:
            raise HTTPError(400, "model is required")
        return self._failing_as_ollama(self._push(self._existing_name(name), body.get("insecure") is True))

    def _push(self, name: str, insecure: bool) -> Progress:
        mp = ModelPath.parse(name)
        yield {"status": "retrieving manifest"}
        if mp.scheme == "http" and not insecure:
            raise GoError("insecure protocol http")
        manifest = self._local_manifest(name)
        if manifest is None:
            yield {"status": "couldn't retrieve manifest"}
            raise GoError(self._missing_manifest(name))
        opts = Options(insecure, self.retry_unit_s)
        for layer in manifest_blobs(manifest):
            yield from upload_blob(self.store.blob(layer["digest"]), mp, layer, opts)
        yield {"status": "pushing manifest"}
        make_request_with_retry("PUT", mp.url("manifests", mp.tag), {"Content-Type": MANIFEST_MEDIA},
                                go_manifest(manifest), insecure=insecure).close()
        yield {"status": "success"}

    def _local_manifest(self, name: str) -> dict[str, Any] | None:
        try:
            path = self.store.find(name)
        except InvalidName:
            return None
        return json.loads(path.read_bytes()) if path is not None else None

    def _missing_manifest(self, name: str) -> str:
        try:
            return f"open {self.store.manifest_path(name)}: no such file or directory"
        except InvalidName:  # GetManifestPath refuses an invalid name with fs.ErrNotExist
            return "file does not exist"

    # -------------------------------------------------------------- pull
    def pull(self, body: dict) -> Progress:
        name = name_of(body, "model", "name")
        if parse_valid(name) is None:
            raise HTTPError(400, "invalid model name")
        return self._failing_as_ollama(self._pull(self._existing_name(name), body.get("insecure") is True))

    def _pull(self, name: str, insecure: bool) -> Progress:
        mp = ModelPath.parse(name)
        old = self._local_manifest(name)
        unused = {x["digest"] for x in manifest_blobs(old)} if old else set()
        if mp.scheme == "http" and not insecure:
            raise GoError("insecure protocol http")
        yield {"status": "pulling manifest"}
        manifest = self._registry_manifest(mp, insecure)
        opts, cached = Options(insecure, self.retry_unit_s), {}
        for layer in manifest_blobs(manifest):
            blob = self.store.blob(layer["digest"])
            cached[layer["digest"]] = yield from download_blob(blob, mp, layer["digest"], opts)
        yield {"status": "verifying sha256 digest"}
        for digest in (d for d, hit in cached.items() if not hit):
            self._verify(digest)
        unused -= set(cached)
        yield {"status": "writing manifest"}
        with self._lock:
            self.store.write_manifest(self.store.find(name) or self.store.manifest_path(name), go_manifest(manifest))
        if unused:
            yield {"status": "removing unused layers"}
            with self._lock:
                self.store.prune(unused)
        yield {"status": "success"}

    @staticmethod
    def _registry_manifest(mp: ModelPath, insecure: bool) -> dict[str, Any]:
        try:
            resp = make_request_with_retry("GET", mp.url("manifests", mp.tag), {"Accept": MANIFEST_MEDIA},
                                           insecure=insecure)
            try:
                manifest = json.loads(resp.read())
            finally:
                resp.close()
        except GoError as e:
            raise GoError(f"pull model manifest: {e}") from None
        except ValueError as e:  # json.NewDecoder(resp.Body).Decode
            raise GoError(f"pull model manifest: {e}") from None
        if not isinstance(manifest, dict):
            raise GoError("pull model manifest: json: cannot unmarshal into Go value of type manifest.Manifest")
        return manifest

    def _verify(self, digest: str) -> None:
        """verifyBlob: a mismatched blob is removed, and the pull fails naming both digests."""
        path = self.store.blob(digest)
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        got = "sha256:" + h.hexdigest()
        if got != digest:
            path.unlink(missing_ok=True)
            raise GoError(f"digest mismatch, file must be downloaded again: want {digest}, got {got}")

    @staticmethod
    def _failing_as_ollama(steps: Progress) -> Progress:
        """An error inside PushModel/PullModel reaches the client as {"error"} with status 500."""
        try:
            yield from steps
        except GoError as e:
            raise HTTPError(500, str(e)) from None
