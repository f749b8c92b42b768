"""The official `ollama` client, with errors turned into one line that names the host and the fix."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

from loraship.errors import ConfigError, OllamaError, ToolchainError

T = TypeVar("T")
DEFAULT_PORT = 11434
DEFAULT_HOST = f"http://127.0.0.1:{DEFAULT_PORT}"
_RETRIES = 3


def resolve_host(configured: str | None = None) -> str:
    """scheme://host:port, read as the `ollama` client and CLI read OLLAMA_HOST (no scheme: port 11434)."""
    source = "config key 'ollama.host'" if configured else "OLLAMA_HOST"
    raw = (configured or os.environ.get("OLLAMA_HOST") or "").strip()
    if not raw:
        return DEFAULT_HOST
    explicit = "://" in raw
    try:
        u = urlsplit(raw if explicit else "http://" + raw)
        port = u.port or (DEFAULT_PORT if not explicit else {"http": 80, "https": 443}.get(u.scheme))
    except ValueError:  # a port that is not a number, a broken [v6] address
        u, port = None, None
    if u is None or port is None or u.query or u.fragment or not (u.hostname or u.netloc.startswith(":")):
        raise ConfigError(f"{source} {raw!r} is not a server address: write http://HOST:PORT, "
                          f"e.g. {DEFAULT_HOST}")
    name = u.hostname or "127.0.0.1"
    if ":" in name:
        name = f"[{name}]"
    return f"{u.scheme}://{name}:{port}{u.path.rstrip('/')}"


def client(host: str, timeout: float = 600.0) -> Any:
    try:
        import ollama
    except ImportError:
        ollama = None
    # A checkout's own `ollama/` folder imports as an empty namespace package when the client is missing.
    if not hasattr(ollama, "Client"):
        raise ToolchainError("the `ollama` client package is missing: pip install 'ollama>=0.6'")
    return ollama.Client(host=host, timeout=timeout)


def unreachable(host: str, detail: str) -> OllamaError:
    return OllamaError(
        f"Ollama at {host} did not answer ({detail}): start it with `make ollama-up`, "
        "or point OLLAMA_HOST=http://HOST:PORT at a running server"
    )


def _one_line(text: Any) -> str:
    lines = str(text).strip().splitlines()
    return lines[0] if lines else "no detail"


def call(host: str, what: str, fn: Callable[[], T], retries: int = _RETRIES) -> T:
    """Run one client call; retry with backoff only where a retry can help (connection, 5xx)."""
    import httpx
    import ollama

    delay = 0.5
    for attempt in range(1, retries + 1):
        last = attempt == retries
        try:
            return fn()
        except ollama.ResponseError as e:
            if e.status_code < 500 or last:
                raise OllamaError(f"Ollama at {host} refused {what}: {_one_line(e.error)} "
                                  f"(HTTP {e.status_code})") from None
        except httpx.TimeoutException:
            raise OllamaError(f"Ollama at {host} did not finish {what} in time: raise ollama.timeout_s, "
                              "or lower compare.concurrency if many requests share the server") from None
        # ConnectionError: the client's wrapping of a refused connection; the rest: a dropped one.
        except (httpx.NetworkError, httpx.RemoteProtocolError, ConnectionError) as e:
            if last:
                raise unreachable(host, f"{what}: {type(e).__name__}") from None
        time.sleep(delay)
        delay *= 2
    raise AssertionError("unreachable")


def show_full(host: str, name: str, timeout: float = 120.0) -> dict[str, Any]:
    """The whole /api/show answer. The client's ShowResponse (0.6.3) drops `system` and `messages`,
    which a base taken from Ollama must keep, so this one request goes through httpx itself."""
    import httpx
    import ollama

    def once() -> dict[str, Any]:
        r = httpx.post(f"{host}/api/show", json={"model": name}, timeout=timeout)
        if r.status_code >= 400:
            try:
                error = r.json().get("error") or r.text
            except ValueError:
                error = r.text
            raise ollama.ResponseError(error, r.status_code)
        return r.json()

    return call(host, f"showing {name}", once)


def bare_digest(digest: str | None) -> str:
    """A digest without its `sha256:` prefix, lowercase: /api/tags and blob digests compare equal."""
    return (digest or "").lower().removeprefix("sha256:").removeprefix("sha256-")


def same_digest(a: str | None, b: str | None) -> bool:
    return bool(a) and bool(b) and bare_digest(a) == bare_digest(b)


def short(digest: str | None) -> str:
    """The first 12 hex characters, as `ollama list` shows them."""
    return bare_digest(digest)[:12] or "none"


def served_digests(host: str, c: Any) -> dict[str, str]:
    """tag (lowercase, with explicit :tag) → manifest digest, as /api/tags lists them."""
    listing = call(host, "listing models", c.list)
    out = {}
    for m in listing.models:
        name = (m.model or "").lower()
        if ":" not in name.rsplit("/", 1)[-1]:
            name += ":latest"
        out[name] = m.digest
    return out
