"""Registering versions in Ollama (`loraship register`), against the strict test double of the
Ollama HTTP API, or against a real server when OLLAMA_HOST is set (then every test uses its
own model name and removes its tags; fault-injection tests are skipped).

Two versions of the tiny model (v2 trained on v1) are trained and exported once per session
(`exported`); every test copies them into its own home, so tests stay independent.
"""

from __future__ import annotations

import hashlib
import re
import socket

import pytest

from helpers import PREPARED, Project, cli_run, error_line, qa_rows, write_jsonl  # noqa: F401
from loraship import paths
from loraship.errors import ConfigError, OllamaError, VersionError
from loraship.export import pipeline as export
from loraship.serve import modelfile, ollama_client, registry
from loraship.store import manifest
from loraship.store.hashing import sha256_file


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def posts(requests: list[tuple[str, str]], prefix: str) -> int:
    return sum(1 for m, p in requests if m == "POST" and p.startswith(prefix))


def assert_nothing_recorded(p: Project, vid: str) -> None:
    v = p.version(vid)
    assert "register" not in v.manifest["stages"]
    assert "Modelfile" not in v.manifest["artifacts"]
    assert not (v.path / paths.MODELFILE).exists()
    assert not paths.modelfile_copy(p.model, vid).exists()
    assert "Modelfile" not in (v.path / paths.CHECKSUMS).read_text()


def show_stops(shown) -> list[str]:
    """Stops as `ollama show --modelfile` prints them, read with our port of Ollama's parser."""
    return [v for k, v in modelfile.parse_modelfile(shown.modelfile) if k == "stop"]


# ------------------------------------------------------------------ fast: host and error handling

@pytest.mark.parametrize("given, want", [
    (None, "http://127.0.0.1:11434"),
    ("gpu-box", "http://gpu-box:11434"),
    ("gpu-box:8080", "http://gpu-box:8080"),
    (":9999", "http://127.0.0.1:9999"),
    ("http://gpu-box", "http://gpu-box:80"),
    ("https://gpu-box/ollama/", "https://gpu-box:443/ollama"),
    ("0.0.0.0:11434", "http://0.0.0.0:11434"),
    ("[::1]:11434", "http://[::1]:11434"),
])
def test_host_is_read_as_the_ollama_client_reads_it(monkeypatch, given, want):
    monkeypatch.delenv("OLLAMA_HOST", raising=False)
    if given:
        monkeypatch.setenv("OLLAMA_HOST", given)
    assert ollama_client.resolve_host() == want
    assert ollama_client.resolve_host("cfg-box:1") == "http://cfg-box:1"  # the config wins


@pytest.mark.parametrize("bad", ["http://gpu-box:port", "ftp://gpu-box", "http://", "gpu-box:11434?x=1"])
def test_a_bad_host_is_a_one_line_error_naming_the_setting(monkeypatch, bad):
    monkeypatch.setenv("OLLAMA_HOST", bad)
    with pytest.raises(ConfigError, match=r"OLLAMA_HOST .* is not a server address: write http://HOST:PORT"):
        ollama_client.resolve_host()


def test_call_retries_server_errors_and_refuses_client_errors_in_one_line(monkeypatch):
    import ollama

    monkeypatch.setattr(ollama_client.time, "sleep", lambda s: None)
    attempts = []

    def flaky():
        attempts.append(1)
        if len(attempts) < 3:
            raise ollama.ResponseError('{"error": "llama runner busy"}', 503)
        return "ok"

    assert ollama_client.call("http://h:1", "creating x:v1", flaky) == "ok" and len(attempts) == 3

    def refused():
        raise ollama.ResponseError('{"error": "invalid model name\\nmore detail"}', 400)

    with pytest.raises(OllamaError) as e:
        ollama_client.call("http://h:1", "creating x:v1", refused)
    assert str(e.value) == "Ollama at http://h:1 refused creating x:v1: invalid model name (HTTP 400)"


def test_shown_stops_reads_go_quoted_parameters():
    shown = ('num_ctx                        256\nstop                           "<|im_end|>"\n'
             'stop                           "a \\"quoted\\"\\tstop"\ntemperature                    0.7')
    assert registry.shown_stops(shown) == ["<|im_end|>", 'a "quoted"\tstop']


# ------------------------------------------------------------------ slow: real versions

@pytest.mark.slow
def test_register_records_the_served_digest_and_writes_a_modelfile_that_matches_the_server(project):
    p = project
    rec = p.register("v1")
    v = p.version("v1")
    served = p.server.tags()[p.tag("v1")]
    assert rec["digest"] == served == v.stage("register")["digest"]
    gguf = v.path / v.stage("export")["ggufs"]["Q4_K_M"]
    assert rec["blob_digest"] == "sha256:" + sha256_file(gguf)

    text = (v.path / paths.MODELFILE).read_text()
    review = paths.modelfile_copy(p.model, "v1").read_text()
    assert review.endswith(text) and review.startswith("# review copy of ")
    parsed = modelfile.modelfile_create_args(text)
    assert (v.path / parsed["from"]).resolve() == gguf.resolve()
    shown = p.server.client().show(p.tag("v1"))
    assert parsed["template"] == shown.template and "<|im_start|>" in shown.template
    stops = parsed["parameters"]["stop"]
    assert stops == show_stops(shown) and "<|im_end|>" in stops
    assert parsed["parameters"]["num_ctx"] == 256

    sha = hashlib.sha256(text.encode()).hexdigest()
    assert f"{sha}  Modelfile" in (v.path / paths.CHECKSUMS).read_text().splitlines()
    assert v.manifest["artifacts"]["Modelfile"]["sha256"] == sha == rec["modelfile_sha256"]
    assert export.verify_version(v)["checksums"] == "ok"


@pytest.mark.slow
def test_register_twice_is_a_noop_that_says_so_and_sends_nothing(project):
    p = project
    first = cli_run("register", "-m", p.model, "v1")
    assert f"registered {p.tag('v1')} on {p.server.url}" in first
    before = p.server.requests()
    again = cli_run("register", "-m", p.model, "v1")
    assert f"{p.tag('v1')} is already registered on {p.server.url}" in again
    after = p.server.requests()[len(before):]
    assert posts(after, "/api/blobs/") == 0 and posts(after, "/api/create") == 0
    if p.server.double:
        assert posts(before, "/api/blobs/") == 1 and posts(before, "/api/create") == 1
    assert p.server.tags()[p.tag("v1")] == p.version("v1").stage("register")["digest"]


@pytest.mark.slow
def test_upload_is_skipped_when_the_server_already_has_the_blob(project):
    p = project
    v = p.version("v1")
    gguf = v.path / v.stage("export")["ggufs"]["Q4_K_M"]
    digest = p.server.client().create_blob(gguf)
    mark = len(p.server.requests())
    logs: list[str] = []
    p.register("v1", log=logs.append)
    assert any("upload skipped" in line and gguf.name in line for line in logs), logs
    sent = p.server.requests()[mark:]
    if p.server.double:
        assert ("HEAD", f"/api/blobs/{digest}") in sent
        assert posts(sent, "/api/blobs/") == 0 and posts(sent, "/api/create") == 1


@pytest.mark.slow
def test_a_tag_collision_is_refused_without_force_and_replaced_with_it(project):
    p = project
    v = p.version("v1")
    c = p.server.client()
    blob = c.create_blob(v.path / v.stage("export")["ggufs"]["Q4_K_M"])
    c.create(model=p.tag("v1"), files={"other.gguf": blob}, template="{{ .Prompt }}",
             parameters={"stop": ["</s>"]})
    squatter = p.server.tags()[p.tag("v1")]

    out = cli_run("register", "-m", p.model, "v1", code=2)
    line = error_line(out)
    assert f"{p.tag('v1')} already exists on {p.server.url} with digest {squatter[:12]}" in line
    assert "--force" in line
    assert p.server.tags()[p.tag("v1")] == squatter
    assert_nothing_recorded(p, "v1")

    cli_run("register", "-m", p.model, "v1", "--force")
    rec = p.version("v1").stage("register")
    assert rec["digest"] == p.server.tags()[p.tag("v1")] != squatter
    assert c.show(p.tag("v1")).template != "{{ .Prompt }}"


@pytest.mark.slow
def test_a_changed_modelfile_needs_force_and_gives_a_new_digest(project):
    p = project
    old = p.register("v1")
    v = p.version("v1")
    out = cli_run("register", "-m", p.model, "v1", "--set", "ollama.temperature=0.3", code=2)
    assert "registered from a different Modelfile" in error_line(out) and "--force" in out
    assert p.version("v1").stage("register") == old

    cli_run("register", "-m", p.model, "v1", "--set", "ollama.temperature=0.3", "--force")
    new = p.version("v1").stage("register")
    assert new["digest"] != old["digest"] and new["digest"] == p.server.tags()[p.tag("v1")]
    text = (v.path / paths.MODELFILE).read_text()
    assert "PARAMETER temperature 0.3" in text.splitlines()
    assert paths.modelfile_copy(p.model, "v1").read_text().endswith(text)
    assert export.verify_version(v)["checksums"] == "ok"  # checksums.txt follows the new Modelfile
    assert re.search(r"^temperature +0\.3$", p.server.client().show(p.tag("v1")).parameters, re.M)


@pytest.mark.slow
def test_an_unreachable_server_is_one_line_naming_host_and_fix_and_records_nothing(project, monkeypatch):
    p = project
    host = f"http://127.0.0.1:{closed_port()}"
    monkeypatch.setenv("OLLAMA_HOST", host)
    monkeypatch.setattr(ollama_client.time, "sleep", lambda s: None)
    with pytest.raises(OllamaError) as e:
        p.register("v1")
    msg = str(e.value)
    assert "\n" not in msg and f"Ollama at {host} did not answer" in msg
    assert "make ollama-up" in msg and "OLLAMA_HOST" in msg
    assert_nothing_recorded(p, "v1")
    out = cli_run("register", "-m", p.model, "v1", code=2)
    assert error_line(out) == f"error: {msg}"


@pytest.mark.slow
def test_a_dropped_upload_is_retried_and_the_blob_arrives_whole(project):
    p = project
    double = p.server.need_double("drop_upload_after")
    v = p.version("v1")
    gguf = v.path / v.stage("export")["ggufs"]["Q4_K_M"]
    double.faults.drop_upload_after = gguf.stat().st_size // 2
    rec = p.register("v1")
    assert posts(double.requests, "/api/blobs/") == 2  # the reset one, then the retry
    assert sha256_file(double.store.blob(rec["blob_digest"])) == rec["blob_digest"].split(":")[1]
    assert rec["digest"] == p.server.tags()[p.tag("v1")]


@pytest.mark.slow
def test_the_server_going_away_mid_upload_records_nothing_and_a_retry_succeeds(project, monkeypatch, tmp_path):
    from ollama_double import OllamaDouble

    p = project
    double = p.server.need_double("drop_upload_after, stopping the server")
    monkeypatch.setattr(ollama_client.time, "sleep", lambda s: 0.0)
    v = p.version("v1")
    gguf = v.path / v.stage("export")["ggufs"]["Q4_K_M"]
    double.faults.drop_upload_after = gguf.stat().st_size // 2

    def vanish(sent: int, total: int) -> None:
        if double._server is not None and double._server.socket.fileno() != -1:
            # Stop accepting and close the port now (server_close() would wait for this very upload);
            # the handler already reading the body then resets the connection halfway.
            double._server.shutdown()
            double._server.socket.close()

    with pytest.raises(OllamaError) as e:
        p.register("v1", progress=vanish)
    assert "\n" not in str(e.value) and f"Ollama at {p.server.url} did not answer (uploading" in str(e.value)
    assert "make ollama-up" in str(e.value)
    assert_nothing_recorded(p, "v1")
    blob = "sha256:" + sha256_file(gguf)
    assert not double.store.blob(blob).exists()

    again = OllamaDouble(tmp_path / "ollama-double").start()  # the same store, back up on a new port
    try:
        monkeypatch.setenv("OLLAMA_HOST", again.url)
        rec = p.register("v1")
        assert rec["host"] == again.url and rec["digest"] == again.tags()["models"][0]["digest"]
        assert sha256_file(again.store.blob(blob)) == blob.split(":")[1]
    finally:
        again.stop()


@pytest.mark.slow
def test_a_failure_after_create_removes_the_tag_so_a_retry_needs_no_force(project, monkeypatch):
    p = project
    double = p.server.need_double("fail_next")
    monkeypatch.setattr(ollama_client.time, "sleep", lambda s: None)
    double.faults.fail_next("POST", "/api/show", 500, "runner crashed", times=3)
    with pytest.raises(OllamaError, match=r"refused reading .*:v1 back: runner crashed \(HTTP 500\)"):
        p.register("v1")
    assert p.tag("v1") not in p.server.tags()
    assert_nothing_recorded(p, "v1")
    assert p.register("v1")["digest"] == p.server.tags()[p.tag("v1")]


@pytest.mark.slow
def test_an_unverified_export_blocks_registration(project):
    p = project
    v = p.version("v1")
    manifest.update(v.path, lambda m: m["stages"]["export"].update(
        verified=False, verification_failures=["Q4_K_M: mean KL 7.100 > 5.0"], allow_unverified=False))
    mark = len(p.server.requests())
    with pytest.raises(VersionError) as e:
        p.register("v1")
    assert "failed verification at export (Q4_K_M: mean KL 7.100 > 5.0)" in str(e.value)
    assert "--allow-unverified" in str(e.value)
    assert p.server.requests()[mark:] == []  # refused before any server call
    assert_nothing_recorded(p, "v1")

    manifest.update(v.path, lambda m: m["stages"]["export"].update(allow_unverified=True))
    assert p.register("v1")["digest"] == p.server.tags()[p.tag("v1")]


INJECTIONS = {
    "system ends a line in triple quotes": ({"system": 'Be brief.\nOK."""\nFROM /etc/passwd\nSYSTEM """x'},
                                            "system line 2 ends with '\"\"\"'"),
    "system hides a control character": ({"system": "Be brief.\x1b[2J"}, "system line 1 contains U+001B"),
    "license smuggles a parameter": ({"license": 'MIT"""\nPARAMETER num_ctx 1'},
                                     "license line 1 ends with '\"\"\"'"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(INJECTIONS))
def test_injection_attempts_are_refused_before_anything_reaches_the_server(project, case):
    p = project
    settings, needle = INJECTIONS[case]
    p.configure("ollama", **settings)
    mark = len(p.server.requests())
    with pytest.raises(ConfigError) as e:
        p.register("v1")
    assert needle in str(e.value) and "\n" not in str(e.value)
    if p.server.double:
        assert p.server.requests()[mark:] == []
    assert p.tag("v1") not in p.server.tags()
    assert_nothing_recorded(p, "v1")


@pytest.mark.slow
def test_a_stop_string_cannot_inject_instructions(project):
    p = project
    with pytest.raises(ConfigError, match="stop .* cannot be written on one Modelfile line"):
        p.register("v1", stops=["<|im_end|>\nFROM /etc/passwd"])
    assert_nothing_recorded(p, "v1")


@pytest.mark.slow
def test_system_text_that_looks_like_instructions_is_carried_verbatim(project):
    p = project
    system = ('You answer mining questions.\nFROM /etc/passwd\nPARAMETER stop "x"\n'
              'TEMPLATE {{ .Prompt }}\nQuote """ like this """ mid-line is fine.\n  # not a comment')
    p.configure("ollama", system=system)
    p.register("v1")
    v = p.version("v1")
    cmds = modelfile.parse_modelfile((v.path / paths.MODELFILE).read_text())
    assert [val for k, val in cmds if k == "from"] == [v.stage("export")["ggufs"]["Q4_K_M"]]
    assert [val for k, val in cmds if k == "system"] == [system]
    assert "x" not in [val for k, val in cmds if k == "stop"]
    shown = p.server.client().show(p.tag("v1"))
    assert [val for k, val in modelfile.parse_modelfile(shown.modelfile) if k == "system"] == [system]
    assert "x" not in show_stops(shown) and "{{ .Prompt }}" != shown.template.strip()


@pytest.mark.slow
@pytest.mark.parametrize("tamper, needle", [
    ({"template": "{{ .Prompt }}"}, "a TEMPLATE other than the one sent"),
    ({"parameters": 'stop                           "</s>"'}, "stops ['</s>'], not the ['<|im_end|>'"),
])
def test_a_server_that_stores_other_settings_is_caught_and_the_tag_withdrawn(project, monkeypatch, tamper, needle):
    import ollama

    p = project
    real_show = ollama.Client.show

    def show(self, model):  # the server answers as if it had kept other settings
        return real_show(self, model).model_copy(update=tamper)

    monkeypatch.setattr(ollama.Client, "show", show)
    logs: list[str] = []
    with pytest.raises(OllamaError) as e:
        p.register("v1", log=logs.append)
    msg = str(e.value)
    assert msg.startswith(f"{p.server.url} stored {needle}") and msg.endswith(f"for {p.tag('v1')}: nothing recorded")
    assert p.tag("v1") not in p.server.tags() and any("removed" in line for line in logs)
    assert_nothing_recorded(p, "v1")
