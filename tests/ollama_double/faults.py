"""How the double fails: an HTTP error with Ollama's status and text, and injected faults."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class HTTPError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


@dataclass
class Faults:
    """`drop_upload_after = N` resets the connection after N bytes of the next blob upload;
    `fail_next(method, path, status, message)` answers the next matching request with that error."""

    drop_upload_after: int | None = None
    _errors: list[list[Any]] = field(default_factory=list)

    def fail_next(self, method: str, path: str, status: int, message: str, times: int = 1) -> None:
        """Answer the next `times` requests to method+path (a prefix) with this error."""
        self._errors.append([method.upper(), path, status, message, times])

    def take(self, method: str, path: str) -> HTTPError | None:
        for e in self._errors:
            if e[0] == method and path.startswith(e[1]) and e[4] > 0:
                e[4] -= 1
                return HTTPError(e[2], e[3])
        return None
