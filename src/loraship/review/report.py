"""The compare report under review: where it is, what can be rated, and the records of a rating."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loraship import paths
from loraship.data import feedback
from loraship.errors import ConfigError
from loraship.evaluate.report import answer_tags
from loraship.store.hashing import sha256_file


@dataclass(frozen=True)
class Item:
    """One answer that can be rated: a question asked of one tag (or retrieval row)."""

    index: int
    question: dict
    tag: str
    version: str | None
    answer: str


@dataclass
class Review:
    path: Path  # report.json
    report: dict
    items: list[Item]
    model: str
    sha256: str  # of report.json as it was read: the ratings are of these answers

    @property
    def feedback_path(self) -> Path:
        return self.path.parent / feedback.FILE_NAME

    def record(self, item: Item, rating: str, correction: str | None, reviewer: str) -> dict[str, Any]:
        return feedback.make_record(
            model=self.model, version=item.version, tag=item.tag, question_id=item.question["id"],
            question=item.question["question"], topic=item.question.get("domain"), answer=item.answer,
            rating=rating, correction=correction, reviewer=reviewer, report=_shown(self.path),
            report_sha256=self.sha256)


def _shown(path: Path) -> str:
    """The report's path as provenance: relative to the runs folder when it lives there."""
    try:
        return str(path.resolve().relative_to(paths.runs_root()))
    except ValueError:
        return str(path.resolve())


def find_report(path: Path) -> Path:
    """report.json from what a user may type: the file, its folder, or report.html / report.md beside it."""
    path = Path(path)
    candidate = path / "report.json" if path.is_dir() else path.with_name("report.json")
    if path.suffix in (".json", ".html", ".md") or path.is_dir():
        if candidate.is_file():
            return candidate
    raise ConfigError(f"{path}: no compare report there (expected report.json, or its folder): "
                      "run `loraship compare` first; reports are in runs/<model>/vN_*/compare/")


def load_review(path: Path) -> Review:
    """The report and the answers it holds, in report order: question by question, tag by tag."""
    report_path = find_report(path)
    try:
        report = json.loads(report_path.read_text(encoding="utf-8"))
        by_key = {(a["tag"], a["question_id"]): a["answer"] for a in report["answers"]}
        versions = {c["tag"]: c["version"] for c in report["candidates"]}
        versions.update({a["label"]: a.get("version") for a in (report.get("retrieval") or {}).get("arms", [])})
        tags = answer_tags(report)
        model = report["candidates"][0]["tag"].split(":", 1)[0]
        questions = report["questions"]
    except (OSError, ValueError, KeyError, IndexError, TypeError) as e:
        raise ConfigError(f"{report_path}: not a loraship compare report ({type(e).__name__}: {e}); "
                          "run `loraship compare` again to rewrite it") from None
    items, i = [], 0
    for q in questions:
        for tag in tags:
            if (tag, q["id"]) in by_key:
                items.append(Item(i, q, tag, versions.get(tag), by_key[(tag, q["id"])] or ""))
                i += 1
    return Review(report_path, report, items, model, sha256_file(report_path))
