"""Pushing one blob to a registry, ported from Ollama's server/upload.go.

HEAD the blob (present: done); POST blobs/uploads/ (with mount/from when the layer has a
`from`; 201 means mounted); PATCH each part to the Location the previous answer gave
(Content-Range, X-Redirect-Uploads: 1; a 307 re-sends the part with PUT to the redirect);
then PUT the last Location with ?digest=...&etag=<md5 of the parts' md5s>-<parts>.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from .faults import HTTPError
from .registry_http import GoError, ModelPath, NotExist, make_request, make_request_with_retry
from .transfer import Options, Transfer, plan_parts, retry


class _Section:
    """io.TeeReader(NewSectionReader(file, offset, size), MultiWriter(progress, md5))."""

    def __init__(self, path: Path, offset: int, size: int, transfer: Transfer) -> None:
        self._f = open(path, "rb")  # noqa: SIM115 - closed by close(), after http.client has read it
        self._f.seek(offset)
        self._left, self._transfer = size, transfer
        self.md5, self.sent = hashlib.md5(), 0

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(self._left if n < 0 else min(n, self._left))
        self._left -= len(data)
        self.sent += len(data)
        self._transfer.add(len(data))
        self.md5.update(data)
        return data

    def rollback(self) -> None:  # progressWriter.Rollback
        self._transfer.add(-self.sent)
        self.sent = 0

    def close(self) -> None:
        self._f.close()


def _with_query(url: str, **values: str) -> str:
    """url.Values.Add then Encode: existing pairs kept, keys sorted."""
    u = urlsplit(url)
    pairs = parse_qsl(u.query, keep_blank_values=True) + list(values.items())
    return urlunsplit((u.scheme, u.netloc, u.path, urlencode(sorted(pairs, key=lambda kv: kv[0])), ""))


class _Upload(Transfer):
    def __init__(self, path: Path, layer: dict[str, Any], opts: Options) -> None:
        super().__init__("pushing", layer["digest"])
        self.path, self.opts = path, opts
        self.parts: list[tuple[int, int]] = []
        self.md5s: dict[int, bytes] = {}
        self.next_url = ""

    def prepare(self, mp: ModelPath, layer: dict[str, Any]) -> bool:
        """Open the upload session; True when the registry mounted the blob (201)."""
        url = mp.url("blobs", "uploads") + "/"
        if layer.get("from"):
            url = _with_query(url, mount=self.digest, **{"from": ModelPath.parse(layer["from"]).namespace_repository()})
        resp = make_request_with_retry("POST", url, insecure=self.opts.insecure)
        resp.close()
        location = resp.headers.get("Docker-Upload-Location") or resp.headers.get("Location") or ""
        try:
            self.total = self.path.stat().st_size
        except FileNotFoundError:
            raise GoError(f"stat {self.path}: no such file or directory") from None
        if resp.status == 201:
            self.completed = self.total
            return True
        self.parts, self.next_url = plan_parts(self.total), location
        return False

    def run(self) -> None:
        for n, (offset, size) in enumerate(self.parts):
            url = self.next_url
            retry(self.opts, lambda url=url, n=n, offset=offset, size=size:
                  self._part("PATCH", url, n, offset, size, self.opts.insecure))
        etag = hashlib.md5(b"".join(self.md5s[n] for n in range(len(self.parts)))).hexdigest()
        url = _with_query(self.next_url, digest=self.digest, etag=f"{etag}-{len(self.parts)}")
        headers = {"Content-Type": "application/octet-stream", "Content-Length": "0"}
        retry(self.opts, lambda: make_request_with_retry("PUT", url, headers, None,
                                                         insecure=self.opts.insecure).close())

    def _part(self, method: str, url: str, n: int, offset: int, size: int, insecure: bool) -> None:
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
        if method == "PATCH":
            headers.update({"X-Redirect-Uploads": "1", "Content-Range": f"{offset}-{offset + size - 1}"})
        body = _Section(self.path, offset, size, self)
        try:
            resp = make_request(method, url, headers, body, insecure=insecure)
        except GoError:
            body.rollback()
            raise
        finally:
            body.close()
        try:
            location = resp.headers.get("Docker-Upload-Location") or resp.headers.get("Location") or ""
            if resp.status == 307:  # the registry wants the bytes elsewhere: PUT them there
                body.rollback()
                self.next_url = location
                target = resp.location()
                retry(self.opts, lambda: self._part("PUT", target, n, offset, size, False))
                return
            if resp.status == 401:
                raise HTTPError(501, f"the Ollama test double does not implement registry authentication "
                                     f"({url} answered 401)")
            if resp.status >= 400:
                body.rollback()
                raise GoError(f"http status {resp.status_text}: {resp.read().decode('utf-8', 'replace')}")
        finally:
            resp.close()
        if method == "PATCH":
            self.next_url = location
        self.md5s[n] = body.md5.digest()


def upload_blob(blob: Path, mp: ModelPath, layer: dict[str, Any], opts: Options) -> Iterator[dict[str, Any]]:
    """uploadBlob: progress dicts ("pushing <12 hex>") until the registry holds the blob."""
    try:
        make_request_with_retry("HEAD", mp.url("blobs", layer["digest"]), insecure=opts.insecure).close()
    except NotExist:
        pass
    else:
        size = int(layer.get("size", 0))
        yield {"status": f"pushing {layer['digest'][7:19]}", "digest": layer["digest"], "total": size,
               "completed": size}
        return
    upload = _Upload(blob, layer, opts)
    if upload.prepare(mp, layer):
        yield upload.progress()
        return
    upload.start(upload.run)
    yield from upload.wait()
