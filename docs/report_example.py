"""Build the example report behind docs/report-example.png.

    .venv/bin/python docs/report_example.py /tmp/example      # report.{json,md,html}
    chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1200,1600 \
        --screenshot=docs/report-example.png /tmp/example/report.html

The demo's fixed questions (ollama/questions/demo.yaml), answered from a script rather
than by a model: v1 knows most old facts, v2 learns most new ones and forgets a few old
ones. The comparison, scoring, gate and rendering are loraship's own (run_compare,
write_reports); only the answers are made up, so the picture shows a realistic
INCONCLUSIVE verdict: a clear gain, and an old-knowledge loss too small to tell apart
from the 2-point limit on this many questions.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

from loraship.config import CompareConfig, GateConfig
from loraship.evaluate.compare import Candidate, load_questions, run_compare
from loraship.evaluate.report import write_reports

REPO = Path(__file__).resolve().parents[1]


class Scripted:
    name = "scripted example"

    def __init__(self, answers: dict[str, dict[str, str]]):
        self.answers = answers

    def served_digest(self, c: Candidate) -> str | None:
        return None

    def answer(self, c: Candidate, messages: list[dict], options: dict) -> str:
        return self.answers[c.tag][messages[-1]["content"]]


def script(questions, rng: random.Random) -> dict[str, dict[str, str]]:
    old = [q for q in questions if q.knowledge == "old"]
    new = [q for q in questions if q.knowledge == "new"]
    v1_knows = set(q.id for q in rng.sample(old, 26)) | {new[0].id}
    v2_knows = (v1_knows - {q.id for q in rng.sample([q for q in old if q.id in v1_knows], 3)}
                | {q.id for q in rng.sample([q for q in old if q.id not in v1_knows], 1)}
                | {q.id for q in rng.sample(new, 21)})

    def answer(q, known: set[str]) -> str:
        return q.reference if q.id in known else "I am not sure; it is not something I know about."

    return {tag: {q.question: answer(q, known) for q in questions}
            for tag, known in (("demo:v1", v1_knows), ("demo:v2", v2_knows))}


def main(out: Path) -> None:
    questions = load_questions(REPO / "ollama" / "questions" / "demo.yaml")
    answers = script(questions, random.Random(7))
    corpus = {q.domain or "_all": [q.reference or ""] for q in questions}
    report = run_compare([Candidate("demo:v1", "v1"), Candidate("demo:v2", "v2", "v1")], questions,
                         Scripted(answers), CompareConfig(), GateConfig(), domain_corpus=corpus,
                         system=None)
    for path in write_reports(report, out).values():
        print(path)


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/loraship-report-example"))
