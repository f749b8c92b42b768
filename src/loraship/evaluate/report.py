"""Comparison reports: report.json (machines), report.md (reviews), report.html (people).

The HTML is one self-contained file: inline CSS and an inline SVG chart, no script and
no URL of any kind, so it opens the same offline, in CI artifacts and in a mail client.
Every piece of model or question text goes through html.escape.
"""

from __future__ import annotations

import json
from html import escape
from pathlib import Path
from typing import Any

from loraship.evaluate import report_gate
from loraship.store import atomic

METRICS = [
    ("accuracy_new", "accuracy (new)"),
    ("accuracy_old", "accuracy (old)"),
    ("detail", "detail"),
    ("relevance", "relevance"),
    ("retention", "retention"),
]
# The sampled measure (evaluate/sampling.py), shown first where the gate judged it; greedy
# accuracy stays beside it.
SAMPLED_METRICS = [("sampled_new", "sampled (new)"), ("sampled_old", "sampled (old)")]
COLORS = ["#4e79a7", "#f28e2b", "#76b7b2", "#af7aa1", "#edc948", "#9c755f", "#ff9da7", "#bab0ac"]
TABLE_COLUMNS = [
    *METRICS,
    ("grounding", "grounding"),
    ("new_gain", "new gain"),
    ("old_loss", "old loss"),
    ("empty_answers", "empty"),
    ("mean_seconds", "s/answer"),
]


def write_reports(report: dict, out_dir: Path) -> dict[str, Path]:
    """Write report.json, report.md and report.html into out_dir (each atomically)."""
    out_dir = Path(out_dir)
    paths = {
        "json": out_dir / "report.json",
        "md": out_dir / "report.md",
        "html": out_dir / "report.html",
    }
    atomic.write_text(paths["json"], json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    atomic.write_text(paths["md"], render_markdown(report))
    atomic.write_text(paths["html"], render_html(report))
    return paths


def fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.1f}"
    return str(v)


def _verdict(report: dict) -> str:
    return report_gate.headline(report)


def _with_interval(agg: dict, key: str) -> str:
    """'42.0 [30.1, 53.9]' where the aggregate has an interval (report_gate.interval)."""
    ci = report_gate.interval((agg.get("intervals") or {}).get(key))
    return fmt(agg.get(key)) + (f" {ci}" if ci and agg.get(key) is not None else "")


def _grounding_used(report: dict) -> bool:
    return any(a.get("n_grounded") for a in report["aggregates"].values())


def retrieval_note(report: dict) -> str | None:
    """How the retrieval rows were made (arms.py), in one sentence; None without them."""
    r = report.get("retrieval")
    if not r:
        return None
    how = ", ".join(sorted({a["retriever"] for a in r["arms"]}))
    return (f"Retrieval rows: the top {r['top_k']} training passages ({how}) placed before each question; "
            f"base+retrieval is {r['base']}.")


def answer_tags(report: dict) -> list[str]:
    """Columns of the answer tables: the compared tags, then the retrieval rows (arms.py), if any."""
    arms = (report.get("retrieval") or {}).get("arms") or []
    return [c["tag"] for c in report["candidates"]] + [a["label"] for a in arms]


def _sampled(report: dict) -> bool:
    return (report.get("measure") or {}).get("name") == "sampled"


def _chart_metrics(report: dict) -> list[tuple[str, str]]:
    return ((SAMPLED_METRICS if _sampled(report) else []) + METRICS
            + ([("grounding", "grounding")] if _grounding_used(report) else []))


def _table_columns(report: dict) -> list[tuple[str, str]]:
    return (SAMPLED_METRICS if _sampled(report) else []) + TABLE_COLUMNS


# ---------------------------------------------------------------- markdown


def _md_cell(text: Any) -> str:
    s = escape(str(text if text is not None else ""), quote=False)
    return s.replace("|", "\\|").replace("\r", "").replace("\n", "<br>") or " "


def render_markdown(report: dict) -> str:
    g = report["gate"]
    out = [
        f"# {_verdict(report)}",
        "",
        *([f"**To decide:** {_md_cell(g['decide'])}", ""] if g.get("decide") else []),
        *[f"> warning: {_md_cell(w)}\n" for w in report.get("warnings") or []],
        f"Compared {report['created_at']} with {report['backend']}, "
        f"options `{json.dumps(report['options'], sort_keys=True)}`.",
        "",
    ]
    out += [
        "## Scores per tag (points, 0-100; [interval] where measured)",
        "",
        "| tag | " + " | ".join(lbl for _, lbl in _table_columns(report)) + " |",
        "|---" * (len(_table_columns(report)) + 1) + "|",
    ]
    for tag, agg in report["aggregates"].items():
        out.append(
            f"| {_md_cell(tag)} | " + " | ".join(_with_interval(agg, k) for k, _ in _table_columns(report)) + " |"
        )
    note = retrieval_note(report)
    out += [*(["", note] if note else []), "", *report_gate.markdown_section(report, _md_cell), "", "## Answers", ""]
    by_key = {(a["tag"], a["question_id"]): a for a in report["answers"]}
    for q in report["questions"]:
        out += [
            f"### {_md_cell(q['id'])} ({q['knowledge']}, {q['origin']}): {_md_cell(q['question'])}",
            "",
        ]
        if q.get("reference"):
            out.append(f"Reference: {_md_cell(q['reference'])}")
        if q.get("facts"):
            out.append("Facts: " + "; ".join(_md_cell(f) for f in q["facts"]))
        if q.get("sources"):
            out.append("Sources: " + "; ".join(_md_cell(s) for s in q["sources"]))
        sampled = _sampled(report)
        out += [
            "",
            "| tag | answer | accuracy |" + (" sampled |" if sampled else "") + " detail | relevance | grounding |",
            "|---|---|---|" + ("---|" if sampled else "") + "---|---|---|",
        ]
        for tag in answer_tags(report):
            a = by_key[(tag, q["id"])]
            s = a["scores"]
            out.append(
                f"| {_md_cell(tag)} | {_md_cell(a['answer'])} | {fmt(s['accuracy'])} |"
                + (f" {_sampled_cell(a)} |" if sampled else "")
                + f" {fmt(s['detail'])} | {fmt(s['relevance'])} | {fmt(s['grounding'])} |"
            )
        out.append("")
    return "\n".join(out)


def _sampled_cell(a: dict) -> str:
    """'62.5 (5/8 right)' for a sampled answer set; 'n/a' without samples."""
    s = a["scores"]
    if s.get("sampled") is None:
        return "n/a"
    return f"{fmt(s['sampled'])} ({s['sampled_right']}/{len(a.get('samples') or [])} right)"


# ---------------------------------------------------------------- html

_CSS = """
*{box-sizing:border-box}body{margin:0;font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1f2328;background:#f6f8fa}
main{max-width:1400px;margin:0 auto;padding:0 24px 48px}
.banner{padding:22px 32px;color:#fff;display:flex;align-items:center;gap:32px}
.banner.pass{background:#1a7f37}.banner.fail{background:#cf222e}.banner.inconclusive{background:#9a6700}
.banner .decide{font-size:16px;margin-top:8px;font-weight:600}.banner.inconclusive .verdict{font-size:52px;letter-spacing:2px}
td.num{white-space:nowrap}
.open{color:#9a6700;font-weight:700}.ci{display:block;color:#59636e;font-size:12px;white-space:nowrap}
.method{color:#3d444d;font-size:13px;margin:8px 0 0}
.warn{background:#fff8c5;border:1px solid #d4a72c;padding:8px 14px;margin-top:14px}.warn ul{margin:4px 0 0;padding-left:20px}
.verdict{font-size:76px;font-weight:800;letter-spacing:4px;line-height:1}
.banner .who{font-size:22px;font-weight:600}.banner .why{font-size:18px;margin-top:6px}
.banner ul{margin:6px 0 0;padding-left:20px;font-size:15px}
h2{margin:28px 0 10px;font-size:20px}.meta{color:#59636e;font-size:13px;margin:10px 0 0}
table{border-collapse:collapse;background:#fff;width:100%}
th,td{border:1px solid #d1d9e0;padding:6px 9px;text-align:left;vertical-align:top}
th{background:#eef1f4;font-weight:600}td.num{text-align:right;font-variant-numeric:tabular-nums}
.ok{color:#1a7f37;font-weight:700}.bad{color:#cf222e;font-weight:700}.na{color:#59636e}
.swatch{display:inline-block;width:12px;height:12px;border-radius:2px;margin-right:6px;vertical-align:-1px}
.chart{background:#fff;border:1px solid #d1d9e0;padding:8px}
.answers td{width:auto}.answers td.q{width:26%;background:#fbfcfd}
.ans{white-space:pre-wrap;word-break:break-word;font-size:14px}
.ref{white-space:pre-wrap;color:#3d444d;font-size:13px;margin-top:6px;border-left:3px solid #d1d9e0;padding-left:8px}
.badge{display:inline-block;font-size:11px;padding:1px 7px;border-radius:10px;background:#eef1f4;margin-right:4px}
.badge.new{background:#ddf4ff}.badge.old{background:#fff8c5}
.scores{margin-top:6px;font-size:12px;color:#3d444d}.chip{display:inline-block;padding:0 6px;border-radius:8px;margin-right:4px}
.chip.na{background:#eef1f4}.hi{background:#dafbe1}.mid{background:#fff8c5}.lo{background:#ffebe9}
.facts{font-size:12px;margin-top:4px}
"""


def _level(key: str, v: float | None) -> str:
    # relevance is a similarity, not a grade: small values are normal, so it gets no colour
    if v is None or key == "relevance":
        return "na"
    return "hi" if v >= 80 else "mid" if v >= 40 else "lo"


def _error_bar(iv: dict | None, x: float, top: float, plot_h: float) -> str:
    """Whiskers from the interval's low to high on a 0..100 bar chart."""
    if not iv:
        return ""
    y_lo, y_hi = (top + plot_h * (1 - max(0.0, min(100.0, v)) / 100) for v in (iv["low"], iv["high"]))
    return (f'<path d="M{x:.1f} {y_lo:.1f}V{y_hi:.1f}M{x - 4:.1f} {y_lo:.1f}h8M{x - 4:.1f} {y_hi:.1f}h8" '
            f'stroke="#1f2328" stroke-width="1.5" fill="none"/>')


def _svg_chart(report: dict) -> str:
    metrics, tags = _chart_metrics(report), list(report["aggregates"])
    width, height, left, top, bottom = 1100, 300, 44, 34, 40
    plot_w, plot_h = width - left - 10, height - top - bottom
    group = plot_w / len(metrics)
    bar = group * 0.8 / max(1, len(tags))
    parts = [
        f'<svg class="chart" viewBox="0 0 {width} {height}" width="100%" role="img" aria-label="scores per tag">'
    ]
    for tick in range(0, 101, 25):
        y = top + plot_h * (1 - tick / 100)
        parts.append(
            f'<line x1="{left}" x2="{width - 10}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e3e8ee"/>'
            f'<text x="{left - 6}" y="{y + 4:.1f}" font-size="11" text-anchor="end" fill="#59636e">{tick}</text>'
        )
    for m, (key, label) in enumerate(metrics):
        x0 = left + m * group + group * 0.1
        for t, tag in enumerate(tags):
            v, x = report["aggregates"][tag].get(key), x0 + t * bar
            iv = (report["aggregates"][tag].get("intervals") or {}).get(key)
            if v is None:
                parts.append(
                    f'<text x="{x + bar / 2:.1f}" y="{top + plot_h - 4}" font-size="10" text-anchor="middle" fill="#8c959f">n/a</text>'
                )
                continue
            h = plot_h * max(0.0, min(100.0, v)) / 100
            ci = report_gate.interval(iv)
            label_y = top + plot_h * (1 - max(0.0, min(100.0, iv["high"] if iv else v)) / 100) - 4
            parts.append(
                f'<rect x="{x:.1f}" y="{top + plot_h - h:.1f}" width="{bar - 2:.1f}" height="{h:.1f}" fill="{COLORS[t % len(COLORS)]}">'
                f"<title>{escape(tag)} {label}: {v:.1f}{' ' + ci if ci else ''}</title></rect>"
                + _error_bar(iv, x + bar / 2 - 1, top, plot_h)
                + f'<text x="{x + bar / 2 - 1:.1f}" y="{max(12.0, label_y):.1f}" font-size="11" text-anchor="middle">{v:.0f}</text>'
            )
        parts.append(
            f'<text x="{left + (m + 0.5) * group:.1f}" y="{height - 14}" font-size="13" text-anchor="middle">{label}</text>'
        )
    for t, tag in enumerate(tags):
        x = left + 8 + t * 170
        parts.append(
            f'<rect x="{x}" y="8" width="12" height="12" fill="{COLORS[t % len(COLORS)]}"/>'
            f'<text x="{x + 17}" y="18" font-size="12">{escape(tag)}</text>'
        )
    return "".join(parts) + "</svg>"


def _aggregates_table(report: dict) -> str:
    columns = _table_columns(report)
    head = "".join(f"<th>{escape(lbl)}</th>" for _, lbl in columns)
    rows = []
    for t, (tag, agg) in enumerate(report["aggregates"].items()):
        sw = f'<span class="swatch" style="background:{COLORS[t % len(COLORS)]}"></span>'
        cells = "".join(f'<td class="num">{fmt(agg.get(k))}{_ci_html(agg, k)}</td>' for k, _ in columns)
        rows.append(f"<tr><th>{sw}{escape(tag)}</th>{cells}</tr>")
    return f"<table><tr><th>tag</th>{head}</tr>{''.join(rows)}</table>"


def _ci_html(agg: dict, key: str) -> str:
    ci = report_gate.interval((agg.get("intervals") or {}).get(key))
    return f'<span class="ci">{escape(ci)}</span>' if ci and agg.get(key) is not None else ""


def _question_cell(q: dict) -> str:
    badges = f'<span class="badge {q["knowledge"]}">{escape(q["knowledge"])}</span><span class="badge">{escape(q["origin"])}</span>'
    if q.get("domain"):
        badges += f'<span class="badge">{escape(q["domain"])}</span>'
    ref = f'<div class="ref">{escape(q["reference"])}</div>' if q.get("reference") else ""
    src = (
        (f'<div class="facts">sources: {escape("; ".join(q["sources"]))}</div>')
        if q.get("sources")
        else ""
    )
    return (
        f'<td class="q"><div><b>{escape(q["id"])}</b> {badges}</div><div>{escape(q["question"])}</div>'
        f"{ref}{src}</td>"
    )


def _answer_cell(q: dict, a: dict) -> str:
    s = a["scores"]
    chips = "".join(
        f'<span class="chip {_level(k, s.get(k))}">{k} {fmt(s.get(k))}</span>'
        for k in ("accuracy", "detail", "relevance", "grounding")
        if s.get(k) is not None
    )
    facts = ""
    if s.get("facts_found") is not None:
        facts = (
            '<div class="facts">'
            + " ".join(
                f'<span class="{"ok" if hit else "bad"}">{"&#10003;" if hit else "&#10007;"} {escape(f)}</span>'
                for f, hit in zip(q["facts"], s["facts_found"], strict=True)
            )
            + "</div>"
        )
    if a.get("retrieved") is not None:
        ids = ", ".join(escape(p["id"]) for p in a["retrieved"]) or "none"
        facts += f'<div class="facts">retrieved: {ids}</div>'
    if a.get("samples"):  # the sampled answers behind the gate's measure, folded away
        items = "".join(f"<li>{escape(t) or '<i>(empty answer)</i>'}</li>" for t in a["samples"])
        facts += (f'<details class="facts"><summary>sampled {escape(_sampled_cell(a))}</summary>'
                  f'<ol class="ans">{items}</ol></details>')
    return f'<td><div class="ans">{escape(a["answer"]) or "<i>(empty answer)</i>"}</div><div class="scores">{chips}</div>{facts}</td>'


def _answers_table(report: dict) -> str:
    by_key = {(a["tag"], a["question_id"]): a for a in report["answers"]}
    tags = answer_tags(report)
    head = "".join(f"<th>{escape(t)}</th>" for t in tags)
    rows = [
        f"<tr>{_question_cell(q)}{''.join(_answer_cell(q, by_key[(t, q['id'])]) for t in tags)}</tr>"
        for q in report["questions"]
    ]
    return f'<table class="answers"><tr><th>question and reference</th>{head}</tr>{"".join(rows)}</table>'


def render_html(report: dict) -> str:
    g = report["gate"]
    opts = ", ".join(f"{k}={v}" for k, v in sorted(report["options"].items()))
    if _sampled(report):
        m = report["measure"]
        opts += f"; {m['samples']} samples per question at temperature {m['temperature']:g}"
    meta = (
        f"{escape(report['created_at'])} &middot; backend {escape(report['backend'])} &middot; {escape(opts)} "
        f"&middot; {len(report['questions'])} questions &times; {len(report['candidates'])} tags"
    )
    title = f"{report_gate.verdict(g)} {g['candidate']} - loraship compare"
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>",
            report_gate.banner_html(report),
            f'<main><p class="meta">{meta}</p>',
            report_gate.warnings_html(report),
            "<h2>Gate checks</h2>",
            report_gate.interval_svg(report),
            report_gate.method_html(report),
            report_gate.checks_table_html(report),
            "<h2>Scores per tag (points, 0&ndash;100; whiskers: the interval)</h2>",
            _svg_chart(report),
            _aggregates_table(report),
            f'<p class="meta">{escape(retrieval_note(report))}</p>' if report.get("retrieval") else "",
            "<h2>Every answer</h2>",
            _answers_table(report),
            "</main></body></html>",
            "",
        ]
    )
