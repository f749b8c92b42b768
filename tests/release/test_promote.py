"""Promotion and rollback (`loraship promote`, `loraship rollback`): an alias moves only behind a
passed gate at the digest served now, every move is read back and audit-logged, and a rollback
walks back through earlier promotions and makes the next version train on top of the target.

Gate records are made the real way, by pipeline.stage_compare with thresholds that pass or
fail; the versions come from the session's shared build (see test_register.build_exported).
Runs against the Ollama test double, or a real server when OLLAMA_HOST is set.
"""

from __future__ import annotations

import getpass
import json

import pytest

from helpers import Project, cli_run, error_line, qa_rows, write_jsonl
from loraship import paths, pipeline
from loraship.errors import GateError, VersionError
from loraship.release import checks, promote
from loraship.serve.ollama_client import short
from loraship.store import manifest, versions
from loraship.store.hashing import sha256_file

PASS = {"gate.min_new_gain": -100.0, "gate.max_old_loss": 100.0}  # a random tiny model learns nothing
FAIL = {"gate.min_new_gain": 1000.0}


@pytest.fixture
def registered(project):
    """Both versions registered on the server."""
    for vid in ("v1", "v2"):
        project.register(vid)
    return project


def compare(p: Project, gate: dict, *vids: str) -> dict:
    _, result, _ = pipeline.stage_compare([p.tag(v) for v in vids or ("v1", "v2")], p.cfg(**gate))
    return result["gate"]


def audit(p: Project) -> list[dict]:
    return promote.audit_entries(p.model)


def served(p: Project, vid: str) -> str | None:
    return p.server.tags().get(p.tag(vid))


def versions_row(p: Project, vid: str) -> str:
    out = cli_run("versions", "-m", p.model)
    return next(line for line in out.splitlines() if line.startswith(vid + " "))


# ------------------------------------------------------------------ fast

def test_alias_names_are_checked_before_anything_else(tmp_path):
    v = versions.Version("tiny", "v1", 1, tmp_path)
    cfg = pipeline.load_config("tiny")
    for bad in ("v2", "Latest", "../prod", "", "a b"):
        with pytest.raises(VersionError, match="alias .* is not valid"):
            promote.promote(cfg, v, bad)


def test_force_without_a_reason_is_refused_before_any_server_call(tmp_path, monkeypatch):
    monkeypatch.setenv("OLLAMA_HOST", "http://127.0.0.1:9")  # a call would fail differently
    v = versions.Version("tiny", "v1", 1, tmp_path)
    for reason in (None, "", "   "):
        with pytest.raises(GateError, match=r"--force needs --reason"):
            promote.promote(pipeline.load_config("tiny"), v, force=True, reason=reason)


@pytest.mark.parametrize("gate, words", [
    ({"verdict": "INCONCLUSIVE", "passed": False, "reason": "the interval straddles the allowed 2",
      "decide": "about 97 old-knowledge questions (now 30) would decide it"}, "was inconclusive"),
    ({"verdict": "FAIL", "passed": False, "reason": "even its upper bound is below the required 5"}, "failed"),
    ({"passed": False, "reason": "below the required +5"}, "failed"),  # a record from before verdicts
])
def test_only_a_pass_promotes_inconclusive_is_refused_like_a_failure(tmp_path, gate, words):
    manifest.write(tmp_path, {"parent": "v1", "stages": {"compare": {
        "gate": gate, "digest": "sha256:" + "a" * 64, "tags": ["tiny:v1", "tiny:v2"],
        "report": "compare/report.json", "report_sha256": "0" * 64}}})
    v = versions.Version("tiny", "v2", 2, tmp_path)
    with pytest.raises(GateError) as e:
        checks.passed_gate(v, "sha256:" + "a" * 64, "http://127.0.0.1:11434")
    msg = str(e.value)
    assert msg.startswith(f"tiny:v2's gate {words} ({gate['reason']}")
    assert "promote refuses; --force --reason '...' records an override" in msg
    assert ("about 97 old-knowledge questions" in msg) is (gate.get("verdict") == "INCONCLUSIVE")


def test_rollback_of_an_alias_never_promoted_is_a_clear_error():
    with pytest.raises(VersionError, match=r"tiny:latest was never promoted: nothing to roll back"):
        promote.rollback(pipeline.load_config("tiny"), "tiny")


@pytest.mark.parametrize("moves, back_to", [
    ([("promote", "v1"), ("promote", "v2")], "v1"),
    ([("promote", "v1"), ("promote", "v2"), ("promote", "v2")], "v1"),  # a repeat moves nothing
    ([("promote", "v1"), ("promote", "v2"), ("promote", "v3"), ("rollback", "v2")], "v1"),
    ([("promote", "v1"), ("promote", "v2"), ("rollback", "v1"), ("rollback", "v2")], "v1"),
])
def test_rollback_walks_back_through_earlier_promotions(moves, back_to):
    history = [{"action": a, "version": v} for a, v in moves]
    assert promote._promotion_stack(history)[-2] == back_to


# ------------------------------------------------------------------ slow: the gate

@pytest.mark.slow
def test_promote_refuses_without_a_passed_gate_and_forcing_needs_a_reason(registered):
    p = registered
    out = cli_run("promote", p.tag("v2"), code=2)
    assert f"{p.tag('v2')} has no comparison: run `loraship compare {p.tag('v1')} {p.tag('v2')}`" in error_line(out)

    gate = compare(p, FAIL)
    assert not gate["passed"]
    out = cli_run("promote", p.tag("v2"), code=2)
    assert f"{p.tag('v2')}'s gate failed ({gate['reason']})" in error_line(out)
    out = cli_run("promote", p.tag("v2"), "--force", code=2)
    assert "--force needs --reason" in error_line(out)
    assert served(p, "latest") is None and audit(p) == []

    cli_run("promote", p.tag("v2"), "--force", "--reason", "hotfix approved by ops")
    assert served(p, "latest") == served(p, "v2")
    (entry,) = audit(p)
    cmp = p.version("v2").stage("compare")
    assert entry["forced"] is True and entry["override_reason"] == "hotfix approved by ops"
    assert "gate failed" in entry["overridden"] and entry["report_sha256"] == cmp["report_sha256"]


@pytest.mark.slow
def test_promote_refuses_an_inconclusive_gate_unless_forced_with_a_reason(registered):
    p = registered
    gain = compare(p, PASS)["checks"][1]
    assert gain["name"] == "new_gain"
    # a threshold on the point estimate itself: the interval around it straddles it
    gate = compare(p, {**PASS, "gate.min_new_gain": gain["value"]})
    assert gate["verdict"] == "INCONCLUSIVE" and not gate["passed"]
    out = cli_run("promote", p.tag("v2"), code=2)
    assert f"{p.tag('v2')}'s gate was inconclusive ({gate['reason']}" in error_line(out)
    out = cli_run("promote", p.tag("v2"), "--force", code=2)
    assert "--force needs --reason" in error_line(out)
    assert served(p, "latest") is None and audit(p) == []
    cli_run("promote", p.tag("v2"), "--force", "--reason", "ops accept the risk")
    (entry,) = audit(p)
    assert entry["forced"] is True and "gate was inconclusive" in entry["overridden"]
    assert served(p, "latest") == served(p, "v2")


@pytest.mark.slow
def test_promote_after_a_passed_gate_moves_the_alias_reads_it_back_and_audits(registered):
    p = registered
    gate = compare(p, PASS)
    assert gate["passed"] and gate["parent"] == p.tag("v1")
    out = cli_run("promote", p.tag("v2"))
    v2 = p.version("v2").stage("register")["digest"]
    assert f"{p.tag('latest')} -> {p.tag('v2')} ({short(v2)}); was unset" in out
    assert served(p, "latest") == v2

    (entry,) = audit(p)
    report = p.version("v2").path / "compare" / "report.json"
    assert entry["report_sha256"] == sha256_file(report) == p.version("v2").stage("compare")["report_sha256"]
    assert {k: entry[k] for k in ("action", "alias", "version", "from_digest", "to_digest", "forced", "user")} == {
        "action": "promote", "alias": "latest", "version": "v2", "from_digest": None, "to_digest": v2,
        "forced": False, "user": getpass.getuser()}
    assert entry["time"].endswith("+00:00") and entry["host"] == p.server.url
    assert json.loads(paths.audit_log(p.model).read_text().splitlines()[0]) == entry

    cli_run("promote", p.tag("v2"), "--alias", "prod")
    assert served(p, "prod") == v2
    assert f"{p.tag('latest')} {p.tag('prod')}" in versions_row(p, "v2")
    assert "latest" not in versions_row(p, "v1")


@pytest.mark.slow
def test_promote_refuses_a_digest_other_than_the_compared_one_until_compared_again(registered):
    p = registered
    compare(p, PASS)
    compared = p.version("v2").stage("compare")["digest"]
    cli_run("register", "-m", p.model, "v2", "--set", "ollama.temperature=0.3", "--force")
    now = served(p, "v2")
    assert now != compared and now == p.version("v2").stage("register")["digest"]

    out = cli_run("promote", p.tag("v2"), code=2)
    line = error_line(out)
    assert f"was compared at digest {compared[:12]} but {p.server.url} serves {now[:12]}" in line
    assert f"`loraship compare {p.tag('v1')} {p.tag('v2')}` again" in line
    assert served(p, "latest") is None

    assert compare(p, PASS)["passed"]
    cli_run("promote", p.tag("v2"))
    assert served(p, "latest") == now


@pytest.mark.slow
def test_a_tag_changed_outside_loraship_is_never_promoted_even_by_force(registered):
    p = registered
    compare(p, PASS)
    c = p.server.client()
    c.create(model=p.tag("v2"), from_=p.tag("v2"), system="You are someone else now.")
    for extra in ([], ["--force", "--reason", "trust me"]):
        out = cli_run("promote", p.tag("v2"), *extra, code=2)
        assert "changed outside loraship" in error_line(out)
    assert served(p, "latest") is None and audit(p) == []


@pytest.mark.slow
def test_an_edited_report_voids_the_gate(registered):
    p = registered
    compare(p, PASS)
    report = p.version("v2").path / "compare" / "report.json"
    report.write_text(report.read_text() + " ", encoding="utf-8")
    out = cli_run("promote", p.tag("v2"), code=2)
    assert "changed or vanished since the comparison" in error_line(out)


# ------------------------------------------------------------------ slow: rollback

@pytest.mark.slow
def test_rollback_moves_the_alias_back_and_the_next_version_trains_on_it(registered, tmp_path):
    p = registered
    cli_run("promote", p.tag("v1"), "--force", "--reason", "first version: nothing to compare against")
    compare(p, PASS)
    cli_run("promote", p.tag("v2"))
    d1, d2 = (p.version(v).stage("register")["digest"] for v in ("v1", "v2"))
    assert served(p, "latest") == d2

    out = cli_run("rollback", "-m", p.model)
    assert "the next version will train on v1" in out
    assert served(p, "latest") == d1
    last = audit(p)[-1]
    assert (last["action"], last["version"], last["from_version"]) == ("rollback", "v1", "v2")
    assert (last["from_digest"], last["to_digest"]) == (d2, d1)
    assert versions.read_state(p.model)["next_parent"] == "v1"
    assert "latest" in versions_row(p, "v1") and "latest" not in versions_row(p, "v2")

    out = cli_run("rollback", "-m", p.model, code=2)
    assert f"{p.tag('latest')} has no version promoted before v1" in error_line(out)
    assert "--to vK" in out and served(p, "latest") == d1

    batch = write_jsonl(tmp_path / "gamma.jsonl", qa_rows("gamma", 24, "gamma"))
    v3 = pipeline.stage_data(p.model, p.cfg(), [batch])
    assert (v3.id, v3.manifest["parent"]) == ("v3", "v1")
    assert versions.read_state(p.model)["next_parent"] is None  # the pointer is used once

    cli_run("rollback", "-m", p.model, "--to", "v2")
    assert served(p, "latest") == d2 and audit(p)[-1]["version"] == "v2"


@pytest.mark.slow
def test_rollback_to_a_version_that_is_not_served_is_refused(registered):
    p = registered
    cli_run("promote", p.tag("v1"), "--force", "--reason", "first version")
    p.server.client().delete(p.tag("v2"))
    out = cli_run("rollback", "-m", p.model, "--to", "v2", code=2)
    assert f"{p.tag('v2')} is not served by {p.server.url}" in error_line(out)
    assert versions.read_state(p.model).get("next_parent") is None
    assert [e["version"] for e in audit(p)] == ["v1"]
