"""HTTP plumbing: routes, request bodies (plain and chunked), JSON and NDJSON answers."""

from __future__ import annotations

import json
import socket
import struct
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from .faults import HTTPError
from .goenc import go_json

GENERATION = ("/api/chat", "/api/generate")  # their non-streamed answer joins the streamed text


class QuietServer(ThreadingHTTPServer):
    """A client that hangs up (a dropped upload, a killed register) is normal here, not a traceback."""

    daemon_threads = True

    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    double: Any  # the OllamaDouble this handler serves (set by OllamaDouble.start)
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
                  ("GET", "/api/ps"): lambda: self._json(d.ps()),
                  ("POST", "/api/show"): lambda: self._json(d.show(self._body())),
                  ("POST", "/api/copy"): lambda: (d.copy(self._body()), self._send(200, b"", None)),
                  ("DELETE", "/api/delete"): lambda: (d.delete(self._body()), self._send(200, b"", None))}
        streams = {("POST", "/api/create"): d.create, ("POST", "/api/chat"): d.chat,
                   ("POST", "/api/generate"): d.generate, ("POST", "/api/push"): d.push,
                   ("POST", "/api/pull"): d.pull}
        if (method, path) in simple:
            simple[(method, path)]()
        elif (method, path) in streams:
            body = self._body()
            gen = streams[(method, path)](body)
            self._respond(gen, body.get("stream", True) is not False, path in GENERATION)
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
