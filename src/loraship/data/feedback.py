"""Reviews that become data: the feedback records `loraship review` writes, and the rows
`loraship data --feedback` makes of them.

A record (one JSON object a line, `feedback.jsonl` beside the compare report)::

    {"schema": 1, "model", "version", "tag", "question_id", "question", "topic", "answer",
     "rating": "up" | "down", "correction", "reviewer", "time", "report", "report_sha256"}

It carries the question and the answer themselves: a later compare rewrites the report,
and the feedback must still say what was rated. The same reviewer rating the same answer
again replaces the earlier record (the latest `time` wins).

What becomes data, with provenance (`source: feedback`, a `provenance` object naming the
report, question, tag, reviewer and time):

- a thumbs-down with a correction: a new training row (question -> correction), added to
  the new version's train split as it is (a correction is not held out);
- a thumbs-up: a replay-eligible row (question -> the answer that was confirmed), put in
  the replay pool of this version and kept in `feedback_replay.jsonl` for its descendants;
- a thumbs-down without a correction says what is wrong but not what is right: counted only.

A row on a held-out test question is dropped (training on it would leak the test split),
as is any row whose text an earlier version already has.
"""

from __future__ import annotations

import hashlib
import json
import unicodedata
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from loraship.data.load import make_row
from loraship.errors import DataError, VersionError
from loraship.paths import parse_version_id
from loraship.store.hashing import sha256_file

SCHEMA = 1
FILE_NAME = "feedback.jsonl"
REPLAY_FILE = "feedback_replay.jsonl"
SOURCE = "feedback"
RATINGS = ("up", "down")
_TEXT = ("model", "tag", "question_id", "question", "answer", "reviewer", "time", "report")
_OPTIONAL = ("version", "topic", "correction", "report_sha256")
KEYS = ("schema", "model", "version", "tag", "question_id", "question", "topic", "answer", "rating",
        "correction", "reviewer", "time", "report", "report_sha256")
COUNT_KEYS = ("records", "superseded", "corrections", "confirmed", "down_without_correction",
              "on_test_questions", "duplicates")

Row = dict[str, Any]


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def problem(rec: Any) -> str | None:
    """Why a decoded line is not a feedback record (None when it is one): names the field."""
    if not isinstance(rec, dict):
        return "not a JSON object"
    if rec.get("schema") != SCHEMA:
        return f"field 'schema' is {rec.get('schema')!r}, expected {SCHEMA}"
    for key in _TEXT:
        if not isinstance(rec.get(key), str) or not rec[key].strip():
            return f"field '{key}' is missing or empty"
    for key in _OPTIONAL:
        if rec.get(key) is not None and not isinstance(rec[key], str):
            return f"field '{key}' must be a string or null"
    if rec.get("rating") not in RATINGS:
        return f"field 'rating' is {rec.get('rating')!r}, expected 'up' or 'down'"
    if rec["rating"] == "up" and (rec.get("correction") or "").strip():
        return "field 'correction' is set on a thumbs-up; a correction belongs to a thumbs-down"
    return None


def make_record(**fields: Any) -> dict[str, Any]:
    """A record in the fixed key order; raises DataError naming the bad field."""
    rec = {k: fields.get(k) for k in KEYS}
    rec["schema"] = SCHEMA
    rec["time"] = rec["time"] or now()
    if isinstance(rec["correction"], str):
        rec["correction"] = rec["correction"].strip() or None
    why = problem(rec)
    if why:
        raise DataError(f"feedback for {fields.get('tag')} / {fields.get('question_id')}: {why}")
    return rec


def dumps(records: Iterable[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def read_records(path: Path) -> list[dict[str, Any]]:
    """Every record of a feedback file; a bad line is a DataError naming the file, line and field."""
    path = Path(path)
    try:
        data = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{path}: feedback file not found (`loraship review REPORT` writes one)") from None
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text; feedback files are JSONL written by `loraship review`") from None
    out = []
    for n, line in enumerate(data.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{n}: invalid JSON ({e.msg} at column {e.colno}); each line holds "
                            "one feedback record") from None
        why = problem(rec)
        if why:
            raise DataError(f"{path}:{n}: not a feedback record: {why} (fix the line or drop it)")
        out.append(rec)
    return out


def latest(records: Iterable[dict]) -> tuple[list[dict], int]:
    """One record per (reviewer, tag, question): the latest; and how many were replaced."""
    best: dict[tuple[str, str, str], dict] = {}
    total = 0
    for r in records:
        total += 1
        key = (r["reviewer"], r["tag"], r["question_id"])
        if key not in best or r["time"] >= best[key]["time"]:
            best[key] = r
    return sorted(best.values(), key=lambda r: (r["time"], r["tag"], r["question_id"])), total - len(best)


def prompt_key(text: str) -> str:
    """A question as compared with test questions: case and spacing do not make it another one."""
    return " ".join(unicodedata.normalize("NFC", text).lower().split())


# ---------------------------------------------------------------- records -> rows


@dataclass
class FeedbackRows:
    train: list[Row] = field(default_factory=list)  # corrections: new training rows
    replay: list[Row] = field(default_factory=list)  # confirmed answers: the replay pool
    counts: Counter = field(default_factory=Counter)
    files: list[dict] = field(default_factory=list)


def _row(rec: dict, answer: str, version_id: str, from_version: str) -> Row:
    messages = [{"role": "user", "content": rec["question"].strip()}, {"role": "assistant", "content": answer}]
    digest = hashlib.sha256(json.dumps([rec["tag"], rec["question_id"], messages]).encode()).hexdigest()
    row = make_row(f"feedback:{rec['question_id']}:{digest[:10]}", messages, rec.get("topic"), SOURCE, "new",
                   from_version)
    row["provenance"] = {"kind": "correction" if rec["rating"] == "down" else "confirmed",
                         "report": rec["report"], "report_sha256": rec.get("report_sha256"),
                         "question_id": rec["question_id"], "tag": rec["tag"], "version": rec.get("version"),
                         "reviewer": rec["reviewer"], "time": rec["time"]}
    return row


def _rated_version(rec: dict, version_id: str) -> str:
    v = rec.get("version")
    try:
        parse_version_id(v or "")
        return v
    except VersionError:
        return version_id  # the base's answers: the row enters with the new version


def read_feedback(files: list[Path], model: str, version_id: str) -> FeedbackRows:
    """The rows the records of `files` become (before the leak and duplicate checks: admit())."""
    out = FeedbackRows()
    records = []
    for path in files:
        recs = read_records(path)
        for n, rec in enumerate(recs, start=1):
            if rec["model"] != model:
                raise DataError(f"{path}: record {n} rates {rec['tag']} of model {rec['model']!r}, not "
                                f"{model!r}: pass the feedback of this model")
        records += recs
        out.files.append({"path": str(path), "sha256": sha256_file(Path(path)), "records": len(recs)})
    kept, out.counts["superseded"] = latest(records)
    out.counts["records"] = len(records)
    for rec in kept:
        if rec["rating"] == "down" and rec.get("correction"):
            out.train.append(_row(rec, rec["correction"], version_id, version_id))
        elif rec["rating"] == "down":
            out.counts["down_without_correction"] += 1
        else:
            out.replay.append(_row(rec, rec["answer"].strip(), version_id, _rated_version(rec, version_id)))
    return out


def admit(fb: FeedbackRows, seen: set[str], test: set[str], test_prompts: set[str]) -> None:
    """Drop rows on test questions and rows already known; count what is left (in place)."""
    taken: set[str] = set()
    for name in ("train", "replay"):
        keep = []
        for row in getattr(fb, name):
            question = prompt_key(row["messages"][0]["content"])
            if row["hash"] in test or question in test_prompts:
                fb.counts["on_test_questions"] += 1
            elif row["hash"] in seen or row["hash"] in taken:
                fb.counts["duplicates"] += 1
            else:
                taken.add(row["hash"])
                keep.append(row)
        setattr(fb, name, keep)
    fb.counts["corrections"], fb.counts["confirmed"] = len(fb.train), len(fb.replay)


def summary(fb: FeedbackRows, replayed_ids: set[str]) -> dict[str, Any]:
    """The manifest's stages.data.feedback: inputs, counts, and every row with its provenance."""
    rows = [{"id": r["id"], **r["provenance"], "replayed_now": r["id"] in replayed_ids}
            for r in fb.train + fb.replay]
    return {"files": fb.files, "counts": {k: fb.counts[k] for k in COUNT_KEYS}, "rows": rows}
