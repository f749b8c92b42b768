"""The gate's part of the reports: verdict line and banner, interval plot, checks with
their intervals, and the method. report.py renders the rest; the CLI and `make demo`
print summary_lines.

Reports written before the gate had intervals carry only `passed`; they still render
(PASS / FAIL, no interval).
"""

from __future__ import annotations

import math
from html import escape
from typing import Any

VERDICTS = ("PASS", "FAIL", "INCONCLUSIVE")
COLOR = {"PASS": "#1a7f37", "FAIL": "#cf222e", "INCONCLUSIVE": "#9a6700", "n/a": "#59636e"}
_HIGHER_IS_BETTER = {"new_gain": True, "old_loss": False, "grounding": True}
_SIGNED = ("new_gain", "old_loss")  # changes against the parent carry a sign; levels do not


def verdict(g: dict) -> str:
    return g.get("verdict") or ("PASS" if g["passed"] else "FAIL")


def result(check: dict) -> str:
    return check.get("result") or {True: "PASS", False: "FAIL", None: "n/a"}[check["passed"]]


def interval(iv: Any, signed: bool = False) -> str:
    """'[30.1, 53.9]' from [lo, hi] or {"low", "high"}; '' when there is none."""
    if not iv:
        return ""
    lo, hi = (iv["low"], iv["high"]) if isinstance(iv, dict) else iv
    f = "{:+.1f}" if signed else "{:.1f}"
    return f"[{f.format(lo)}, {f.format(hi)}]"


def headline(report: dict) -> str:
    g = report["gate"]
    against = f" vs {g['parent']}" if g["parent"] else ""
    return f"{verdict(g)}: {g['candidate']}{against}: {g['reason']}"


def method_line(report: dict) -> str | None:
    st = report["gate"].get("statistics")
    if not st:
        return None
    q = st["questions"]
    counts = f"questions: {q['new']} new, {q['old']} old" + (
        f", {q['grounded']} citing sources" if q.get("grounded") else "")
    exact = []
    for side, m in (st.get("mcnemar") or {}).items():
        if m and m["facts"]:
            p = "p < 0.001" if m["p_value"] < 0.001 else f"p = {m['p_value']:.3g}"
            exact.append(f"{side} facts {m['gained']} gained, {m['lost']} lost of {m['facts']} "
                         f"(exact McNemar {p})")
    return f"{st['method']}; {counts}" + (f"; {'; '.join(exact)}" if exact else "") + "."


# ---------------------------------------------------------------- text (CLI, demo)

def _tag_keys(agg: dict) -> tuple:
    """The levels the gate judged (sampled or greedy), then gain and loss on that measure."""
    prefix = "sampled" if agg.get("measure") == "sampled" else "accuracy"
    return ((f"{prefix}_new", "new", False), (f"{prefix}_old", "old", False),
            ("new_gain", "gain", True), ("old_loss", "loss", True))


def _tag_line(tag: str, agg: dict) -> str:
    parts = []
    for key, name, signed in _tag_keys(agg):
        v = agg.get(key)
        if v is None:
            continue
        ci = interval((agg.get("intervals") or {}).get(key), signed)
        parts.append(f"{name} {v:+.1f}" if signed else f"{name} {v:.1f}")
        parts[-1] += f" {ci}" if ci else ""
    greedy = [f"{side} {agg[key]:.1f}" for key, side in (("accuracy_new", "new"), ("accuracy_old", "old"))
              if agg.get(key) is not None]
    if agg.get("measure") == "sampled" and greedy:
        parts.append(f"(greedy: {', '.join(greedy)})")
    return f"{tag}: " + "  ".join(parts)


def summary_lines(report: dict) -> list[str]:
    """The verdict with its intervals, for a terminal."""
    g = report["gate"]
    lines = [_tag_line(tag, agg) for tag, agg in report["aggregates"].items()]
    lines.append(f"gate for {g['candidate']}: {verdict(g)} - {g['reason']}")
    for c in g["checks"]:
        if c.get("interval"):
            signed = c["name"] in _SIGNED
            value = f"{c['value']:+.1f}" if signed else f"{c['value']:.1f}"
            lines.append(f"  {result(c):<12} {c['label']}: {value} {interval(c['interval'], signed)} "
                         f"(threshold {c['threshold']:g})")
    if g.get("decide"):
        lines.append(f"  {g['decide']}")
    m = method_line(report)
    return lines + ([f"  {m}"] if m else [])


# ---------------------------------------------------------------- markdown


def markdown_section(report: dict, cell) -> list[str]:
    g = report["gate"]
    out = [f"## Gate: {g['candidate']} ({g['version']}): {verdict(g)}", ""]
    if g.get("decide"):
        out += [f"**To decide:** {cell(g['decide'])}", ""]
    m = method_line(report)
    out += [f"_{cell(m)}_", ""] if m else []
    out += ["| check | value | interval | threshold | result | reason |", "|---|---|---|---|---|---|"]
    for c in g["checks"]:
        v = c["value"]
        shown = f"{v:.1f}" if isinstance(v, float) else ("n/a" if v is None else str(v))
        thr = "n/a" if c["threshold"] is None else f"{c['threshold']:g}"
        out.append(f"| {c['label']} | {cell(shown)} | {interval(c.get('interval')) or 'n/a'} | {thr} "
                   f"| {result(c)} | {cell(c['reason'])} |")
    return out


# ---------------------------------------------------------------- html


def banner_html(report: dict) -> str:
    g = report["gate"]
    state = verdict(g)
    who = escape(g["candidate"]) + (f" vs parent {escape(g['parent'])}" if g["parent"] else "")
    others = [c for c in g["checks"] if result(c) == state and c["reason"] != g["reason"]]
    items = "".join(f"<li>{escape(c['reason'])}</li>" for c in others if state != "PASS")
    decide = f'<div class="decide">{escape(g["decide"])}</div>' if g.get("decide") else ""
    return (f'<header class="banner {state.lower()}"><div class="verdict">{state}</div><div>'
            f'<div class="who">{who}</div><div class="why">{escape(g["reason"])}</div>{decide}'
            f"{f'<ul>{items}</ul>' if items else ''}</div></header>")


def _nice_step(span: float) -> float:
    raw = span / 8
    mag = 10 ** math.floor(math.log10(raw))
    return next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)


def interval_svg(report: dict) -> str:
    """One row per check with an interval: the interval as an error bar around the estimate,
    the threshold as a dashed line, the side that passes shaded green."""
    rows = [c for c in report["gate"]["checks"] if c.get("interval") and c.get("threshold") is not None]
    if not rows:
        return ""
    vals = [x for c in rows for x in (*c["interval"], c["threshold"])]
    lo, hi = min(-5.0, *vals), max(5.0, *vals)
    pad = (hi - lo) * 0.04
    lo, hi = lo - pad, hi + pad
    width, left, right, top, row_h = 1100, 330, 230, 26, 48
    plot_w, height = width - left - right, top + row_h * len(rows) + 30

    def x(v: float) -> float:
        return left + plot_w * (v - lo) / (hi - lo)

    parts = [f'<svg class="chart" viewBox="0 0 {width} {height}" width="100%" role="img" '
             f'aria-label="gate checks with their intervals">']
    step = _nice_step(hi - lo)
    for k in range(math.ceil(lo / step), math.floor(hi / step) + 1):
        t = k * step
        parts.append(f'<line x1="{x(t):.1f}" x2="{x(t):.1f}" y1="{top - 8}" y2="{height - 26}" '
                     f'stroke="{"#8c959f" if t == 0 else "#e3e8ee"}"/>'
                     f'<text x="{x(t):.1f}" y="{height - 10}" font-size="11" text-anchor="middle" '
                     f'fill="#59636e">{t:g}</text>')
    for i, c in enumerate(rows):
        parts.append(_interval_row(c, top + i * row_h, row_h, x, left, width - right, width))
    return "".join(parts) + "</svg>"


def _interval_row(c: dict, y0: float, row_h: float, x, left: float, end: float, width: float) -> str:
    res, (low, high), thr = result(c), c["interval"], c["threshold"]
    color, mid = COLOR[res], y0 + row_h / 2
    better = _HIGHER_IS_BETTER.get(c["name"], True)
    ok_from, ok_to = (x(thr), end) if better else (left, x(thr))
    sign, signed = ("+" if c["name"] == "new_gain" else ""), c["name"] in _SIGNED
    return (
        f'<rect x="{ok_from:.1f}" y="{y0 + 4}" width="{max(0.0, ok_to - ok_from):.1f}" '
        f'height="{row_h - 8}" fill="#dafbe1"/>'
        f'<line x1="{x(thr):.1f}" x2="{x(thr):.1f}" y1="{y0 + 2}" y2="{y0 + row_h - 2}" '
        f'stroke="#1f2328" stroke-dasharray="4 3"/>'
        f'<text x="{x(thr) + 4:.1f}" y="{y0 + 14}" font-size="11" fill="#1f2328">'
        f'{"&#8805;" if better else "&#8804;"} {sign}{thr:g}</text>'
        f'<text x="8" y="{mid - 3:.1f}" font-size="13">{escape(c["label"])}</text>'
        f'<text x="8" y="{mid + 13:.1f}" font-size="12" font-weight="700" fill="{color}">{res}</text>'
        f'<line x1="{x(low):.1f}" x2="{x(high):.1f}" y1="{mid:.1f}" y2="{mid:.1f}" stroke="{color}" stroke-width="3"/>'
        f'<line x1="{x(low):.1f}" x2="{x(low):.1f}" y1="{mid - 8:.1f}" y2="{mid + 8:.1f}" stroke="{color}" stroke-width="2"/>'
        f'<line x1="{x(high):.1f}" x2="{x(high):.1f}" y1="{mid - 8:.1f}" y2="{mid + 8:.1f}" stroke="{color}" stroke-width="2"/>'
        f'<circle cx="{x(c["value"]):.1f}" cy="{mid:.1f}" r="5" fill="{color}">'
        f'<title>{escape(c["label"])}: {c["value"]:.1f} {interval(c["interval"])}</title></circle>'
        f'<text x="{width - 8}" y="{mid + 4:.1f}" font-size="12" text-anchor="end">'
        f'{c["value"]:{"+" if signed else ""}.1f} {interval(c["interval"], signed)}</text>'
    )


def checks_table_html(report: dict) -> str:
    rows = []
    pct = f"{round(report['gate'].get('statistics', {}).get('confidence', 0.95) * 100, 2):g}%"
    for c in report["gate"]["checks"]:
        res = result(c)
        cls = {"PASS": "ok", "FAIL": "bad", "INCONCLUSIVE": "open"}.get(res, "na")
        v = c["value"]
        shown = f"{v:.1f}" if isinstance(v, float) else ("n/a" if v is None else str(v))
        thr = "n/a" if c["threshold"] is None else f"{c['threshold']:g}"
        rows.append(
            f'<tr><td>{escape(c["label"])}</td><td class="num">{escape(shown)}</td>'
            f'<td class="num">{escape(interval(c.get("interval")) or "n/a")}</td>'
            f'<td class="num">{escape(thr)}</td><td class="{cls}">{res}</td>'
            f"<td>{escape(c['reason'])}</td></tr>"
        )
    return (f"<table><tr><th>check</th><th>value</th><th>{pct} interval</th><th>threshold</th>"
            "<th>result</th><th>reason</th></tr>" + "".join(rows) + "</table>")


def method_html(report: dict) -> str:
    m = method_line(report)
    return f'<p class="method">{escape(m)}</p>' if m else ""


def warnings_html(report: dict) -> str:
    items = "".join(f"<li>{escape(w)}</li>" for w in report.get("warnings") or [])
    return f'<div class="warn"><b>Warnings</b><ul>{items}</ul></div>' if items else ""
