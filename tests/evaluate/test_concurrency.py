"""Compare concurrency chosen from what the server has (evaluate/concurrency.py): serial on a
CPU-only server, parallel on a GPU or with cores for several models; /api/ps read through the
official client, from the double or a real server."""

from __future__ import annotations

import pytest

from loraship.config import CompareConfig, GateConfig
from loraship.errors import ConfigError
from loraship.evaluate import concurrency
from loraship.evaluate.backends import LlamaCppBackend, OllamaBackend
from loraship.evaluate.candidate import Candidate
from loraship.evaluate.compare import Question, run_compare

CPU2 = concurrency.Server(False, 2, "test")


def test_a_cpu_only_server_answers_one_at_a_time():
    plan = concurrency.choose(None, None, CPU2, 2)
    assert plan.workers == 1 and plan.num_thread is None and "oversubscribe" in plan.reason
    # llama.cpp in this process sets threads per model: two models split the two cores
    local = concurrency.choose(None, None, concurrency.llamacpp_server(), 2)
    cores = concurrency.llamacpp_server().cores
    if cores >= 2:
        assert (local.workers, local.num_thread) == (2, cores // 2)
    one = concurrency.choose(None, None, concurrency.Server(False, 2, "t", serial_threads=2, split_cores=True), 1)
    assert (one.workers, one.num_thread) == (1, 2)  # a single model gets every core


def test_many_cores_or_a_gpu_pay_for_parallel_answers():
    big = concurrency.choose(None, None, concurrency.Server(False, 32, "t"), 2)
    assert (big.workers, big.num_thread) == (2, 16)  # the runners split the cores instead of each taking all
    gpu = concurrency.choose(None, None, concurrency.Server(True, None, "t"), 2)
    assert gpu.workers == 4 and gpu.num_thread is None
    unknown = concurrency.choose(None, None, concurrency.Server(None, None, "t"), 2)
    assert unknown.workers == 1


def test_config_overrides_and_bad_values_are_refused(tiny_config):
    from loraship import pipeline

    set_ = concurrency.choose(3, 2, CPU2, 2)
    assert (set_.workers, set_.num_thread, set_.reason) == (3, 2, "set in config (compare.concurrency)")
    tiny_config("tiny", compare__num_thread=0)
    with pytest.raises(ConfigError, match="compare.num_thread"):
        pipeline.load_config("tiny")


class PsClient:
    """The two calls ollama_server makes, answering as a real server's /api/ps does."""

    def __init__(self, models):
        self.models, self.loads = models, []

    def ps(self):
        return {"models": self.models}

    def generate(self, model, prompt):
        self.loads.append(model)


def test_ps_tells_gpu_from_cpu_and_partial_offload():
    full = concurrency.ollama_server(PsClient([{"size": 900, "size_vram": 900}]), "http://10.1.2.3:11434", "m:v1")
    assert full.gpu is True and full.cores is None  # a remote server's cores are unknown
    part = concurrency.ollama_server(PsClient([{"size": 900, "size_vram": 300}]), "http://127.0.0.1:11434", "m:v1")
    assert part.gpu is False and "partly" in part.source and part.cores
    empty = PsClient([])
    none = concurrency.ollama_server(empty, "http://127.0.0.1:11434", "m:v1")
    assert empty.loads == ["m:v1"] and none.gpu is None  # it tried to load the model first


def test_the_double_reports_its_cpu_runner_in_ps(project):
    project.register("v1")
    tag = project.tag("v1")
    backend = OllamaBackend(project.server.url)
    backend.answer(Candidate(tag, "v1"), [{"role": "user", "content": "hi"}], {"num_predict": 2, "num_ctx": 256})
    listed = project.server.client().ps().models
    mine = [m for m in listed if m.model.split(":")[0] == tag.split(":")[0]]
    assert mine and mine[0].context_length == 256 and mine[0].size > 0
    server = backend.server([Candidate(tag, "v1")])
    if project.server.double is not None:  # the double runs on the CPU; a real server may have a GPU
        assert mine[0].size_vram == 0 and server.gpu is False
        assert concurrency.choose(None, None, server, 2).workers == 1


class CpuBackend:
    name = "scripted"

    def __init__(self):
        self.options = []

    def served_digest(self, c):
        return c.expected_digest

    def server(self, candidates):
        return concurrency.Server(False, 2, "scripted CPU", serial_threads=2)

    def answer(self, c, messages, options):
        self.options.append(options)
        return "Site 1 has code 10."


def test_the_report_records_the_choice_and_answers_get_the_threads():
    qs = [Question(id=f"q{i}", question=f"Code of site {i}?", facts=["code"], knowledge=k)
          for i, k in enumerate(["new"] * 3 + ["old"] * 3)]
    backend = CpuBackend()
    report = run_compare([Candidate("m:v1", "v1"), Candidate("m:v2", "v2", "v1")], qs, backend,
                         CompareConfig(), GateConfig(), domain_corpus={}, system=None)
    assert report["concurrency"]["workers"] == 1 and report["concurrency"]["num_thread"] == 2
    assert report["concurrency"]["server"]["source"] == "scripted CPU"
    assert all(o["num_thread"] == 2 for o in backend.options)


def test_llamacpp_backend_runs_with_the_threads_it_is_given(smollm2_gguf):
    pytest.importorskip("llama_cpp")
    with LlamaCppBackend(n_ctx=256) as backend:
        c = Candidate("m:v1", "v1", gguf_path=smollm2_gguf)
        backend.answer(c, [{"role": "user", "content": "hi"}], {"num_predict": 1, "num_thread": 1, "temperature": 0})
        llm, _ = backend._models[smollm2_gguf.resolve()]
        assert llm.n_threads == 1
