"""A real OCI registry for the publish tests: the CNCF distribution registry (Debian's
`docker-registry`), on a free loopback port, with its `redirect` storage middleware pointing
blob downloads at a static file server over its storage root on a second port.

Ollama's pull insists that blob GETs redirect to a *different host name* (see
tests/ollama_double/download.py), hence baseurl http://localhost:PORT2/ while the registry
itself is addressed as 127.0.0.1:PORT. Without the binary the tests that use it skip, except in
CI (CI=true, as build/system_packages.sh reads it): there they must run, so they fail.

    def test_x(registry):            # redirecting, as pull needs
    with start_registry(path, redirect=False) as plain: ...   # serves blobs itself
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"
_BINARIES = ("docker-registry", "registry")  # Debian's name, upstream's name


def registry_binary() -> str | None:
    return os.environ.get("LORASHIP_REGISTRY_BIN") or next(filter(None, map(shutil.which, _BINARIES)), None)


@dataclass
class Registry:
    host: str          # HOST:PORT, as it appears in Ollama names
    root: Path         # the filesystem driver's rootdirectory
    files_url: str     # where blob GETs are redirected ("" when they are not)
    log: Path

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def get(self, path: str, accept: str = MANIFEST_V2) -> tuple[int, dict[str, str], bytes]:
        req = urllib.request.Request(self.url + path, headers={"Accept": accept})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()

    def manifest(self, repository: str, reference: str) -> dict[str, Any]:
        status, _, body = self.get(f"/v2/{repository}/manifests/{reference}")
        assert status == 200, f"{repository}:{reference} is not in the registry ({status}: {body[:200]!r})"
        return json.loads(body)

    def model_layer(self, repository: str, reference: str) -> str:
        layers = self.manifest(repository, reference)["layers"]
        return next(x["digest"] for x in layers if x["mediaType"] == "application/vnd.ollama.image.model")


# ------------------------------------------------------------------ the redirect companion

class _Slice:
    def __init__(self, f: Any, n: int) -> None:
        self._f, self._left = f, n

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(self._left if n < 0 else min(n, self._left))
        self._left -= len(data)
        return data

    def close(self) -> None:
        self._f.close()


class _Files(SimpleHTTPRequestHandler):
    """Static files with single byte ranges (Ollama fetches each part with a Range header)."""

    def log_message(self, *args: Any) -> None:
        pass

    def send_head(self):  # noqa: ANN201 - http.server's signature
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", (self.headers.get("Range") or "").strip())
        path = self.translate_path(self.path)
        if match is None or not os.path.isfile(path):
            return super().send_head()
        size = os.path.getsize(path)
        start, end = int(match[1]), min(int(match[2] or size - 1), size - 1)
        if start >= size:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{size}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        f = open(path, "rb")  # noqa: SIM115 - http.server closes what send_head returns
        f.seek(start)
        self.send_response(206)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(end - start + 1))
        self.end_headers()
        return _Slice(f, end - start + 1)


@contextlib.contextmanager
def _file_server(root: Path, port: int) -> Iterator[None]:
    servers = []
    for family, addr in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        cls = type("Server", (ThreadingHTTPServer,), {"address_family": family, "daemon_threads": True})
        try:  # `localhost` may resolve to either loopback address; bind both where there are both
            servers.append(cls((addr, port), functools.partial(_Files, directory=str(root))))
        except OSError:
            if family == socket.AF_INET:
                raise
    for s in servers:
        threading.Thread(target=s.serve_forever, args=(0.05,), daemon=True).start()
    try:
        yield
    finally:
        for s in servers:
            s.shutdown()
            s.server_close()


# ------------------------------------------------------------------ the registry

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(root: Path, port: int, files_url: str, readonly: bool) -> str:
    lines = ["version: 0.1", "log:", "  level: error", "  accesslog:", "    disabled: true",
             "storage:", "  filesystem:", f"    rootdirectory: {root}", "  delete:", "    enabled: true",
             "  maintenance:", "    uploadpurging:", "      enabled: false", "    readonly:",
             f"      enabled: {'true' if readonly else 'false'}",
             "http:", f"  addr: 127.0.0.1:{port}", "  secret: loraship-tests-only"]
    if files_url:
        lines += ["middleware:", "  storage:", "    - name: redirect", "      options:",
                  f"        baseurl: {files_url}"]
    return "\n".join(lines) + "\n"


def _wait_ready(proc: subprocess.Popen, url: str, log: Path) -> bool:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(url + "/v2/", timeout=2) as r:
                if r.status == 200:
                    return True
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"the registry did not answer in 20 s; its log: {log.read_text()[-400:]}")


@contextlib.contextmanager
def start_registry(base: Path, redirect: bool = True, readonly: bool = False) -> Iterator[Registry]:
    """Run the registry (and, with redirect, its file server) until the block ends; a readonly
    one (maintenance mode) refuses every upload."""
    binary = registry_binary()
    if binary is None:
        why = "docker-registry is not installed (`make test-system-packages`, or apt-get install docker-registry)"
        if os.environ.get("CI") == "true":  # CI installs it (build/system_packages.sh): run, never skip
            pytest.fail(why + ", and CI=true requires it")
        pytest.skip(why)
    root, log = base / "storage", base / "registry.log"
    root.mkdir(parents=True, exist_ok=True)
    for _ in range(3):  # a free port can be taken between choosing it and binding it
        port, files_port = _free_port(), _free_port()
        files_url = f"http://localhost:{files_port}/" if redirect else ""
        (base / "config.yml").write_text(_config(root, port, files_url, readonly))
        with _file_server(root, files_port) if redirect else contextlib.nullcontext(), open(log, "wb") as out:
            proc = subprocess.Popen([binary, "serve", str(base / "config.yml")], stdout=out,
                                    stderr=subprocess.STDOUT)
            try:
                if _wait_ready(proc, f"http://127.0.0.1:{port}", log):
                    yield Registry(f"127.0.0.1:{port}", root, files_url, log)
                    return
            finally:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        if "address already in use" not in log.read_text():
            break
    raise RuntimeError(f"the registry did not start; its log: {log.read_text()[-400:]}")


@pytest.fixture
def registry(tmp_path) -> Iterator[Registry]:
    """A redirecting registry (pull works against it), stopped after the test."""
    with start_registry(tmp_path / "registry") as reg:
        yield reg
