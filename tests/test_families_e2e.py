"""Every supported model family through the whole pipeline, with its real tokenizer and chat template:
data → train v1 → v2 (continue) → v3 (stack) → export → register → compare → promote.

The fixtures (loraship.base.families) are tiny random checkpoints of each family's real transformers
architecture with the real vocabulary and template, built once under build/cache/families/.
Random weights cannot answer questions, so this test opens the gate (its logic is tested in
tests/evaluate) and asserts what can break per family: which projections LoRA trains, the
pre-tokenizer the converter recognises, HF ↔ GGUF token parity, the derived TEMPLATE, and that a
generation ends at the family's end-of-turn token.
"""

from __future__ import annotations

import json

import pytest

from helpers import cli_run as run
from helpers import qa_rows, write_jsonl
from loraship.base import families

pytestmark = pytest.mark.slow

# What each family must train ("every attention and MLP projection"), by leaf module name.
TARGETS = {
    "qwen2.5": {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"},
    "llama3.2": {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"},
    "mistral": {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"},
    "phi3.5": {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"},
    "gemma4": {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"},
}
# tokenizer.ggml.model and .pre the converter must write: a byte-level vocabulary's pre-tokenizer
# recognised by its hash (never "default"); SentencePiece has none to recognise, and the converter
# writes "default"; Gemma 4's type writes no pre field (llama.cpp implies its own).
VOCAB = {"qwen2.5": ("gpt2", "qwen2"), "llama3.2": ("gpt2", "llama-bpe"), "mistral": ("llama", "default"),
         "phi3.5": ("llama", "default"), "gemma4": ("gemma4", None)}
FAMILY_OF_TEMPLATE = {"qwen2.5": "chatml", "llama3.2": "llama3", "mistral": "mistral", "phi3.5": "phi3",
                      "gemma4": "gemma4"}


def write_config(project, model: str, base) -> None:
    import yaml

    cfg = {"base_model": str(base),
           "train": {"num_train_epochs": 1, "max_seq_length": 96, "early_stopping_patience": 0,
                     "init_lora_nonzero": True, "lora_r": 4},
           "export": {"max_kl": 5.0, "min_top1": 0.0},
           "compare": {"num_predict": 8, "max_test_rows": 2},
           "gate": {"min_new_gain": -100.0, "max_old_loss": 100.0},
           "ollama": {"num_ctx": 256}}
    (project / "train").mkdir(exist_ok=True)
    (project / "train" / f"{model}.yaml").write_text(yaml.safe_dump(cfg), encoding="utf-8")
    qs = [{"id": f"q{i}", "question": f"What is the code of site {i}?", "reference": f"Site {i} has code {i * 7 + 3}.",
           "knowledge": "old" if i % 2 else "new"} for i in range(6)]
    path = project / "ollama" / "questions" / "default.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"name": model, "version": 1, "questions": qs}), encoding="utf-8")


def ends_turn(gguf, stop_text: str) -> dict:
    """Generate from the GGUF with the end-of-turn token made overwhelmingly likely: a vocabulary
    whose end-of-turn token llama.cpp does not treat as end of generation would print it and run
    on to the token limit (the fine-tune that never stops)."""
    from loraship.export import llama_runtime

    llm = llama_runtime.llama_cpp().Llama(model_path=str(gguf), n_ctx=128, verbose=False, seed=1)
    try:
        eot = llm.tokenize(stop_text.encode(), add_bos=False, special=True)
        assert len(eot) == 1, f"{stop_text!r} is not one token in the GGUF: {eot}"
        out = llm.create_completion("Hello", max_tokens=16, temperature=0.0, logit_bias={eot[0]: 100.0})
        return {"finish": out["choices"][0]["finish_reason"], "text": out["choices"][0]["text"],
                "tokens": out["usage"]["completion_tokens"]}
    finally:
        llm.close()


@pytest.mark.parametrize("name", sorted(families.FAMILIES))
def test_family_through_the_whole_pipeline(name, isolated_home, ollama_host, model_name, family_base, monkeypatch):
    import ollama

    from loraship.export import gguf_tools
    from loraship.store import versions

    monkeypatch.setenv("OLLAMA_HOST", ollama_host)
    base = family_base(name)
    model = model_name("fam-" + name.replace(".", "-"))
    write_config(isolated_home, model, base)
    b1 = write_jsonl(isolated_home / "b1.jsonl", qa_rows("alpha", 16, "alpha"))
    b2 = write_jsonl(isolated_home / "b2.jsonl", qa_rows("beta", 16, "beta"))
    b3 = write_jsonl(isolated_home / "b3.jsonl", qa_rows("gamma", 16, "gamma"))

    run("data", "-m", model, str(b1))
    run("train", "-m", model)
    run("train", "-m", model, "--data", str(b2))
    run("train", "-m", model, "--data", str(b3), "--set", "train.strategy=stack")
    v1, v2, v3 = versions.list_versions(model)
    for v in (v1, v2, v3):
        lora = v.stage("train")["lora"]
        assert set(lora["target_modules"]) == TARGETS[name], lora
    assert v2.stage("train")["strategy"] == "continue" and v3.stage("train")["strategy"] == "stack"
    assert v3.manifest["parent"] == "v2"

    fam = families.family(name)
    for ref in ("v2", "v3"):
        run("export", "-m", model, ref)
        v = versions.get(model, ref)
        exp = v.stage("export")
        assert exp["verified"], exp["checks"]
        gguf = v.path / exp["ggufs"]["Q4_K_M"]
        info = gguf_tools.describe(gguf)
        assert (info["tokenizer_model"], info["pre_tokenizer"]) == VOCAB[name], info
        assert info["chat_template"] == (base / "chat_template.jinja").read_text(encoding="utf-8")
        stopped = ends_turn(gguf, fam.eos)
        assert stopped == {"finish": "stop", "text": "", "tokens": 0}, stopped

    run("register", "-m", model, "v2")
    run("register", "-m", model, "v3")
    v3 = versions.get(model, "v3")
    modelfile = (v3.path / "Modelfile").read_text(encoding="utf-8")
    assert f'PARAMETER stop "{fam.eos}"' in modelfile or f"PARAMETER stop {fam.eos}" in modelfile, modelfile
    assert v3.stage("register")["template_family"].startswith(FAMILY_OF_TEMPLATE[name] + " ")
    shown = ollama.Client(host=ollama_host).show(f"{model}:v3")
    assert fam.eos in (shown.parameters or ""), shown.parameters

    run("compare", f"{model}:v2", f"{model}:v3")
    report = json.loads((v3.path / "compare" / "report.json").read_text())
    assert all(a["answer"] is not None for a in report["answers"])
    run("promote", f"{model}:v3")
    listed = {m.model: m.digest for m in ollama.Client(host=ollama_host).list().models}
    assert listed[f"{model}:latest"] == v3.stage("register")["digest"]
