"""Publishing (`loraship publish`): a registered version is pushed through the Ollama server to a
real OCI registry (tests/registry_fixture.py, the CNCF distribution registry), checked there
through the registry's HTTP API v2, and only then recorded; another server pulls it and answers
the same. Promote and rollback re-push the alias when a registry is configured.

Gate records are made the real way (pipeline.stage_compare), as in test_promote.py. Without the
registry binary the registry tests skip with one line; CI installs it (.ci/run).
"""

from __future__ import annotations

import ollama
import pytest

from helpers import Project, cli_run, error_line
from loraship import pipeline
from loraship.errors import ConfigError, GateError
from loraship.release import audit, publish
from loraship.serve.ollama_client import short
from loraship.store import versions
from ollama_double import OllamaDouble
from registry_fixture import Registry, _free_port, start_registry

PASS = {"gate.min_new_gain": -100.0, "gate.max_old_loss": 100.0}  # a random tiny model learns nothing
FAIL = {"gate.min_new_gain": 1000.0}
QUESTION = [{"role": "user", "content": "What is the alpha code of site 3?"}]
GREEDY = {"temperature": 0.0, "seed": 7, "num_predict": 12}


@pytest.fixture
def registered(project):
    for vid in ("v1", "v2"):
        project.register(vid)
    return project


def compare(p: Project, gate: dict) -> dict:
    _, result, _ = pipeline.stage_compare([p.tag("v1"), p.tag("v2")], p.cfg(**gate))
    return result["gate"]


def target(reg: Registry) -> list[str]:
    return ["--registry", reg.host, "--namespace", "team", "--insecure"]


def nothing_recorded(p: Project) -> bool:
    return all(not p.version(v).stage("publish") for v in ("v1", "v2")) and audit.entries(p.model) == []


# ------------------------------------------------------------------ fast

def test_publish_without_a_registry_is_one_line_naming_the_setting(tmp_path):
    v = versions.Version("tiny", "v1", 1, tmp_path)
    with pytest.raises(ConfigError, match=r"no registry to publish to: set publish.registry"):
        publish.publish(pipeline.load_config("tiny"), v)


def test_force_without_a_reason_is_refused_before_any_call(tmp_path, monkeypatch):
    monkeypatch.setenv("OLLAMA_HOST", "http://127.0.0.1:9")  # a call would fail differently
    v = versions.Version("tiny", "v1", 1, tmp_path)
    cfg = pipeline.load_config("tiny", None, {"publish.registry": "127.0.0.1:9"})
    with pytest.raises(GateError, match=r"--force needs --reason"):
        publish.publish(cfg, v, force=True, reason="  ")


@pytest.mark.parametrize("registry, namespace, words", [
    ("127.0.0.1:5000", "Team", "namespace 'Team' is not a valid registry repository component"),
    ("127.0.0.1:5000", "a/b", "does not make a valid name"),
    ("http://127.0.0.1:5000", "team", "does not make a valid name"),
    ("bad host", "team", "is not valid"),
])
def test_registry_names_the_registry_would_refuse_fail_first(tmp_path, registry, namespace, words):
    v = versions.Version("tiny", "v1", 1, tmp_path)
    cfg = pipeline.load_config("tiny", None, {"publish.registry": registry, "publish.namespace": namespace})
    with pytest.raises(ConfigError, match=words):
        publish.publish(cfg, v)


# ------------------------------------------------------------------ slow: end to end

@pytest.mark.slow
def test_publish_then_pull_on_another_server_answers_the_same(registered, registry, tmp_path):
    p = registered
    assert compare(p, PASS)["passed"]
    out = cli_run("publish", "-m", p.model, "v2", *target(registry))
    name = f"{registry.host}/team/{p.model}:v2"
    gguf = p.version("v2").stage("register")["blob_digest"]
    assert f"published {name}: model layer {short(gguf)} verified in the registry" in out
    assert f"ollama pull {name} --insecure" in out
    assert registry.model_layer(f"team/{p.model}", "v2") == gguf
    assert f"this server keeps {name} (copies sharing every blob" in out  # and it does:
    assert p.server.tags()[name] == p.server.tags()[f"{p.model}:v2"]

    rec = p.version("v2").stage("publish")[name]
    assert (rec["registry"], rec["namespace"], rec["model_layer"], rec["forced"]) == (registry.host, "team", gguf, False)
    (entry,) = audit.entries(p.model)
    assert (entry["action"], entry["version"], entry["model_layer"]) == ("publish", "v2", gguf)
    assert entry["pushed"] == {name: rec["manifest_digest"]} and rec["manifest_digest"].startswith("sha256:")
    assert audit.aliases(p.model) == {}  # a publish moves no alias
    table = cli_run("versions", "-m", p.model)
    assert any(line.startswith("v2") and "publish" in line and name in line for line in table.splitlines()), table
    assert f"published: {name}  model layer {gguf[:19]}" in cli_run("show", "-m", p.model, "v2")

    with OllamaDouble(tmp_path / "laptop") as laptop:
        lc = ollama.Client(host=laptop.url)
        assert lc.pull(name, insecure=True).status == "success"
        pulled = laptop.model(name)
        assert [x["digest"] for x in pulled.layers("model")] == [gguf]
        # The manifest bytes differ (the origin's own file ends in a newline, the pulled copy
        # does not): compare model layers across servers, never /api/tags digests.
        assert lc.list().models[0].digest != p.server.tags()[name.lower()]
        here = p.server.client().chat(model=p.tag("v2"), messages=QUESTION, options=GREEDY)
        there = lc.chat(model=name, messages=QUESTION, options=GREEDY)
        assert there.message.content == here.message.content and here.eval_count > 0


# ------------------------------------------------------------------ slow: refusals record nothing

@pytest.mark.slow
def test_unknown_unregistered_and_failed_gate_versions_are_refused(project, registry):
    p = project
    out = cli_run("publish", "-m", p.model, "v9", *target(registry), code=2)
    assert "has no version v9 (known: v1, v2)" in error_line(out)
    out = cli_run("publish", "-m", p.model, "v1", *target(registry), code=2)
    assert f"{p.tag('v1')} is not registered: run `loraship register --model {p.model} v1`" in error_line(out)
    for vid in ("v1", "v2"):
        p.register(vid)
    gate = compare(p, FAIL)
    out = cli_run("publish", "-m", p.model, "v2", *target(registry), code=2)
    assert f"{p.tag('v2')}'s gate failed ({gate['reason']}" in error_line(out)
    assert "publish refuses; --force --reason" in out
    out = cli_run("publish", "-m", p.model, "v2", "--force", *target(registry), code=2)
    assert "--force needs --reason" in error_line(out)
    assert nothing_recorded(p)
    assert registry.get(f"/v2/team/{p.model}/tags/list")[0] == 404  # nothing reached the registry

    cli_run("publish", "-m", p.model, "v2", "--force", "--reason", "demo; gate rerun pending", *target(registry))
    (entry,) = audit.entries(p.model)
    assert entry["forced"] is True and entry["override_reason"] == "demo; gate rerun pending"
    assert "gate failed" in entry["overridden"]


@pytest.mark.slow
def test_a_registry_that_does_not_answer_is_one_line_and_leaves_nothing(registered):
    p = registered
    down = f"127.0.0.1:{_free_port()}"
    out = cli_run("publish", "-m", p.model, "v1", "--force", "--reason", "r", "--registry", down, "--insecure",
                  code=2)
    line = error_line(out)
    assert f"registry {down} did not answer http://{down}/v2/" in line and "make registry-up" in line
    assert nothing_recorded(p)
    assert not [n for n in p.server.tags() if n.startswith(down)]


@pytest.mark.slow
def test_a_registry_that_refuses_the_push_is_one_line_and_leaves_nothing(registered, tmp_path):
    p = registered
    with start_registry(tmp_path / "readonly", readonly=True) as reg:
        out = cli_run("publish", "-m", p.model, "v1", "--force", "--reason", "r", *target(reg), code=2)
    line = error_line(out)
    assert line.endswith(f"could not push {reg.host}/team/{p.model}:v1: 405: Method not allowed")
    assert nothing_recorded(p)
    assert not [n for n in p.server.tags() if n.startswith(reg.host)]  # the copy was taken back


@pytest.mark.slow
def test_a_different_model_layer_read_back_is_an_error_naming_both_digests(registered, registry, tmp_path,
                                                                          monkeypatch):
    """Someone else pushes v1 to the same name between our push and the read-back."""
    p = registered
    name = f"{registry.host}/team/{p.model}:v2"
    v1 = p.version("v1")
    other_gguf = v1.path / next(iter(v1.stage("export")["ggufs"].values()))
    real_push = ollama.Client.push

    with OllamaDouble(tmp_path / "elsewhere") as other:
        oc = ollama.Client(host=other.url)
        oc.create(model=name, files={"m.gguf": oc.create_blob(other_gguf)})

        def push_then_overwrite(self, model, **kw):
            yield from real_push(self, model, **kw)
            assert real_push(oc, name, insecure=True).status == "success"

        monkeypatch.setattr(ollama.Client, "push", push_then_overwrite)
        out = cli_run("publish", "-m", p.model, "v2", "--force", "--reason", "r", *target(registry), code=2)
    line = error_line(out)
    want, got = p.version("v2").stage("register")["blob_digest"], v1.stage("register")["blob_digest"]
    assert f"the registry's {name} has model layer {got}, not {p.tag('v2')}'s GGUF {want}" in line
    assert nothing_recorded(p)


# ------------------------------------------------------------------ slow: aliases

@pytest.mark.slow
def test_promote_and_rollback_re_push_the_alias_when_a_registry_is_configured(registered, registry):
    p = registered
    p.configure("publish", registry=registry.host, namespace="team", insecure=True)
    out = cli_run("publish", "-m", p.model, "v1", "--alias", "latest", "--force", "--reason", "r", code=2)
    assert f"{p.tag('latest')} was never promoted, not v1" in error_line(out)

    cli_run("promote", p.tag("v1"), "--force", "--reason", "first version: nothing to compare against")
    d1, d2 = (p.version(v).stage("register")["blob_digest"] for v in ("v1", "v2"))
    assert registry.model_layer(f"team/{p.model}", "latest") == d1
    assert compare(p, PASS)["passed"]
    out = cli_run("promote", p.tag("v2"))
    assert f"re-pushed {registry.host}/team/{p.model}:latest (model layer {short(d2)}" in out
    assert registry.model_layer(f"team/{p.model}", "latest") == d2

    cli_run("rollback", "-m", p.model)
    assert registry.model_layer(f"team/{p.model}", "latest") == d1
    pushes = [e for e in audit.entries(p.model) if e["action"] == "publish"]
    assert [(e["version"], e["pushed_alias"], e["after"]) for e in pushes] == [
        ("v1", "latest", "promote"), ("v2", "latest", "promote"), ("v1", "latest", "rollback")]
    assert audit.aliases(p.model) == {"latest": "v1"}

    cli_run("publish", "-m", p.model, "v1", "--alias", "latest", "--force", "--reason", "re-push")
    assert registry.model_layer(f"team/{p.model}", "v1") == d1


@pytest.mark.slow
def test_promote_does_not_move_the_alias_when_the_configured_registry_is_down(registered):
    p = registered
    p.configure("publish", registry=f"127.0.0.1:{_free_port()}", namespace="team", insecure=True)
    out = cli_run("promote", p.tag("v1"), "--force", "--reason", "r", code=2)
    assert "did not answer" in error_line(out)
    assert p.server.tags().get(p.tag("latest")) is None and audit.entries(p.model) == []
