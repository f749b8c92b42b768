"""The review page: one plain HTML form, no script at all.

Every answer is a fieldset with three radio buttons (good / wrong / not rated) and a
textarea for the corrected answer, so the keyboard does everything a mouse does: Tab
moves between groups, the arrow keys choose a rating, Enter in the name field or on the
button saves. Every piece of report text goes through html.escape.
"""

from __future__ import annotations

from html import escape

from loraship.review.report import Item, Review

# A drawn thumb, not an emoji: machines without an emoji font would show an empty box.
_THUMB = ('<svg aria-hidden="true" width="16" height="16" viewBox="0 0 24 24" class="thumb"{turn}>'
          '<rect x="2" y="10" width="4" height="11" rx="1"/><path d="M8 10 12 3c1.5 0 2.5 1 2 3l-1 3h7c1.1 0 '
          '2 1 1.7 2l-2.2 8.5c-.3.9-1 1.5-2 1.5H8z"/></svg>')
RATINGS = (("up", _THUMB.format(turn=""), "Good"),
           ("down", _THUMB.format(turn=' transform="rotate(180)"'), "Wrong"), ("", "", "Not rated"))

_CSS = """
*{box-sizing:border-box}html{scroll-padding-bottom:72px}body{margin:0;font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1f2328;background:#f6f8fa}
header{background:#24292f;color:#fff;padding:16px 28px}header h1{margin:0;font-size:22px}header p{margin:4px 0 0;color:#d0d7de;font-size:13px}
main{max-width:1100px;margin:0 auto;padding:12px 24px 80px}
.who{display:flex;gap:12px;align-items:center;margin:14px 0;flex-wrap:wrap}
input[type=text],textarea{font:inherit;padding:6px 8px;border:1px solid #8c959f;border-radius:6px;background:#fff}
textarea{width:100%;min-height:3.2em;margin-top:4px}
section.q{background:#fff;border:1px solid #d1d9e0;border-radius:8px;margin:16px 0;padding:12px 16px}
section.q h2{font-size:17px;margin:0 0 4px}.ref{color:#3d444d;font-size:13px;border-left:3px solid #d1d9e0;padding-left:8px;margin:6px 0}
.badge{display:inline-block;font-size:11px;padding:1px 7px;border-radius:10px;background:#eef1f4;margin-right:4px;font-weight:400}
fieldset{border:1px solid #d1d9e0;border-radius:6px;margin:10px 0;padding:8px 12px}legend{font-weight:600;padding:0 4px}
.ans{white-space:pre-wrap;word-break:break-word;background:#f6f8fa;border-radius:4px;padding:6px 8px;margin-bottom:6px}
.rate{display:flex;gap:16px;flex-wrap:wrap}.rate label{cursor:pointer}
.thumb{fill:currentColor;vertical-align:-3px;margin-right:3px}
:focus-visible{outline:3px solid #0969da;outline-offset:2px}
.status{background:#dafbe1;border:1px solid #1a7f37;padding:8px 12px;border-radius:6px}
.error{background:#ffebe9;border:1px solid #cf222e;padding:8px 12px;border-radius:6px}
.bar{position:sticky;bottom:0;background:#f6f8fa;border-top:1px solid #d1d9e0;padding:10px 0;display:flex;gap:16px;align-items:center}
button{font:inherit;font-weight:600;padding:8px 18px;border-radius:6px;border:1px solid #1a7f37;background:#1f883d;color:#fff;cursor:pointer}
"""


def _rating_group(item: Item, chosen: str, correction: str) -> str:
    radios = []
    for value, icon, word in RATINGS:
        rid = f"r{item.index}-{value or 'none'}"
        mark = " checked" if value == chosen else ""
        radios.append(f'<label for="{rid}"><input type="radio" id="{rid}" name="r{item.index}" '
                      f'value="{value}"{mark}> {icon}{word}</label>')
    cid = f"c{item.index}"
    return (f'<fieldset><legend>{escape(item.tag)}</legend><div class="ans" id="a{item.index}">'
            f'{escape(item.answer) or "<i>(empty answer)</i>"}</div>'
            f'<div class="rate">{"".join(radios)}</div>'
            f'<label for="{cid}">Corrected answer (with a thumbs down)</label>'
            f'<textarea id="{cid}" name="{cid}" rows="2">{escape(correction)}</textarea></fieldset>')


def _question(n: int, q: dict, groups: list[str]) -> str:
    badges = "".join(f'<span class="badge">{escape(str(b))}</span>'
                     for b in (q.get("knowledge"), q.get("origin"), q.get("domain")) if b)
    ref = f'<div class="ref">Reference: {escape(q["reference"])}</div>' if q.get("reference") else ""
    hid = f"q{n}"
    return (f'<section class="q" aria-labelledby="{hid}"><h2 id="{hid}">{escape(q["question"])}</h2>'
            f'<div>{badges}<span class="badge">{escape(q["id"])}</span></div>{ref}{"".join(groups)}</section>')


def render(review: Review, *, token: str, reviewer: str = "", values: dict[int, tuple[str, str]] | None = None,
           status: str | None = None, error: str | None = None) -> str:
    """The whole page; `values` maps an item index to (rating, correction) to show as chosen."""
    values = values or {}
    sections, groups, current = [], [], None
    for item in review.items:
        if current is not None and item.question["id"] != current["id"]:
            sections.append(_question(len(sections), current, groups))
            groups = []
        current = item.question
        groups.append(_rating_group(item, *values.get(item.index, ("", ""))))
    if current is not None:
        sections.append(_question(len(sections), current, groups))
    gate = review.report.get("gate") or {}
    note = (f'<p class="status" role="status">{escape(status)}</p>' if status
            else f'<p class="error" role="alert">{escape(error)}</p>' if error else "")
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>Review {escape(str(gate.get('candidate', review.model)))} - loraship</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<header><h1>Review the answers of {escape(str(gate.get('candidate', review.model)))}</h1>"
        f"<p>{escape(str(review.path))} &middot; {len(review.items)} answers &middot; feedback is saved to "
        f"{escape(str(review.feedback_path))}</p></header>",
        '<main><form method="post" action="/save">',
        f'<input type="hidden" name="token" value="{escape(token)}">', note,
        '<div class="who"><label for="reviewer">Your name (recorded with each rating)</label>'
        f'<input type="text" id="reviewer" name="reviewer" required maxlength="80" autocomplete="name" '
        f'value="{escape(reviewer)}"></div>',
        *sections,
        '<div class="bar"><button type="submit">Save feedback</button><span>Thumbs up: the answer is right. '
        "Thumbs down: it is wrong; write the right answer to teach it to the next version.</span></div>",
        "</form></main></body></html>", ""])
