"""Answer backends: where a candidate's answers come from.

OllamaBackend asks a running Ollama server through the official `ollama` client (the
path every user of a registered tag takes). LlamaCppBackend reads the GGUF files
directly through llama-cpp-python, for machines without an Ollama server (CI, laptops):
it applies the GGUF's own chat template, so it measures the weights, not the Modelfile.

Options are Ollama's names ({"temperature", "seed", "num_ctx", "num_predict"}); the
llama.cpp backend translates them.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Protocol

from loraship.errors import ConfigError, OllamaError, VersionError
from loraship.evaluate import concurrency
from loraship.evaluate.candidate import Candidate
from loraship.export import llama_runtime
from loraship.serve import ollama_client
from loraship.store.hashing import sha256_file

_DEFAULT_PREFIXES = ("registry.ollama.ai/library/", "registry.ollama.ai/")


class Backend(Protocol):
    name: str

    def served_digest(self, c: Candidate) -> str | None: ...

    def answer(self, c: Candidate, messages: list[dict], options: dict) -> str: ...


def normalize_tag(name: str) -> str:
    """Ollama names match case-insensitively and default to the `latest` tag."""
    n = name.strip().lower()
    for prefix in _DEFAULT_PREFIXES:
        n = n.removeprefix(prefix)
    return n if ":" in n.rsplit("/", 1)[-1] else f"{n}:latest"


class OllamaBackend:
    name = "ollama"

    def __init__(self, host: str | None = None, timeout: float = 600.0, client: Any = None):
        self.host = ollama_client.resolve_host(host)
        self.timeout = timeout
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = ollama_client.client(self.host, self.timeout)
        return self._client

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        return ollama_client.call(self.host, what, lambda: fn(*args, **kwargs))

    def served_digest(self, c: Candidate) -> str | None:
        listed = self._call("listing models", self.client.list)
        want = normalize_tag(c.tag)
        for m in _models(listed):
            name = _get(m, "model") or _get(m, "name") or ""
            if normalize_tag(name) == want:
                return _get(m, "digest")
        raise OllamaError(
            f"tag {c.tag} is not served by {self.host}: run `loraship register` for version {c.version}"
        )

    def server(self, candidates: list[Candidate]) -> concurrency.Server:
        """GPU or CPU, from /api/ps (see evaluate/concurrency.py)."""
        return concurrency.ollama_server(self.client, self.host, candidates[0].tag)

    def answer(self, c: Candidate, messages: list[dict], options: dict) -> str:
        opts = {k: v for k, v in options.items() if v is not None}
        resp = self._call(
            f"chat with {c.tag}",
            self.client.chat,
            model=c.tag,
            messages=messages,
            options=opts,
            stream=False,
        )
        message = _get(resp, "message")
        return (_get(message, "content") or "") if message is not None else ""


def _get(obj: Any, key: str) -> Any:
    """The client returns pydantic models that also support item access; accept dicts too."""
    if isinstance(obj, dict):
        return obj.get(key)
    return getattr(obj, key, None)


def _models(listed: Any) -> list[Any]:
    return list(_get(listed, "models") or [])


class LlamaCppBackend:
    """One `llama_cpp.Llama` per GGUF, created on first use and kept until close().

    A Llama object is not thread-safe, so each has its own lock: answers for one model
    are serialised while different models still run in parallel.
    """

    name = "llama.cpp"

    def __init__(self, n_ctx: int = 2048, n_threads: int | None = None):
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self._models: dict[Path, tuple[Any, threading.Lock]] = {}
        self._digests: dict[tuple[Path, int, int], str] = {}
        self._guard = threading.Lock()

    def _path(self, c: Candidate) -> Path:
        if c.gguf_path is None:
            raise ConfigError(
                f"candidate {c.tag} has no GGUF path: the llama.cpp backend needs an exported version"
            )
        path = Path(c.gguf_path).resolve()
        if not path.is_file():
            raise VersionError(
                f"GGUF {path} of candidate {c.tag} does not exist: run `loraship export` for {c.version}"
            )
        return path

    def served_digest(self, c: Candidate) -> str | None:
        path = self._path(c)
        st = path.stat()
        key = (path, st.st_size, st.st_mtime_ns)
        with self._guard:
            if key not in self._digests:
                self._digests[key] = "sha256:" + sha256_file(path)
            return self._digests[key]

    def _model(self, c: Candidate, options: dict) -> tuple[Any, threading.Lock]:
        path = self._path(c)
        with self._guard:
            if path not in self._models:
                llama_cpp = llama_runtime.llama_cpp()
                kwargs: dict[str, Any] = {
                    "model_path": str(path),
                    "n_ctx": options.get("num_ctx") or self.n_ctx,
                    "seed": options.get("seed") or 0,
                    "verbose": False,
                }
                if options.get("num_thread") or self.n_threads:  # Ollama's option name, as for Ollama
                    kwargs["n_threads"] = options.get("num_thread") or self.n_threads
                self._models[path] = (llama_cpp.Llama(**kwargs), threading.Lock())
            return self._models[path]

    def server(self, candidates: list[Candidate]) -> concurrency.Server:
        return concurrency.llamacpp_server()

    def answer(self, c: Candidate, messages: list[dict], options: dict) -> str:
        llm, lock = self._model(c, options)
        with lock:
            resp = llm.create_chat_completion(
                messages=messages,
                temperature=float(options.get("temperature", 0.0)),
                seed=options.get("seed"),
                max_tokens=options.get("num_predict"),
            )
        return resp["choices"][0]["message"].get("content") or ""

    def close(self) -> None:
        with self._guard:
            models, self._models = self._models, {}
        for llm, lock in models.values():
            with lock:
                llm.close()

    def __enter__(self) -> LlamaCppBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
