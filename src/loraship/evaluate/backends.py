"""Answer backends: where a candidate's answers come from.

OllamaBackend asks a running Ollama server through the official `ollama` client (the
path every user of a registered tag takes). LlamaCppBackend reads the GGUF files
directly through llama-cpp-python, for machines without an Ollama server (CI, laptops):
it applies the GGUF's own chat template, so it measures the weights, not the Modelfile.

Options are Ollama's names ({"temperature", "seed", "num_ctx", "num_predict", "top_k",
"top_p", "min_p"}); the llama.cpp backend translates them.

Sampled answers (compare.samples): `samples` answers all k seeds of one question in one call:
llama.cpp decodes them together in one context (evaluate/llama_batch.py). A backend without
`samples` (Ollama) gets the k requests at once for that one model from compare
(concurrency.fan_out: parallel sequences of its runner where it has the slots, queued where
not), one seed (options.seed) each.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Protocol

from loraship.errors import ConfigError, OllamaError, VersionError
from loraship.evaluate import concurrency, llama_batch
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
        self._samplers: dict[Path, llama_batch.BatchSampler] = {}
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
                if self._threads(options):  # Ollama's option name, as for Ollama
                    kwargs["n_threads"] = self._threads(options)
                self._models[path] = (llama_cpp.Llama(**kwargs), threading.Lock())
            return self._models[path]

    def _threads(self, options: dict) -> int | None:
        return options.get("num_thread") or self.n_threads

    def server(self, candidates: list[Candidate]) -> concurrency.Server:
        return concurrency.llamacpp_server()

    def answer(self, c: Candidate, messages: list[dict], options: dict) -> str:
        llm, lock = self._model(c, options)
        with lock:
            return self._complete(llm, messages, options)

    @staticmethod
    def _complete(llm: Any, messages: list[dict], options: dict, **extra: Any) -> str:
        sampling = {k: options[k] for k in ("top_k", "top_p", "min_p") if options.get(k) is not None}
        resp = llm.create_chat_completion(
            messages=messages,
            temperature=float(options.get("temperature", 0.0)),
            seed=options.get("seed"),
            max_tokens=options.get("num_predict"),
            **sampling,
            **extra,
        )
        return resp["choices"][0]["message"].get("content") or ""

    def samples(self, c: Candidate, messages: list[dict], options: dict, seeds: list[int]) -> list[str]:
        """One answer per seed, decoded together (llama_batch.BatchSampler). One at a time through
        create_chat_completion instead when the GGUF's chat format is not its own template, or
        when k answers of num_predict tokens do not fit the context: then each sample starts
        from an empty cache (llama.cpp's logits depend on how a prompt was split into batches,
        so a prompt half-reused from the last answer would make a seed's answer depend on
        what was asked before) and without a repeat penalty (Ollama's sampler has none;
        llama-cpp-python's chat default is 1.1)."""
        llm, lock = self._model(c, options)
        settings = llama_batch.SamplerSettings(
            float(options.get("temperature", 0.0)), int(options.get("top_k", llama_batch.TOP_K)),
            float(options.get("top_p", llama_batch.TOP_P)), float(options.get("min_p", llama_batch.MIN_P)))
        limit = options.get("num_predict") or 0
        with lock:
            prompt = llama_batch.prompt_for(llm, messages) if limit > 0 else None
            if prompt is not None:
                sampler = self._sampler(self._path(c), llm, len(seeds), options)
                if sampler.fits(len(prompt[0]), limit, len(seeds)):
                    return sampler.sample(prompt[0], prompt[1], seeds, settings, limit)
            texts = []
            for seed in seeds:
                llm.reset()
                texts.append(self._complete(llm, messages, {**options, "seed": seed}, repeat_penalty=1.0))
            return texts

    def _sampler(self, path: Path, llm: Any, k: int, options: dict) -> llama_batch.BatchSampler:
        """The model's batch context, made again only for a larger k (the caller holds its lock)."""
        with self._guard:
            sampler = self._samplers.get(path)
            if sampler is None or sampler.sequences < k:
                if sampler is not None:
                    sampler.close()
                sampler = llama_batch.BatchSampler(llm, k, options.get("num_ctx") or self.n_ctx,
                                                   self._threads(options))
                self._samplers[path] = sampler
            return sampler

    def close(self) -> None:
        with self._guard:
            models, self._models = self._models, {}
            samplers, self._samplers = self._samplers, {}
        for path, (llm, lock) in models.items():
            with lock:
                if path in samplers:  # its context uses the model's weights: freed first
                    samplers.pop(path).close()
                llm.close()
        for sampler in samplers.values():
            sampler.close()

    def __enter__(self) -> LlamaCppBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
