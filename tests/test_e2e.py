"""The whole pipeline through the real CLI on a tiny model:
data → train v1 → train v2 on v1 → export both → register both → compare → promote v2."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from helpers import qa_rows, write_jsonl
from loraship.cli import cli

pytestmark = pytest.mark.slow


def run(*args: str, code: int = 0) -> str:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == code, f"loraship {' '.join(args)} exited {result.exit_code}:\n{result.output}"
    return result.output


def questions(project):
    import yaml

    qs = [{"id": f"q{i}", "question": f"What is the alpha code of site {i}?", "reference": f"Site {i} has alpha code {i * 7 + 3}.",
           "knowledge": "old" if i % 2 else "new", "domain": "alpha"} for i in range(6)]
    path = project / "ollama" / "questions" / "default.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"name": "tiny", "version": 1, "questions": qs}), encoding="utf-8")
    return path


def test_pipeline_end_to_end(isolated_home, tiny_config, ollama_host, model_name, monkeypatch):
    import ollama

    from loraship.export import gguf_tools, llama_runtime
    from loraship.store import versions

    llama_cpp = llama_runtime.llama_cpp()
    m = model_name("tiny")  # unique on a real server, removed from it afterwards

    monkeypatch.setenv("OLLAMA_HOST", ollama_host)
    # A random tiny model cannot learn facts; open thresholds let the gate pass so the
    # promotion path runs. Gate logic itself is tested in test_compare and test_promote.
    tiny_config(m, gate__min_new_gain=-100.0, gate__max_old_loss=100.0)
    questions(isolated_home)
    batch1 = write_jsonl(isolated_home / "b1.jsonl", qa_rows("alpha", 24, "alpha"))
    batch2 = write_jsonl(isolated_home / "b2.jsonl", qa_rows("beta", 24, "beta"))

    out = run("data", "-m", m, str(batch1))
    assert "v1" in out
    run("train", "-m", m)
    run("train", "-m", m, "--data", str(batch2))
    v1, v2 = versions.list_versions(m)
    assert v2.manifest["parent"] == "v1"
    assert v2.stage("train")["parent_adapter"] == "v1"
    assert v2.stage("data")["counts"]["replayed"] > 0

    run("export", "-m", m, "v1")
    run("export", "-m", m, "v2")
    for v in (v1, v2):
        exp = v.stage("export")
        gguf = v.path / exp["ggufs"]["Q4_K_M"]
        assert gguf.name == f"{m}-{v.id}-Q4_K_M.gguf"
        info = gguf_tools.describe(gguf)
        assert info["file_type"] == llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M
        assert any(t.startswith("Q4_K") or t.startswith("Q6_K") for t in info["type_mix"])
        llm = llama_cpp.Llama(model_path=str(gguf), n_ctx=128, verbose=False)
        assert llm.n_vocab() > 1000
        llm.close()

    run("register", "-m", m, "v1")
    run("register", "-m", m, "v2")
    listed = {m.model: m.digest for m in ollama.Client(host=ollama_host).list().models}
    for v in (v1, v2):
        assert listed[f"{m}:{v.id}"] == v.stage("register")["digest"]

    out = run("compare", f"{m}:v1", f"{m}:v2")
    assert "PASS" in out
    report = json.loads((v2.path / "compare" / "report.json").read_text())
    assert {c["tag"] for c in report["candidates"]} == {f"{m}:v1", f"{m}:v2"}
    assert report["gate"]["passed"] and report["gate"]["parent"] == f"{m}:v1"
    assert all(a["answer"] is not None for a in report["answers"])
    # the gate's measure: 8 answers per question and tag, sampled at the served temperature, one
    # request per seed (the Ollama backend does not batch them)
    measure = report["measure"]
    assert (measure["name"], measure["samples"], measure["temperature"]) == ("sampled", 8, 0.7)
    assert all(len(a["samples"]) == 8 and 0 <= a["scores"]["sampled"] <= 100 for a in report["answers"])
    assert report["aggregates"][f"{m}:v2"]["measure"] == "sampled"

    run("promote", f"{m}:v2")
    listed = {m.model: m.digest for m in ollama.Client(host=ollama_host).list().models}
    assert listed[f"{m}:latest"] == v2.stage("register")["digest"]
    table = run("versions", "-m", m)
    assert f"{m}:latest" in table
