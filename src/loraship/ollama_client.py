"""The official `ollama` client, with errors turned into one line that names the host and the fix."""

from __future__ import annotations

import os
import time
from typing import Any, Callable, TypeVar

from .errors import OllamaError

T = TypeVar("T")
DEFAULT_HOST = "http://127.0.0.1:11434"
_RETRIES = 3


def resolve_host(configured: str | None = None) -> str:
    host = configured or os.environ.get("OLLAMA_HOST") or DEFAULT_HOST
    if "://" not in host:
        host = "http://" + host
    return host.rstrip("/")


def client(host: str, timeout: float = 600.0) -> Any:
    import ollama

    return ollama.Client(host=host, timeout=timeout)


def unreachable(host: str, detail: str) -> OllamaError:
    return OllamaError(
        f"Ollama at {host} did not answer ({detail}): start it with `make ollama-up`, "
        "or point OLLAMA_HOST=http://HOST:PORT at a running server"
    )


def call(host: str, what: str, fn: Callable[[], T], retries: int = _RETRIES) -> T:
    """Run one client call; retry with backoff only where a retry can help (connection, 5xx)."""
    import httpx
    import ollama

    delay = 0.5
    for attempt in range(1, retries + 1):
        try:
            return fn()
        except ollama.ResponseError as e:
            if e.status_code >= 500 and attempt < retries:
                time.sleep(delay)
                delay *= 2
                continue
            raise OllamaError(f"Ollama at {host} refused {what}: {e.error} (HTTP {e.status_code})") from None
        except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError,
                ConnectionError) as e:
            if attempt < retries:
                time.sleep(delay)
                delay *= 2
                continue
            raise unreachable(host, f"{what}: {type(e).__name__}") from None
        except httpx.TimeoutException:
            raise unreachable(host, f"{what} timed out") from None
    raise AssertionError("unreachable")


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
