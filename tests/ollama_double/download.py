"""Pulling one blob from a registry, ported from Ollama's server/download.go.

A blob already on disk is a cache hit. Otherwise: HEAD the blob (redirects followed) for its
size; cut it into parts recorded in <blob>-partial-N files (a later pull resumes them); GET the
blob while following redirects only to the *same* host name and keep the first answer that
points elsewhere: it must be a 307 or a 200 and carry a Location, or the pull fails with
"http: no Location header in response" (a registry that serves blobs itself, ollama#7244).
Each part is then fetched from that direct URL with a Range header into <blob>-partial,
which is renamed into place when every part is complete.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .registry_http import (
    USE_LAST_RESPONSE,
    GoError,
    ModelPath,
    make_request,
    make_request_with_retry,
)
from .transfer import Options, Transfer, plan_parts, retry

DIRECT_URL_TIMEOUT_S = 30.0  # context.WithTimeout around finding the direct URL
_CHUNK = 1 << 20


class _Download(Transfer):
    def __init__(self, blob: Path, digest: str, opts: Options) -> None:
        super().__init__("pulling", digest)
        self.blob, self.opts = blob, opts
        self.parts: list[dict[str, int]] = []

    def _part_file(self, n: int) -> Path:
        return self.blob.with_name(f"{self.blob.name}-partial-{n}")

    def _write_part(self, part: dict[str, int]) -> None:
        self._part_file(part["N"]).write_text(json.dumps(part, separators=(",", ":")) + "\n")

    def prepare(self, url: str) -> None:
        for path in sorted(self.blob.parent.glob(f"{self.blob.name}-partial-*")):
            part = json.loads(path.read_text())
            self.total += part["Size"]
            self.completed += part["Completed"]
            self.parts.append(part)
        if self.parts:
            return
        resp = make_request_with_retry("HEAD", url, insecure=self.opts.insecure)
        resp.close()
        try:
            self.total = int(resp.headers.get("Content-Length") or 0)
        except ValueError:
            self.total = 0
        for n, (offset, size) in enumerate(plan_parts(self.total)):
            part = {"N": n, "Offset": offset, "Size": size, "Completed": 0}
            self._write_part(part)
            self.parts.append(part)

    def run(self, url: str) -> None:
        data = self.blob.with_name(f"{self.blob.name}-partial")
        with open(data, "r+b" if data.exists() else "w+b") as f:
            f.truncate(self.total)
            direct = self._direct_url(url)
            for part in self.parts:
                if part["Completed"] < part["Size"]:
                    retry(self.opts, lambda part=part: self._chunk(direct, f, part))
        for n in range(len(self.parts)):
            self._part_file(n).unlink()
        data.replace(self.blob)

    def _direct_url(self, url: str) -> str:
        host = urlsplit(url).hostname

        def same_host_only(target: str, via: list[str]) -> Any:
            if len(via) > 10:
                return GoError("maximum redirects exceeded (10) for directURL")
            return None if urlsplit(target).hostname == host else USE_LAST_RESPONSE

        deadline, n = time.monotonic() + DIRECT_URL_TIMEOUT_S, 0
        while True:
            try:
                resp = make_request_with_retry("GET", url, insecure=self.opts.insecure,
                                               check_redirect=same_host_only)
            except GoError:  # backoff: n^2 * 10 ms, jittered, at most 10 s, within the 30 s context
                n += 1
                delay = min(n * n * 0.01, 10.0) * random.uniform(0.5, 1.5)
                if time.monotonic() + delay > deadline:
                    raise GoError("context deadline exceeded") from None
                time.sleep(delay)
                continue
            try:
                if resp.status not in (307, 200):
                    raise GoError(f"unexpected status code {resp.status}")
                return resp.location()
            finally:
                resp.close()

    def _chunk(self, direct: str, f: Any, part: dict[str, int]) -> None:
        """downloadChunk: http.DefaultClient (no scheme rewrite), its status never checked."""
        start, want = part["Offset"] + part["Completed"], part["Size"] - part["Completed"]
        resp = make_request("GET", direct, {"Range": f"bytes={start}-{part['Offset'] + part['Size'] - 1}"})
        got = 0
        try:
            f.seek(start)
            while got < want and (chunk := resp.read(min(_CHUNK, want - got))):
                f.write(chunk)
                got += len(chunk)
                self.add(len(chunk))
        finally:
            resp.close()
        part["Completed"] += got
        self._write_part(part)
        if got < want:
            raise GoError("unexpected EOF")


def download_blob(blob: Path, mp: ModelPath, digest: str, opts: Options) -> Iterator[dict[str, Any]]:
    """downloadBlob: progress dicts ("pulling <12 hex>"); returns True on a cache hit."""
    if blob.exists():
        size = blob.stat().st_size
        yield {"status": f"pulling {digest[7:19]}", "digest": digest, "total": size, "completed": size}
        return True
    url = mp.url("blobs", digest)
    download = _Download(blob, digest, opts)
    download.prepare(url)
    download.start(lambda: download.run(url))
    yield from download.wait()
    return False
