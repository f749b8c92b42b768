"""What upload.go and download.go share: registry options, how a blob is cut into parts, and a
transfer that runs in the background while Wait() reports progress every 60 ms."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from .registry_http import GoError

MB = 1000 * 1000  # format.MegaByte
NUM_PARTS = 16    # numUploadParts, numDownloadParts
MIN_PART, MAX_PART = 100 * MB, 1000 * MB
MAX_RETRIES = 6   # maxRetries
TICK_S = 0.06     # Wait()'s ticker


class MaxRetries(GoError):
    """errMaxRetriesExceeded wrapping the last error."""

    def __init__(self, last: Exception) -> None:
        super().__init__(f"max retries exceeded: {last}")


@dataclass
class Options:
    """registryOptions, plus the unit of Ollama's 2**try-second retry sleeps (1 s, as Ollama;
    a test may shorten it: same retries, same order, less waiting)."""

    insecure: bool = False
    retry_unit_s: float = 1.0

    def sleep(self, attempt: int) -> None:
        time.sleep(self.retry_unit_s * 2 ** attempt)


def plan_parts(total: int) -> list[tuple[int, int]]:
    """(offset, size) per part: total/16, clamped to 100 MB..1000 MB."""
    size = min(max(total // NUM_PARTS, MIN_PART), MAX_PART)
    out, offset = [], 0
    while offset < total:
        size = min(size, total - offset)
        out.append((offset, size))
        offset += size
    return out


def retry(opts: Options, attempt_fn: Callable[[], Any]) -> Any:
    """The `for try := range maxRetries` loop around one part: sleep 2**try and go again."""
    last: Exception | None = None
    for attempt in range(MAX_RETRIES):
        try:
            return attempt_fn()
        except MaxRetries:
            raise
        except GoError as e:
            last = e
            opts.sleep(attempt)
    raise MaxRetries(last)


class Transfer:
    """One blob moving in a background thread (Run), reported by wait() (Wait)."""

    def __init__(self, verb: str, digest: str) -> None:
        self.verb, self.digest = verb, digest
        self.total = self.completed = 0
        self.error: BaseException | None = None
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def add(self, n: int) -> None:
        with self._lock:
            self.completed += n

    def progress(self) -> dict[str, Any]:
        return {"status": f"{self.verb} {self.digest[7:19]}", "digest": self.digest, "total": self.total,
                "completed": self.completed}

    def start(self, run: Callable[[], None]) -> None:
        def body() -> None:
            try:
                run()
            except BaseException as e:  # reported by wait(), as b.err is
                self.error = e

        self._thread = threading.Thread(target=body, daemon=True)
        self._thread.start()

    def wait(self) -> Iterator[dict[str, Any]]:
        assert self._thread is not None
        while True:
            self._thread.join(TICK_S)
            yield self.progress()
            if not self._thread.is_alive():
                break
        if self.error is not None:
            raise self.error
