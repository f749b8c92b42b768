"""What a real Ollama server did (../shared/ollama-recordings/, version in its meta.json), replayed:
against the double, which must answer the same by its own code (names.py, params.py, gorender/),
and against loraship, whose derived templates must be the ones the server was given and whose
served prompts may differ from the model's Jinja rendering only by the documented rules."""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx
import pytest

from loraship.serve import chat_templates

REPO = Path(__file__).resolve().parents[2]
RECORDINGS = REPO.parent / "shared" / "ollama-recordings"
# bos/eos of the models whose llama.cpp templates were recorded (the GGUF fields the export writes)
SPECIAL = {"Qwen-Qwen2.5-7B-Instruct": ("", "<|im_end|>"),
           "meta-llama-Llama-3.1-8B-Instruct": ("<|begin_of_text|>", "<|eot_id|>"),
           "meta-llama-Llama-3.2-3B-Instruct": ("<|begin_of_text|>", "<|eot_id|>"),
           "microsoft-Phi-3.5-mini-instruct": ("<s>", "<|endoftext|>"),
           "mistralai-Mistral-Nemo-Instruct-2407": ("<s>", "</s>"),
           "google-gemma-2-2b-it": ("<bos>", "<eos>")}


def _load(name: str) -> list[dict]:
    path = RECORDINGS / name
    if not path.exists():
        assert not os.environ.get("CI"), f"{path} is missing: CI lays shared/ beside the clone"
        pytest.skip(f"no recordings at {RECORDINGS}")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture
def double(tmp_path):
    from ollama_double import OllamaDouble

    d = OllamaDouble(tmp_path / "models").start()
    try:
        yield d
    finally:
        d.stop()


def _post(d, path: str, body: dict | None, method: str = "POST") -> tuple[int, object]:
    r = httpx.request(method, d.url + path, json=body, timeout=120)
    try:
        return r.status_code, r.json()
    except ValueError:
        return r.status_code, r.text


def _upload_tiny(d) -> str:
    data = (RECORDINGS / "tiny.gguf").read_bytes()
    digest = json.loads((RECORDINGS / "meta.json").read_text())["gguf_sha256"]
    assert httpx.post(f"{d.url}/api/blobs/{digest}", content=data, timeout=60).status_code == 201
    return digest


def _shape(value):
    """Keys all the way down (lists by their first element): what a field-by-field comparison of
    bodies with the server's own timestamps, durations and digests can hold equal."""
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in sorted(value.items())}
    if isinstance(value, list):
        return [_shape(value[0])] if value else []
    return type(value).__name__ if value is not None else None


# ------------------------------------------------------------------ the double against the server

def test_the_double_accepts_and_refuses_every_recorded_name(double):
    digest = _upload_tiny(double)
    wrong = []
    for rec in _load("names.jsonl"):
        status, body = _post(double, "/api/create", {"model": rec["name"], "files": {"tiny.gguf": digest},
                                                     "stream": False})
        if (status, body) != (rec["status"], json.loads(rec["body"])):
            wrong.append(f"{rec['name']!r}: double {status} {body}, server {rec['status']} {rec['body']}")
    assert not wrong, "\n".join(wrong)


def test_the_double_answers_every_recorded_api_call_as_the_server_did(double):
    _upload_tiny(double)
    models = str(double.store.root)
    wrong = []
    for rec in _load("api.jsonl"):
        status, body = _post(double, rec["path"], rec["request"], rec["method"])
        want = json.loads(json.dumps(rec["body"]).replace("$OLLAMA_MODELS", models))
        if status != rec["status"]:
            wrong.append(f"{rec['label']}: status {status} ({body}), server {rec['status']}")
        elif isinstance(want, dict) and "error" in want:
            if body != want:
                wrong.append(f"{rec['label']}: {body}, server {want}")
        elif rec["label"].startswith("show"):
            for key in ("modelfile", "parameters", "template", "system", "details"):
                if body.get(key) != want.get(key):
                    wrong.append(f"{rec['label']}: {key} {body.get(key)!r}, server {want.get(key)!r}")
            if set(body["model_info"]) != set(want["model_info"]):
                wrong.append(f"{rec['label']}: model_info keys differ: {set(body['model_info']) ^ set(want['model_info'])}")
        elif rec["label"] not in ("ps",) and _shape(body) != _shape(want):  # ps: what the runner holds now
            wrong.append(f"{rec['label']}: shape {_shape(body)}, server {_shape(want)}")
    assert not wrong, "\n".join(wrong)


def test_the_double_renders_every_recorded_prompt_byte_for_byte(double):
    digest = _upload_tiny(double)
    options = {"num_predict": 1, "temperature": 0, "seed": 1}
    wrong = []
    for i, rec in enumerate(_load("templates.jsonl")):
        name = f"rec{i}:v1"
        create = {"model": name, "files": {"tiny.gguf": digest}, "template": rec["go_template"],
                  "parameters": {"stop": rec["stops"]}, "stream": False}
        if rec.get("modelfile_system"):
            create["system"] = rec["modelfile_system"]
        assert _post(double, "/api/create", create)[0] == 200, rec["family_key"]
        if "request" in rec:
            status, _ = _post(double, "/api/generate", {"model": name, **rec["request"], "stream": False,
                                                        "options": options})
        else:
            status, _ = _post(double, "/api/chat", {"model": name, "messages": rec["messages"], "stream": False,
                                                    "options": options})
        if status != rec["status"] or double.prompts[-1] != rec["ollama_prompt"]:
            wrong.append(f"{rec['family_key']} / {rec['conversation']}: {double.prompts[-1]!r}\n"
                         f"   server: {rec['ollama_prompt']!r}")
    assert not wrong, f"{len(wrong)} prompts differ:\n" + "\n".join(wrong[:5])


# ------------------------------------------------------------------ loraship against the server

def _jinja_template(key: str, llama_models: Path) -> tuple[str, str, str]:
    from test_modelfile import TEMPLATES  # the hand-written family examples, keyed as recorded

    if key.startswith("llama.cpp/"):
        name = key.split("/", 1)[1]
        return ((llama_models / "templates" / f"{name}.jinja").read_text(encoding="utf-8"), *SPECIAL[name])
    text, bos, eos, _family = TEMPLATES[key]
    return text, bos, eos


def test_loraship_derives_the_templates_the_server_was_given(llama_models):
    seen = {}
    for rec in _load("templates.jsonl"):
        seen.setdefault(rec["family_key"], rec)
    for key, rec in seen.items():
        text, bos, eos = _jinja_template(key, llama_models)
        fmt = chat_templates.derive_chat_format(text, bos_token=bos, eos_token=eos)
        assert (fmt.template, list(fmt.stops)) == (rec["go_template"], rec["stops"]), key


def _documented(rec: dict) -> bool:
    """The served prompt may differ from the Jinja rendering only by the rules chat_templates.py
    documents: a template that refuses the conversation (no system role), `| trim` of the message
    text, Ollama's own collation of consecutive system messages, and Llama 3's date line."""
    served, jinja = rec["ollama_prompt"], rec["jinja_prompt"]
    if jinja.startswith("<jinja raised"):
        return True
    if rec["conversation"] in ("surrounding-whitespace", "two-systems-user"):
        return True
    if "Today Date: " in served and "Today Date: " in jinja:
        strip = lambda s: s.split("Today Date: ", 1)[0] + s.split("Today Date: ", 1)[1].split("\n", 1)[1]  # noqa: E731
        return strip(served) == strip(jinja)
    return False


def test_served_prompts_match_the_models_own_template_but_for_documented_rules():
    recs = [r for r in _load("templates.jsonl") if r.get("jinja_prompt") is not None]
    assert len(recs) > 100
    undocumented = [f"{r['family_key']} / {r['conversation']}" for r in recs
                    if r["ollama_prompt"] != r["jinja_prompt"] and not _documented(r)]
    assert not undocumented, undocumented
