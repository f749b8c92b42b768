"""`make bench`'s compare section: answers/s by concurrency plan, on each backend there is.

Two models (copies of the SmolLM2 GGUF) x 8 questions, greedy, 32 tokens, asked through
loraship's own backends with the plan evaluate/concurrency.py chooses ("auto") against the
fixed alternatives: the old default (2 at once, each runner's default threads) and one at a
time. Backends: llama.cpp in process; the Ollama test double (tests/ollama_double: it runs
one generation at a time, like one runner); a real Ollama server when OLLAMA_HOST is set.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

OPTS = {"temperature": 0, "seed": 7, "num_predict": 32, "num_ctx": 512}


def _timed(backend, cands, questions, workers: int, threads: int | None) -> float:
    opts = {**OPTS, **({"num_thread": threads} if threads else {})}
    for c in cands:  # load before timing
        backend.answer(c, [{"role": "user", "content": "hi"}], {**opts, "num_predict": 1})
    jobs = [(c, q) for c in cands for q in questions]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda cq: backend.answer(cq[0], [{"role": "user", "content": cq[1]}], opts), jobs))
    return round(len(jobs) / (time.perf_counter() - t0), 3)


def _variants(make_backend, cands, questions) -> dict:
    from loraship.evaluate import concurrency

    probe = make_backend()
    plan = concurrency.for_backend(None, None, probe, cands)
    out = {"auto_plan": plan.record()}
    for label, workers, threads in (("two_at_once_default_threads", 2, None), ("one_at_a_time", 1, None),
                                    ("auto", plan.workers, plan.num_thread)):
        backend = make_backend()  # fresh runners: llama.cpp fixes its thread count at load
        out[f"{label}_answers_per_s"] = _timed(backend, cands, questions, workers, threads)
        getattr(backend, "close", lambda: None)()
    getattr(probe, "close", lambda: None)()
    out["auto_vs_two_at_once"] = round(out["auto_answers_per_s"] / out["two_at_once_default_threads_answers_per_s"], 3)
    return out


def _register(client, gguf: Path, names: list[str]) -> None:
    from loraship.serve.chat_templates import _chatml

    digest = client.create_blob(gguf)
    for name in names:
        client.create(model=name, files={gguf.name: digest}, template=_chatml(None),
                      parameters={"stop": ["<|im_end|>"]}, stream=False)


def _ollama(host: str, gguf: Path, questions: list[str]) -> dict:
    import ollama

    from loraship.evaluate.backends import OllamaBackend
    from loraship.evaluate.candidate import Candidate

    prefix = f"lsbench-{uuid.uuid4().hex[:8]}"
    names = [f"{prefix}:v1", f"{prefix}:v2"]
    client = ollama.Client(host=host)
    _register(client, gguf, names)
    try:
        cands = [Candidate(tag=n, version=n.split(":")[1]) for n in names]
        return {"host": host, **_variants(lambda: OllamaBackend(host, 600.0), cands, questions)}
    finally:
        for n in names:
            client.delete(n)


def compare(spec: dict, questions: list[str]) -> dict:
    from loraship.base.smollm2 import smollm2_gguf
    from loraship.evaluate.backends import LlamaCppBackend
    from loraship.evaluate.candidate import Candidate

    work = Path(tempfile.mkdtemp(dir=spec["work"]))
    ggufs = [Path(shutil.copy(smollm2_gguf(), work / f"m{i}.gguf")) for i in range(2)]
    cands = [Candidate(tag=f"m:v{i + 1}", version=f"v{i + 1}", gguf_path=g) for i, g in enumerate(ggufs)]
    out = {"answers": len(cands) * len(questions), "cpus": os.cpu_count(),
           "llamacpp": _variants(lambda: LlamaCppBackend(n_ctx=512), cands, questions)}
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from ollama_double import OllamaDouble

    with OllamaDouble(work / "double") as double:
        out["ollama_double"] = _ollama(double.url, ggufs[0], questions)
    if os.environ.get("OLLAMA_HOST"):
        out["ollama_real"] = _ollama(os.environ["OLLAMA_HOST"], ggufs[0], questions)
    shutil.rmtree(work, ignore_errors=True)
    return out
