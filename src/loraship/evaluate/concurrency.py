"""How many answers compare asks at once, and with how many CPU threads each, from what the server has.

Measured against a real Ollama 0.24.0 on 2 CPU cores: 66 answers took 40 s with two
requests at once and 26 s one at a time. A CPU runner already uses every core for one
answer, so two models decoding together oversubscribe the cores and llama.cpp's spinning
worker threads fight. So:
  llama.cpp     in this process: threads are ours to set, so the candidates' models run at
                once with the cores split between them (decoding scales poorly with threads:
                on 2 cores, 2 models x 1 thread gave 1.0 answers/s, 1 model x 2 threads 0.76).
  CPU only      (Ollama) one request at a time (each answer gets every core), unless the machine
                has enough cores for several models of CORES_PER_MODEL threads each; then
                that many at once, each told num_thread = cores / workers so the runners
                share the cores instead of each taking them all. Only a server whose cores
                we know (llama.cpp in this process, or Ollama on loopback) gets that.
  GPU           (Ollama's /api/ps: the model fully in VRAM, size_vram == size) parallel
                requests overlap decoding on the card: up to GPU_WORKERS at once.
  unknown       (no model loaded yet and none would load) one at a time: never worse
                than the measured oversubscription.
`compare.concurrency` and `compare.num_thread` override; the choice and its reason go
into the report.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from typing import Any, TypeVar
from urllib.parse import urlparse

CORES_PER_MODEL = 8  # llama.cpp decoding stops gaining from threads past about this
GPU_WORKERS = 4
LOOPBACK = ("127.0.0.1", "localhost", "::1", "0.0.0.0")


@dataclass(frozen=True)
class Server:
    gpu: bool | None  # None: unknown
    cores: int | None  # None: unknown (a remote server)
    source: str
    serial_threads: int | None = None  # threads for one answer at a time; None: the server's default
    split_cores: bool = False  # threads are set per model here, so models at once can share the cores


@dataclass(frozen=True)
class Plan:
    workers: int
    num_thread: int | None  # None: the server's own default
    reason: str
    server: dict

    def record(self) -> dict:
        return asdict(self)


def choose(configured_workers: int | None, configured_threads: int | None, server: Server,
           n_candidates: int) -> Plan:
    rec = asdict(server)
    if configured_workers is not None:
        return Plan(configured_workers, configured_threads, "set in config (compare.concurrency)", rec)
    if server.gpu:
        workers = max(1, min(GPU_WORKERS, 2 * n_candidates))
        return Plan(workers, configured_threads, f"model in GPU memory ({server.source}): {workers} requests overlap", rec)
    if server.gpu is None and server.cores is None:
        return Plan(1, configured_threads, f"server resources unknown ({server.source}): one request at a time", rec)
    cores = server.cores or 0
    if server.split_cores and cores >= 2 and n_candidates > 1:
        workers = min(n_candidates, cores)
        threads = configured_threads or cores // workers
        return Plan(workers, threads, f"CPU only ({server.source}), {cores} cores: {workers} models at once, "
                                      f"{threads} threads each (decoding gains little from more threads; measured "
                                      "faster than one answer on all cores)", rec)
    workers = max(1, min(n_candidates, cores // CORES_PER_MODEL))
    if workers == 1:
        threads = configured_threads or server.serial_threads
        return Plan(1, threads, f"CPU only ({server.source}), {cores or 'unknown'} cores: one answer at a time "
                                "gets every core; parallel answers would oversubscribe them", rec)
    threads = configured_threads or cores // workers
    return Plan(workers, threads, f"CPU only, {cores} cores: {workers} models at once, {threads} threads each", rec)


def ollama_server(client: Any, host: str, tag: str) -> Server:
    """GPU or not from /api/ps (loading `tag` with an empty generate if nothing is loaded)."""
    local = (urlparse(host if "://" in host else f"http://{host}").hostname or "") in LOOPBACK
    cores = os.cpu_count() if local else None
    models = _loaded(client)
    if not models:
        try:
            client.generate(model=tag, prompt="")  # Ollama's documented way to load a model
        except Exception:  # noqa: BLE001 - a failed load is reported by the answers themselves
            pass
        models = _loaded(client)
    if not models:
        return Server(None, cores, "/api/ps lists no loaded model")
    vram = [(_get(m, "size_vram") or 0, _get(m, "size") or 0) for m in models]
    gpu = all(v > 0 and v >= s for v, s in vram)
    part = "fully in VRAM" if gpu else ("partly in VRAM" if any(v for v, _ in vram) else "size_vram 0: CPU")
    return Server(gpu, cores, f"/api/ps: {part}")


def llamacpp_server() -> Server:
    """llama-cpp-python in this process, without GPU layers: this machine's CPU."""
    cores = os.cpu_count()
    # Threads are set per model in this process, so several models split the cores without
    # oversubscribing them (measured on 2 cores: 2 models x 1 thread 1.0 answers/s, one
    # model x 2 threads 0.76; `make bench`, compare section).
    return Server(False, cores, "llama.cpp in this process, CPU", serial_threads=cores, split_cores=True)


def _loaded(client: Any) -> list:
    try:
        return list(_get(client.ps(), "models") or [])
    except Exception:  # noqa: BLE001 - a server without /api/ps is one whose resources are unknown
        return []


def _get(obj: Any, key: str) -> Any:
    return obj.get(key) if isinstance(obj, dict) else getattr(obj, key, None)


def for_backend(configured_workers: int | None, configured_threads: int | None, backend: Any,
                candidates: list) -> Plan:
    """The plan for this compare: asks the backend what the server has unless concurrency is set."""
    probe = getattr(backend, "server", None)
    if configured_workers is not None or probe is None or not candidates:
        why = "not asked: compare.concurrency is set" if configured_workers is not None else "backend reports nothing"
        server = Server(None, None, why)
    else:
        server = probe(candidates)
    return choose(configured_workers, configured_threads, server, len(candidates))


K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


def run_keyed(jobs: dict[K, Callable[[], T]], workers: int,
              progress: Callable[[int, int], None] | None = None) -> dict[K, T]:
    """Run `jobs` on `workers` threads, submitted in the dict's order (callers order them so a
    server swaps models as rarely as possible); results are keyed, so completion order never
    changes a report. On the first failure, or Ctrl-C, the jobs not yet started are cancelled."""
    results: dict[K, T] = {}
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = {pool.submit(job): key for key, job in jobs.items()}
        try:
            for done, fut in enumerate(as_completed(futures), 1):
                results[futures[fut]] = fut.result()
                if progress:
                    progress(done, len(jobs))
        except BaseException:
            for f in futures:
                f.cancel()
            raise
    return results


def fan_out(fn: Callable[[T], Any], items: list[T]) -> list[Any]:
    """fn over every item at once (one thread each), results in the items' order: for k sampled
    answers of one question to one model. A server runs them as parallel sequences of one
    runner where it has the slots (OLLAMA_NUM_PARALLEL) and queues them where it does not,
    so this is never slower than asking one at a time, and it never loads a second model."""
    if len(items) <= 1:
        return [fn(item) for item in items]
    with ThreadPoolExecutor(max_workers=len(items)) as pool:
        return list(pool.map(fn, items))
