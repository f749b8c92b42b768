"""The gate with its shipped thresholds, end to end: an increment that forgets must FAIL, and
promote must refuse it. Every other end-to-end test opens the gate (a random tiny model knows
nothing to forget); this one starts from SmolLM2-135M, which knows most capitals.

v1 is the base with an untrained adapter (its answers are the base's); v2 is trained on unrelated
rows at a rate that wrecks the model. Nothing in this test sets a gate threshold.
"""

from __future__ import annotations

import json

import pytest
import yaml

from helpers import cli_run as run
from helpers import write_jsonl
from loraship.config import GateConfig

pytestmark = pytest.mark.slow

# Capitals SmolLM2-135M-Instruct names through llama.cpp (30 of 45 tried; France is not one of them).
CAPITALS = {"Germany": "Berlin", "Japan": "Tokyo", "China": "Beijing", "Russia": "Moscow", "Egypt": "Cairo",
            "Canada": "Ottawa", "Australia": "Canberra", "Greece": "Athens", "Norway": "Oslo",
            "Sweden": "Stockholm", "Finland": "Helsinki", "Poland": "Warsaw", "Austria": "Vienna",
            "Ireland": "Dublin", "India": "New Delhi", "Kenya": "Nairobi", "Peru": "Lima", "Chile": "Santiago",
            "Cuba": "Havana", "Thailand": "Bangkok", "Iran": "Tehran", "Iraq": "Baghdad", "Hungary": "Budapest",
            "Netherlands": "Amsterdam", "Nigeria": "Abuja", "Indonesia": "Jakarta", "Philippines": "Manila",
            "South Korea": "Seoul", "Brazil": "Brasilia", "England": "London"}


@pytest.fixture(scope="module")
def smollm2_base(tmp_path_factory, smollm2_gguf):
    from loraship.base.from_gguf import from_gguf

    return from_gguf(smollm2_gguf, tmp_path_factory.mktemp("smollm2") / "base")


def rows(prefix: str, n: int) -> list[dict]:
    return [{"question": f"What is the {prefix} code of depot {i}?", "answer": f"Depot {i} has {prefix} code {i * 7 + 3}."}
            for i in range(n)]


def test_an_increment_that_forgets_fails_the_shipped_gate_and_promote_refuses_it(
        isolated_home, smollm2_base, ollama_host, model_name, monkeypatch):
    import ollama

    from loraship.store import versions

    monkeypatch.setenv("OLLAMA_HOST", ollama_host)
    m = model_name("forgets")
    cfg = {"base_model": str(smollm2_base),
           "train": {"num_train_epochs": 1, "max_seq_length": 64, "learning_rate": 1e-5,
                     "early_stopping_patience": 0},
           "compare": {"num_predict": 24, "max_test_rows": 0},
           "ollama": {"num_ctx": 512, "temperature": 0.0, "seed": 1}}
    (isolated_home / "train").mkdir(exist_ok=True)
    (isolated_home / "train" / f"{m}.yaml").write_text(yaml.safe_dump(cfg), encoding="utf-8")
    qs = [{"id": f"cap-{c.lower().replace(' ', '-')}", "question": f"What is the capital of {c}?",
           "reference": f"The capital of {c} is {cap}.", "knowledge": "old"} for c, cap in CAPITALS.items()]
    qs += [{"id": f"depot-{i}", "question": r["question"], "reference": r["answer"], "knowledge": "new"}
           for i, r in enumerate(rows("zorbl", 8))]
    (isolated_home / "ollama" / "questions").mkdir(parents=True)
    (isolated_home / "ollama" / "questions" / "default.yaml").write_text(
        yaml.safe_dump({"name": m, "version": 1, "questions": qs}), encoding="utf-8")

    run("data", "-m", m, str(write_jsonl(isolated_home / "b1.jsonl", rows("alpha", 8))))
    run("train", "-m", m)  # an untrained adapter: v1 answers as the base does
    run("train", "-m", m, "--data", str(write_jsonl(isolated_home / "b2.jsonl", rows("zorbl", 8))),
        "--set", "train.increment_learning_rate=0.05", "--set", "train.increment_epochs=4",
        "--set", "train.increment_method=replay")
    for v in ("v1", "v2"):
        run("export", "-m", m, v, "--set", "export.max_kl=1000", "--set", "export.min_top1=0")
        run("register", "-m", m, v)

    out = run("compare", f"{m}:v1", f"{m}:v2", code=1)  # exit 1: the gate failed
    report = json.loads((versions.get(m, "v2").path / "compare" / "report.json").read_text())
    gate = report["gate"]
    loss = next(c for c in gate["checks"] if c["name"] == "old_loss")
    assert gate["verdict"] == "FAIL" and "FAIL" in out
    assert loss["result"] == "FAIL" and loss["threshold"] == GateConfig().max_old_loss  # the shipped limit
    assert loss["interval"][0] > GateConfig().max_old_loss  # even the lower bound of the loss is past it
    assert report["aggregates"][f"{m}:v1"]["accuracy_old"] >= 50  # v1 really knew them

    refused = run("promote", f"{m}:v2", code=2)
    assert "gate failed" in refused and "--force --reason" in refused
    served = {x.model for x in ollama.Client(host=ollama_host).list().models}
    assert f"{m}:latest" not in served
