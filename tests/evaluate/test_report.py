"""The three reports: verdict first, every answer present and escaped, no external URL."""

from __future__ import annotations

import html
import json
import re

import pytest

from helpers import TableBackend
from loraship.config import CompareConfig, GateConfig
from loraship.evaluate.compare import Candidate, Question, run_compare
from loraship.evaluate.report import render_html, write_reports

HOSTILE = '<script>alert("x")</script> see http://evil.example/x.js | a & b\nsecond line'
QUESTIONS = [
    Question(
        "n1",
        "When was the coop founded?",
        "Founded in 1987.",
        ["1987"],
        "coop",
        "new",
        ["Coop Charter"],
    ),
    Question("n2", "How many growers?", "12 growers.", ["12 growers"], "coop", "new"),
    Question("n3", "Delivery window?", "Within 48 hours.", ["48 hours"], "coop", "new"),
    Question("o1", "Gas for photosynthesis?", "Carbon dioxide.", ["carbon dioxide"], None, "old"),
    Question("o2", "Water boiling point?", "100 degrees Celsius.", None, None, "old"),
]




def make_report(
    v2_first_answer: str = "In 1987, says the Coop Charter.", gate: GateConfig | None = None
):
    v1 = {q.question: f"v1 does not know ({q.id})" for q in QUESTIONS}
    v1["Gas for photosynthesis?"] = "Carbon dioxide."
    v2 = {
        "When was the coop founded?": v2_first_answer,
        "How many growers?": "12 growers started it.",
        "Delivery window?": "48 hours.",
        "Gas for photosynthesis?": "carbon dioxide",
        "Water boiling point?": "",
    }
    cands = [Candidate("demo:v1", "v1"), Candidate("demo:v2", "v2", "v1")]
    return run_compare(
        cands,
        QUESTIONS,
        TableBackend({"demo:v1": v1, "demo:v2": v2}),
        CompareConfig(),
        gate or GateConfig(),
        domain_corpus={"coop": ["The coop was founded in 1987."]},
        system=None,
    )


def _no_external_reference(doc: str) -> None:
    assert not re.search(r"<script|<link|<iframe|<object|<embed|<img|@import|url\(", doc, re.I)
    assert not re.search(r"\b(?:src|href|action|xlink:href|srcset)\s*=", doc, re.I)


def test_html_has_no_external_url_of_any_kind():
    doc = render_html(make_report())
    _no_external_reference(doc)
    assert not re.search(r"https?:|//", doc)


OPEN = GateConfig(min_new_gain=-100, max_old_loss=100, min_grounding=0)  # any interval passes
SHUT = GateConfig(min_new_gain=101)  # no interval of a gain reaches 101 points


def test_html_escapes_every_answer_and_shows_the_verdict():
    report = make_report(HOSTILE, gate=SHUT)
    doc = render_html(report)
    _no_external_reference(doc)
    assert "<script" not in doc and html.escape(HOSTILE) in doc
    for a in report["answers"]:
        if a["answer"]:
            assert html.escape(a["answer"]) in doc
    assert "(empty answer)" in doc  # v2 said nothing about boiling water
    assert report["gate"]["verdict"] == "FAIL" and report["gate"]["passed"] is False
    assert re.search(r'class="banner fail"><div class="verdict">FAIL</div>', doc)
    assert html.escape(report["gate"]["reason"]) in doc and "required 101" in report["gate"]["reason"]


def test_html_banner_says_pass_and_chart_has_a_bar_with_error_bars_per_tag_and_metric():
    report = make_report(gate=OPEN)
    assert report["gate"]["verdict"] == "PASS"
    doc = render_html(report)
    assert '<div class="verdict">PASS</div>' in doc and 'class="banner pass"' in doc
    bars = re.findall(r"<title>(demo:v[12]) ([a-z() ]+): [0-9.]+ \[[0-9.]+, [0-9.]+\]</title></rect>", doc)
    # 6 metrics (grounding included: one question cites a source); v1 has no retention bar
    assert len(bars) == 6 * 2 - 1
    assert ("demo:v2", "retention") in bars and ("demo:v1", "retention") not in bars
    whiskers = re.findall(r'<path d="M[0-9.]+ [0-9.]+V[0-9.]+M', doc)
    assert len(whiskers) == len(bars)  # every bar has its interval drawn


def test_html_inconclusive_banner_says_how_many_questions_would_decide_and_names_the_method():
    report = make_report()  # 3 new and 2 old questions: too few for the default thresholds
    g = report["gate"]
    assert g["verdict"] == "INCONCLUSIVE" and g["decide"]
    doc = render_html(report)
    _no_external_reference(doc)
    assert re.search(r'class="banner inconclusive"><div class="verdict">INCONCLUSIVE</div>', doc)
    assert html.escape(g["decide"]) in doc and html.escape(g["reason"]) in doc
    assert "paired bootstrap over questions (percentile, 10000 resamples, seed" in doc
    assert "Newcombe" in doc and "exact McNemar" in doc
    # the interval plot: one error bar per check with an interval, each with its threshold
    plot = doc[doc.index('aria-label="gate checks with their intervals"'):]
    plot = plot[: plot.index("</svg>")]
    measured = [c for c in g["checks"] if c["interval"]]
    assert plot.count('stroke-dasharray="4 3"') == len(measured) == 3
    assert plot.count("<circle") == 3 and "INCONCLUSIVE" in plot
    assert "only 2 old-knowledge questions" in doc  # the warning is on the page


def test_report_json_carries_intervals_method_confidence_seed_and_counts(tmp_path):
    report = make_report(gate=GateConfig(confidence=0.9, seed=5, resamples=2000))
    saved = json.loads(write_reports(report, tmp_path)["json"].read_text())
    st = saved["gate"]["statistics"]
    assert (st["confidence"], st["seed"], st["resamples"]) == (0.9, 5, 2000)
    assert st["questions"] == {"new": 3, "old": 2, "grounded": 1} and "90% intervals" in st["method"]
    agg = saved["aggregates"]["demo:v2"]
    for key in ("accuracy_new", "accuracy_old", "new_gain", "old_loss", "retention"):
        assert agg["intervals"][key]["low"] <= agg[key] <= agg["intervals"][key]["high"]
    gain = next(c for c in saved["gate"]["checks"] if c["name"] == "new_gain")
    assert gain["interval"] == [agg["intervals"]["new_gain"]["low"], agg["intervals"]["new_gain"]["high"]]


def test_write_reports_writes_all_three_with_the_verdict_first(tmp_path):
    report = make_report(HOSTILE, gate=OPEN)
    paths = write_reports(report, tmp_path / "compare")
    assert set(paths) == {"json", "md", "html"} and all(p.exists() for p in paths.values())
    assert json.loads(paths["json"].read_text()) == report
    md = paths["md"].read_text()
    assert md.splitlines()[0] == "# PASS: demo:v2 vs demo:v1: all checks passed at 95% confidence"
    # model text cannot break the markdown table or inject HTML
    row = next(line for line in md.splitlines() if "evil.example" in line)
    assert "&lt;script&gt;" in row and "\\|" in row and "<br>second line" in row
    assert row.count(" | ") == 5  # still six cells
    assert not list((tmp_path / "compare").glob(".*.tmp"))


@pytest.mark.parametrize("gate, verdict", [(OPEN, "PASS"), (SHUT, "FAIL"), (GateConfig(), "INCONCLUSIVE")])
def test_markdown_lists_every_gate_check_with_its_interval(tmp_path, gate, verdict):
    report = make_report(gate=gate)
    md = write_reports(report, tmp_path)["md"].read_text()
    for label in (
        "parent compared",
        "new-knowledge accuracy gain",
        "old-knowledge accuracy lost",
        "mean grounding",
    ):
        assert label in md
    assert md.startswith(f"# {verdict}")
    gain = report["aggregates"]["demo:v2"]["intervals"]["new_gain"]
    assert f"| [{gain['low']:.1f}, {gain['high']:.1f}] |" in md  # the interval column
    assert f"{report['aggregates']['demo:v2']['new_gain']:.1f} [{gain['low']:.1f}, {gain['high']:.1f}]" in md
    assert ("**To decide:** about" in md) is (verdict == "INCONCLUSIVE")
