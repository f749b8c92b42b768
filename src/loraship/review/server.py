"""The review server: the standard library's http.server, on loopback unless told otherwise.

GET / shows the form (page.py); POST /save writes feedback.jsonl beside the report
(atomically: the file is read, the reviewer's ratings of this report are replaced, and the
whole file is renamed into place) and redirects back. A POST must carry the page's random
token and, on loopback, a loopback Host header: another web site open in the same browser
can neither submit ratings (cross-site form posts) nor read the page (DNS rebinding).
"""

from __future__ import annotations

import ipaddress
import secrets
import threading
import unicodedata
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit

from loraship.data import feedback
from loraship.errors import ConfigError
from loraship.review import page
from loraship.review.report import Review
from loraship.store import atomic

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
MAX_BODY = 4 << 20  # a form of every answer with long corrections stays far below this
MAX_REVIEWER = 80
_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
                               "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class FormError(Exception):
    """What is wrong with a submitted form; the page is shown again with the inputs kept."""

    def __init__(self, message: str, values: dict[int, tuple[str, str]]):
        super().__init__(message)
        self.values = values


def is_loopback(host: str) -> bool:
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def _first(form: dict[str, list[str]], key: str) -> str:
    return (form.get(key) or [""])[0]


def _reviewer(name: str) -> str:
    name = " ".join(name.split())
    if not name:
        raise ValueError("enter your name first: it is recorded with each rating")
    if len(name) > MAX_REVIEWER or any(unicodedata.category(ch).startswith("C") for ch in name):
        raise ValueError(f"a reviewer name is at most {MAX_REVIEWER} printable characters")
    return name


class ReviewServer:
    def __init__(self, review: Review, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, *,
                 allow_remote: bool = False, log: Callable[[str], None] = lambda s: None):
        if not is_loopback(host) and not allow_remote:
            raise ConfigError(f"refusing to serve the review page on {host}: anyone who reaches it could write "
                              "feedback; it binds to 127.0.0.1 unless --host names another address")
        self.review, self.log = review, log
        self.token = secrets.token_urlsafe(24)
        self._lock = threading.Lock()
        if review.feedback_path.exists():
            feedback.read_records(review.feedback_path)  # a broken file is reported now, not at the first save
        try:
            self.httpd = ThreadingHTTPServer((host, port), _handler(self))
        except OSError as e:
            raise ConfigError(f"cannot listen on {host}:{port} ({e.strerror}): pass --port 0 for any free port, "
                              "or another --port") from None
        self.host, self.port = host, self.httpd.server_address[1]
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    # ------------------------------------------------------------ running

    def serve_forever(self) -> None:
        self.httpd.serve_forever()

    def start(self) -> ReviewServer:
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        if self._thread:
            self._thread.join(timeout=5)

    # ------------------------------------------------------------ state

    def saved_values(self, reviewer: str) -> dict[int, tuple[str, str]]:
        """What this reviewer saved before, to show it chosen again."""
        if not reviewer or not self.review.feedback_path.exists():
            return {}
        mine = {(r["tag"], r["question_id"]): r for r in feedback.read_records(self.review.feedback_path)
                if r["reviewer"] == reviewer}
        out = {}
        for item in self.review.items:
            r = mine.get((item.tag, item.question["id"]))
            if r:
                out[item.index] = (r["rating"], r.get("correction") or "")
        return out

    def parse(self, form: dict[str, list[str]]) -> tuple[str, dict[int, tuple[str, str]]]:
        values = {}
        for item in self.review.items:
            rating = _first(form, f"r{item.index}")
            correction = _first(form, f"c{item.index}").replace("\r\n", "\n").strip()
            values[item.index] = (rating if rating in ("up", "down") else "", correction)
        try:
            reviewer = _reviewer(_first(form, "reviewer"))
        except ValueError as e:
            raise FormError(str(e), values) from None
        for item in self.review.items:
            rating, correction = values[item.index]
            where = f"{item.tag}'s answer to {item.question['question']!r}"
            if correction and rating != "down":
                raise FormError(f"{where}: a corrected answer goes with a thumbs down; choose thumbs down "
                                "or clear the correction", values)
        return reviewer, values

    def save(self, reviewer: str, values: dict[int, tuple[str, str]]) -> int:
        """Replace this reviewer's ratings of this report with `values`; returns how many were saved."""
        records = [self.review.record(item, values[item.index][0], values[item.index][1] or None, reviewer)
                   for item in self.review.items if values.get(item.index, ("", ""))[0]]
        keys = {(i.tag, i.question["id"]) for i in self.review.items}
        path = self.review.feedback_path
        with self._lock:
            old = feedback.read_records(path) if path.exists() else []
            kept = [r for r in old if r["reviewer"] != reviewer or (r["tag"], r["question_id"]) not in keys]
            atomic.write_text(path, feedback.dumps(kept + records))
        self.log(f"saved {len(records)} ratings by {reviewer} to {path}")
        return len(records)

    def host_ok(self, header: str | None) -> bool:
        if not is_loopback(self.host):
            return True  # bound to a chosen address with --host: names are the operator's business
        name = urlsplit(f"//{header or ''}").hostname or ""
        return is_loopback(name)


def _handler(server: ReviewServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "loraship-review"

        def log_message(self, fmt: str, *args) -> None:
            pass  # one line per request is noise; saves are reported through server.log

        def _send(self, status: int, body: str = "", location: str | None = None) -> None:
            data = body.encode("utf-8")
            self.send_response(status)
            for k, v in _HEADERS.items():
                self.send_header(k, v)
            if location:
                self.send_header("Location", location)
            self.send_header("Content-Type", "text/html; charset=utf-8" if body else "text/plain")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            if not server.host_ok(self.headers.get("Host")):
                return self._send(HTTPStatus.MISDIRECTED_REQUEST, "wrong host name: open the printed URL")
            if url.path != "/":
                return self._send(HTTPStatus.NOT_FOUND, "not found")
            query = parse_qs(url.query)
            reviewer = " ".join(_first(query, "reviewer").split())[:MAX_REVIEWER]
            saved = _first(query, "saved")
            status = (f"Saved {saved} ratings by {reviewer} to {server.review.feedback_path}"
                      if saved.isdigit() else None)
            self._send(HTTPStatus.OK, page.render(server.review, token=server.token, reviewer=reviewer,
                                                  values=server.saved_values(reviewer), status=status))

        def do_POST(self) -> None:
            if urlsplit(self.path).path != "/save":
                return self._send(HTTPStatus.NOT_FOUND, "not found")
            if not server.host_ok(self.headers.get("Host")):
                return self._send(HTTPStatus.MISDIRECTED_REQUEST, "wrong host name: open the printed URL")
            raw_length = (self.headers.get("Content-Length") or "0").strip()
            if not raw_length.isdigit():  # "abc", "-1": a broken client, answered, never a traceback
                return self._send(HTTPStatus.BAD_REQUEST, "Content-Length must be a number of bytes")
            length = int(raw_length)
            if length > MAX_BODY:
                return self._send(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "form too large")
            form = parse_qs(self.rfile.read(length).decode("utf-8", "replace"), keep_blank_values=True)
            if not secrets.compare_digest(_first(form, "token"), server.token):
                return self._send(HTTPStatus.FORBIDDEN, "this page is out of date: reload it and rate again")
            try:
                reviewer, values = server.parse(form)
            except FormError as e:
                body = page.render(server.review, token=server.token, reviewer=_first(form, "reviewer"),
                                   values=e.values, error=str(e))
                return self._send(HTTPStatus.BAD_REQUEST, body)
            n = server.save(reviewer, values)
            self._send(HTTPStatus.SEE_OTHER, "", location=f"/?reviewer={quote(reviewer)}&saved={n}")

    return Handler


def serve(report: Path, host: str | None = None, port: int = DEFAULT_PORT,
          log: Callable[[str], None] = lambda s: None) -> ReviewServer:
    """A server for the report; `host` given explicitly may be any address (the CLI's --host)."""
    from loraship.review.report import load_review

    return ReviewServer(load_review(report), host or DEFAULT_HOST, port, allow_remote=host is not None, log=log)
