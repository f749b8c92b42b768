"""Registry requests as Ollama makes them (server/images.go makeRequest, makeRequestWithRetry),
on Go net/http semantics: redirects followed unless a CheckRedirect says stop, a 307 with a
streamed body handed back to the caller, errors worded as Go words them.

Ollama names carry no scheme, so ParseModelPath makes every registry https; `insecure`
rewrites it to plain http. Without it a plain-HTTP registry fails exactly as Go fails.
"""

from __future__ import annotations

import http.client
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit, urlunsplit

from .faults import HTTPError
from .names import DEFAULT_HOST

USE_LAST_RESPONSE = object()  # http.ErrUseLastResponse
REDIRECTS = (301, 302, 303, 307, 308)
TIMEOUT_S = 600.0  # Go's client has none; this only keeps a wedged test from hanging forever


class GoError(Exception):
    """An error as the Go server would print it into {"error": ...}."""


class NotExist(GoError):
    """os.ErrNotExist, which makeRequestWithRetry returns for a 404."""

    def __init__(self) -> None:
        super().__init__("file does not exist")


@dataclass(frozen=True)
class ModelPath:
    """server/modelpath.go ParseModelPath: scheme, registry, namespace/repository, tag."""

    scheme: str
    registry: str
    namespace: str
    repository: str
    tag: str

    @classmethod
    def parse(cls, name: str) -> ModelPath:
        scheme, sep, rest = name.partition("://")
        if not sep:
            scheme, rest = "https", name
        tag = ""
        if rest.rfind(":") > rest.rfind("/"):
            rest, _, tag = rest.rpartition(":")
        parts = rest.rsplit("/", 2)
        host = parts[0] if len(parts) == 3 else ""
        namespace = parts[-2] if len(parts) >= 2 else ""
        return cls(scheme, host or DEFAULT_HOST, namespace or "library", parts[-1], tag or "latest")

    def namespace_repository(self) -> str:
        return f"{self.namespace}/{self.repository}"

    def url(self, *elems: str) -> str:
        """BaseURL().JoinPath("v2", namespace/repository, *elems)."""
        return f"{self.scheme}://{self.registry}/" + "/".join(["v2", self.namespace_repository(), *elems])


class Response:
    """An *http.Response: status, headers, and a body to read or close."""

    def __init__(self, url: str, conn: http.client.HTTPConnection, raw: http.client.HTTPResponse):
        self.url, self._conn, self._raw = url, conn, raw
        self.status, self.headers = raw.status, raw.headers
        self.status_text = f"{raw.status} {raw.reason}"  # resp.Status, e.g. "400 Bad Request"

    def read(self, n: int = -1) -> bytes:
        return self._raw.read() if n < 0 else self._raw.read(n)

    def close(self) -> None:
        self._raw.close()
        self._conn.close()

    def location(self) -> str:
        """resp.Location(): the Location header resolved against the request URL."""
        value = self.headers.get("Location")
        if not value:
            raise GoError("http: no Location header in response")
        return urljoin(self.url, value)


def _op(method: str) -> str:
    return method[:1] + method[1:].lower()  # url.Error's Op: "Head", "Patch"


def _tls_problem(e: ssl.SSLError) -> str:
    # A plain-HTTP server answers the TLS hello with "HTTP/1.x 400", which Go reports as this.
    if getattr(e, "reason", "") in ("WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG",
                                     "HTTP_REQUEST", "UNEXPECTED_RECORD"):
        return "http: server gave HTTP response to HTTPS client"
    return f"tls: {e.reason or e}"


def _round_trip(method: str, url: str, headers: dict[str, str], body: Any) -> Response:
    u = urlsplit(url)
    if u.scheme not in ("http", "https"):
        raise GoError(f'{_op(method)} "{url}": unsupported protocol scheme "{u.scheme}"')
    port = u.port or (443 if u.scheme == "https" else 80)
    cls = http.client.HTTPSConnection if u.scheme == "https" else http.client.HTTPConnection
    conn = cls(u.hostname, port, timeout=TIMEOUT_S)
    try:
        conn.request(method, urlunsplit(("", "", u.path or "/", u.query, "")), body=body, headers=headers)
        return Response(url, conn, conn.getresponse())
    except ssl.SSLError as e:
        conn.close()
        raise GoError(f'{_op(method)} "{url}": {_tls_problem(e)}') from None
    except ConnectionRefusedError:
        conn.close()
        raise GoError(f'{_op(method)} "{url}": dial tcp {u.hostname}:{port}: connect: connection refused') from None
    except (OSError, http.client.HTTPException) as e:
        conn.close()
        raise GoError(f'{_op(method)} "{url}": {e or type(e).__name__}') from None


def _default_policy(target: str, via: list[str]) -> Any:
    return GoError("stopped after 10 redirects") if len(via) >= 10 else None


def make_request(method: str, url: str, headers: dict[str, str] | None = None, body: Any = None, *,
                 insecure: bool = False,
                 check_redirect: Callable[[str, list[str]], Any] | None = None) -> Response:
    """One request through Go's http.Client, redirects included."""
    if insecure and not url.startswith("http://"):
        url = "http://" + url.split("://", 1)[1]
    headers = dict(headers or {})
    via: list[str] = []
    while True:
        resp = _round_trip(method, url, headers, body)
        # A 307/308 must re-send the body; Go does that only for bodies it can rewind.
        resend = body is None or isinstance(body, bytes) or resp.status not in (307, 308)
        if resp.status not in REDIRECTS or not resp.headers.get("Location") or not resend:
            return resp
        target = resp.location()
        via.append(url)
        verdict = (check_redirect or _default_policy)(target, via)
        if verdict is USE_LAST_RESPONSE:
            return resp
        resp.close()
        if isinstance(verdict, GoError):
            raise GoError(f'{_op(method)} "{target}": {verdict}')
        if resp.status in (301, 302, 303) and method not in ("GET", "HEAD"):
            method, body = "GET", None
        url = target


def make_request_with_retry(method: str, url: str, headers: dict[str, str] | None = None, body: Any = None,
                            **kw: Any) -> Response:
    """makeRequestWithRetry: 404 is os.ErrNotExist, any other status >= 400 an error with the body."""
    resp = make_request(method, url, headers, body, **kw)
    if resp.status == 401:
        resp.close()
        # Ollama would fetch a bearer token from the challenge's realm; nothing here can stand in
        # for that exchange, so say so rather than pretend.
        raise HTTPError(501, f"the Ollama test double does not implement registry authentication "
                             f"({url} answered 401)")
    if resp.status == 404:
        resp.close()
        raise NotExist()
    if resp.status >= 400:
        text = resp.read().decode("utf-8", "replace")
        resp.close()
        raise GoError(f"{resp.status}: {text}")
    return resp
