"""`make bench`'s compare section: answers/s by concurrency plan, on each backend there is.

Two models (copies of the SmolLM2 GGUF) x 8 questions, greedy, 32 tokens, asked through
loraship's own backends with the plan evaluate/concurrency.py chooses ("auto") against the
fixed alternatives: the old default (2 at once, each runner's default threads) and one at a
time. Backends: llama.cpp in process; the Ollama test double (tests/ollama_double: it runs
one generation at a time, like one runner); a real Ollama server when OLLAMA_HOST is set.

`sampling`: the gate's sampled measure asks every question k times (evaluate/sampling.py).
llama.cpp in process decodes a question's k answers together (evaluate/llama_batch.py); the
baseline asks them one at a time with the same seeds through create_chat_completion, which
keeps the prompt in its cache between answers (what a competent script gets for free).
Answers/s for k = 1 and the default k, SAMPLING_ROUNDS interleaved rounds, and the ratio per
round with a Student t interval of its mean.
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
    out["sampling"] = sampling(spec, questions)
    return out


SAMPLING_ROUNDS = 3
SAMPLE_OPTS = {"temperature": 0.7, "num_predict": 32, "num_ctx": 1024}


def _sampling_round(backend, cand, questions: list[str], k: int) -> dict:
    seeds = list(range(1, k + 1))
    msgs = [[{"role": "user", "content": q}] for q in questions]
    t0 = time.perf_counter()
    for m in msgs:
        backend.samples(cand, m, SAMPLE_OPTS, seeds)
    batched = time.perf_counter() - t0
    t0 = time.perf_counter()
    for m in msgs:
        for seed in seeds:
            backend.answer(cand, m, {**SAMPLE_OPTS, "seed": seed})
    one = time.perf_counter() - t0
    n = len(questions) * k
    return {"batched_answers_per_s": round(n / batched, 3), "one_at_a_time_answers_per_s": round(n / one, 3),
            "ratio": round(one / batched, 3)}


def sampling(spec: dict, questions: list[str]) -> dict:
    """Batched k samples vs one at a time, llama.cpp in process, all cores on one model."""
    import numpy as np

    from loraship.base.smollm2 import smollm2_gguf
    from loraship.config import CompareConfig
    from loraship.evaluate import stats
    from loraship.evaluate.backends import LlamaCppBackend
    from loraship.evaluate.candidate import Candidate

    cand = Candidate(tag="m:v1", version="v1", gguf_path=smollm2_gguf())
    ks = sorted({1, CompareConfig().samples})
    out: dict = {"questions": len(questions), "options": SAMPLE_OPTS, "rounds": SAMPLING_ROUNDS}
    with LlamaCppBackend(n_ctx=SAMPLE_OPTS["num_ctx"], n_threads=os.cpu_count()) as backend:
        backend.samples(cand, [{"role": "user", "content": "hi"}], SAMPLE_OPTS, list(range(1, max(ks) + 1)))
        rounds = {k: [] for k in ks}
        for _ in range(SAMPLING_ROUNDS):  # interleaved: every k once per round
            for k in ks:
                rounds[k].append(_sampling_round(backend, cand, questions, k))
    for k, rs in rounds.items():
        ratios = np.array([r["ratio"] for r in rs])
        half = stats.t_value(0.95, len(ratios) - 1) * ratios.std(ddof=1) / np.sqrt(len(ratios))
        out[f"k{k}"] = {"rounds": rs, "ratio_mean": round(float(ratios.mean()), 3),
                        "ratio_interval": [round(float(ratios.mean() - half), 3), round(float(ratios.mean() + half), 3)],
                        "batched_answers_per_s": round(float(np.mean([r["batched_answers_per_s"] for r in rs])), 3),
                        "one_at_a_time_answers_per_s": round(float(np.mean([r["one_at_a_time_answers_per_s"]
                                                                            for r in rs])), 3)}
    return out
