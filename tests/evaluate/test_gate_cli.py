"""`loraship compare` exit codes and output: 0 PASS, 1 FAIL, 3 INCONCLUSIVE, 2 errors.

The comparison itself is real (run_compare on scripted answers, reports written by
write_reports); only pipeline.stage_compare's lookup of registered versions is replaced,
because that needs trained and exported models.
"""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from helpers import TableBackend
from loraship import pipeline
from loraship.cli import EXIT_INCONCLUSIVE, cli
from loraship.config import CompareConfig, GateConfig
from loraship.evaluate import report as reports
from loraship.evaluate.compare import Candidate, Question, run_compare


def questions(n: int) -> list[Question]:
    return [Question(f"{side}{i}", f"Code of {side} site {i}?", f"Code {base + i}.", [str(base + i)],
                     None, side)
            for side, base in (("new", 1000), ("old", 5000)) for i in range(n)]


def fake_stage_compare(tmp_path, n: int, v2_new: int):
    """v1 knows every old code; v2 knows every old code and the first v2_new new ones."""
    qs = questions(n)

    def answers(new_known: int) -> dict[str, str]:
        return {q.question: (f"It is {q.facts[0]}." if q.knowledge == "old" or int(q.id[3:]) < new_known
                             else "No idea.") for q in qs}

    def stage_compare(tags, cfg, **_):
        result = run_compare([Candidate("demo:v1", "v1"), Candidate("demo:v2", "v2", "v1")], qs,
                             TableBackend({"demo:v1": answers(0), "demo:v2": answers(v2_new)}),
                             cfg.compare, cfg.gate, domain_corpus={}, system=None)
        return None, result, reports.write_reports(result, tmp_path / "compare")

    return stage_compare


@pytest.mark.parametrize("n, v2_new, sets, code, verdict", [
    (40, 40, ["gate.max_old_loss=10"], 0, "PASS"),
    (40, 2, ["gate.max_old_loss=10", "gate.min_new_gain=40"], 1, "FAIL"),
    (6, 6, [], EXIT_INCONCLUSIVE, "INCONCLUSIVE"),
])
def test_compare_exit_code_follows_the_verdict(monkeypatch, tmp_path, n, v2_new, sets, code, verdict):
    monkeypatch.setattr(pipeline, "stage_compare", fake_stage_compare(tmp_path, n, v2_new))
    args = ["compare", "demo:v1", "demo:v2"] + [x for s in sets for x in ("--set", s)]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == code, r.output
    assert f"gate for demo:v2: {verdict} - " in r.stdout
    assert "demo:v2: new " in r.stdout and "gain +" in r.stdout and " [" in r.stdout  # with intervals
    assert "paired bootstrap over questions" in r.stdout and f"report: {tmp_path}" in r.stdout
    if verdict == "INCONCLUSIVE":
        assert "would decide it" in r.stdout and "error:" not in r.output
        assert "warning: only 6 new-knowledge questions" in r.stderr
    elif verdict == "FAIL":
        assert "error: demo:v2 did not pass the gate" in r.stderr


def test_compare_help_documents_every_exit_code():
    out = CliRunner().invoke(cli, ["compare", "--help"]).output
    for line in ("0  PASS", "1  FAIL", "3  INCONCLUSIVE", "2  an error"):
        assert line in out


def test_bad_gate_statistics_settings_are_one_line_errors():
    for setting, needle in (("gate.confidence=95", "gate.confidence"),
                            ("gate.resamples=10", "gate.resamples")):
        r = CliRunner().invoke(cli, ["compare", "demo:v1", "demo:v2", "--set", setting])
        assert r.exit_code == 2 and f"error: config key '{needle}'" in r.stderr
    with pytest.raises(Exception, match="gate.confidence"):
        run_compare([Candidate("demo:v1", "v1")], questions(5), TableBackend({}), CompareConfig(),
                    GateConfig(confidence=1.5), domain_corpus={}, system=None)
