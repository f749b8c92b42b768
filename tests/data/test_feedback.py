"""Reviews that become data: feedback records -> training rows and replay-eligible rows,
with provenance the next version's manifest counts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import cli_run, write_jsonl
from loraship.config import DataConfig
from loraship.data import feedback
from loraship.data.prepare import EarlierVersion, load_rows, prepare, summary_lines
from loraship.errors import DataError
from loraship.store import versions


def qa(i: int, prefix: str = "fact") -> dict:
    return {"question": f"What is {prefix} number {i}?", "answer": f"It is {prefix} {i}."}


def record(qid: str, question: str, answer: str, rating: str, correction: str | None = None, *,
           reviewer: str = "ana", tag: str = "m:v1", time: str = "2025-01-01T10:00:00Z", model: str = "m") -> dict:
    return feedback.make_record(model=model, version=tag.split(":")[1] if ":" in tag else None, tag=tag,
                                question_id=qid, question=question, topic="sites", answer=answer, rating=rating,
                                correction=correction, reviewer=reviewer, time=time,
                                report="m/v1_20250101_000000/compare/report.json", report_sha256="ab" * 32)


def write_feedback(path: Path, records: list[dict]) -> Path:
    path.write_text(feedback.dumps(records), encoding="utf-8")
    return path


RECORDS = [
    record("depth", "How deep is the Ebbrook Mine?", "It is 300 m deep.", "down", "The Ebbrook Mine is 610 metres deep."),
    record("harrow", "Which mineral comes out of the Harrow Shaft?", "The Harrow Shaft mines orvalite.", "up"),
    record("colour", "What colour is orvalite?", "Green.", "down"),  # no correction: counted only
]


def v1(tmp_path: Path) -> tuple[EarlierVersion, Path]:
    src = write_jsonl(tmp_path / "b1.jsonl", [qa(i) for i in range(20)])
    out = tmp_path / "v1"
    prepare([src], [], DataConfig(), out, version_id="v1")
    return EarlierVersion("v1", out, True), out


def test_corrections_train_confirmed_answers_join_the_replay_pool_with_provenance(tmp_path):
    ev, _ = v1(tmp_path)
    fb = write_feedback(tmp_path / "feedback.jsonl", RECORDS)
    new = write_jsonl(tmp_path / "b2.jsonl", [qa(i, "new") for i in range(20)])
    summary = prepare([new], [ev], DataConfig(), tmp_path / "v2", version_id="v2", feedback_files=[fb], model="m")
    train = {r["id"]: r for r in load_rows(tmp_path / "v2" / "train.jsonl")}
    fixes = [r for r in train.values() if r["source"] == "feedback"]
    assert len(fixes) == 1 and fixes[0]["messages"][1]["content"] == "The Ebbrook Mine is 610 metres deep."
    assert fixes[0]["provenance"] == {"kind": "correction", "report": "m/v1_20250101_000000/compare/report.json",
                                      "report_sha256": "ab" * 32, "question_id": "depth", "tag": "m:v1",
                                      "version": "v1", "reviewer": "ana", "time": "2025-01-01T10:00:00Z"}
    assert fixes[0]["topic"] == "sites" and fixes[0]["origin"] == "new" and fixes[0]["from_version"] == "v2"
    pool = load_rows(tmp_path / "v2" / feedback.REPLAY_FILE)
    assert [r["messages"][1]["content"] for r in pool] == ["The Harrow Shaft mines orvalite."]
    assert pool[0]["from_version"] == "v1" and pool[0]["provenance"]["kind"] == "confirmed"
    f = summary["feedback"]
    assert f["counts"] == {"records": 3, "superseded": 0, "corrections": 1, "confirmed": 1,
                           "down_without_correction": 1, "on_test_questions": 0, "duplicates": 0}
    assert {r["question_id"]: r["kind"] for r in f["rows"]} == {"depth": "correction", "harrow": "confirmed"}
    assert f["files"][0]["records"] == 3 and len(f["files"][0]["sha256"]) == 64
    assert summary["counts"]["train"] == summary["counts"]["new_kept"] - summary["counts"]["val"] \
        - summary["counts"]["test"] + 1  # the correction is trained, never held out
    assert any(line.startswith("feedback: 1 corrections -> train, 1 confirmed") for line in summary_lines(summary))


def test_a_confirmed_answer_is_replayed_now_or_by_a_descendant(tmp_path):
    ev, _ = v1(tmp_path)
    fb = write_feedback(tmp_path / "feedback.jsonl", RECORDS)
    cfg = DataConfig(replay_ratio=0.3)
    prepare([write_jsonl(tmp_path / "b2.jsonl", [qa(i, "new") for i in range(30)])], [ev], cfg, tmp_path / "v2",
            version_id="v2", feedback_files=[fb], model="m")
    ev2 = EarlierVersion("v2", tmp_path / "v2", True)
    # v3 on top of v2: v2's confirmed answer is in the pool; with the whole pool replayed it is picked
    summary = prepare([write_jsonl(tmp_path / "b3.jsonl", [qa(i, "third") for i in range(300)])], [ev, ev2],
                      DataConfig(replay_ratio=0.3), tmp_path / "v3", version_id="v3")
    replayed = {r["id"] for r in summary["replay"]["rows"]}
    assert any(i.startswith("feedback:harrow:") for i in replayed)
    final = load_rows(tmp_path / "v3" / "incremental_replay_final.jsonl")
    row = next(r for r in final if r["id"].startswith("feedback:harrow:"))
    assert row["origin"] == "replay" and row["source"] == "feedback" and row["provenance"]["question_id"] == "harrow"


def test_feedback_on_a_held_out_test_question_never_becomes_training_data(tmp_path):
    ev, out = v1(tmp_path)
    held_out = load_rows(out / "test.jsonl")[0]["messages"]
    recs = [record("test:v1:x", "  " + held_out[0]["content"].upper(), "wrong", "down", "a better answer"),
            record("test:v1:y", held_out[0]["content"], held_out[1]["content"], "up", reviewer="bo")]
    fb = write_feedback(tmp_path / "feedback.jsonl", recs + RECORDS[:1])
    summary = prepare([], [ev], DataConfig(), tmp_path / "v2", version_id="v2", feedback_files=[fb], model="m")
    assert summary["feedback"]["counts"]["on_test_questions"] == 2
    texts = [r["messages"][0]["content"] for r in load_rows(tmp_path / "v2" / "incremental_replay_final.jsonl")]
    assert texts == ["How deep is the Ebbrook Mine?"]  # feedback alone makes a version: just the correction
    assert not (tmp_path / "v2" / feedback.REPLAY_FILE).exists()


def test_the_latest_rating_of_a_reviewer_wins_and_other_reviewers_add_rows(tmp_path):
    recs = [record("depth", "How deep is the Ebbrook Mine?", "300 m", "down", "610 metres", time="2025-01-01T10:00:00Z"),
            record("depth", "How deep is the Ebbrook Mine?", "300 m", "down", "It is 610 metres deep.",
                   time="2025-01-02T10:00:00Z"),
            record("depth", "How deep is the Ebbrook Mine?", "300 m", "down", "610 metres", reviewer="bo")]
    fb = write_feedback(tmp_path / "feedback.jsonl", recs)
    summary = prepare([], [], DataConfig(), tmp_path / "v1", version_id="v1", feedback_files=[fb], model="m")
    answers = sorted(r["messages"][1]["content"] for r in load_rows(tmp_path / "v1" / "train.jsonl"))
    assert answers == ["610 metres", "It is 610 metres deep."]
    assert summary["feedback"]["counts"]["superseded"] == 1


@pytest.mark.parametrize("line, needle", [
    ('{"schema": 1}', "field 'model' is missing or empty"),
    ("{nope", "invalid JSON"),
    (json.dumps({**RECORDS[0], "rating": "meh"}), "field 'rating' is 'meh', expected 'up' or 'down'"),
    (json.dumps({**RECORDS[1], "correction": "x"}), "'correction' is set on a thumbs-up"),
    (json.dumps({**RECORDS[0], "schema": 2}), "field 'schema' is 2, expected 1"),
])
def test_a_bad_record_names_file_line_and_field(tmp_path, line, needle):
    path = tmp_path / "fb.jsonl"
    path.write_text(feedback.dumps(RECORDS[:1]) + "\n" + line + "\n", encoding="utf-8")
    with pytest.raises(DataError) as e:
        feedback.read_records(path)
    assert str(e.value).startswith(f"{path}:3: ") and needle in str(e.value)


def test_feedback_of_another_model_and_feedback_without_corrections_are_refused(tmp_path):
    fb = write_feedback(tmp_path / "fb.jsonl", [record("a", "Q?", "A.", "up", model="other", tag="other:v1")])
    with pytest.raises(DataError, match="rates other:v1 of model 'other', not 'm'"):
        prepare([], [], DataConfig(), tmp_path / "v1", version_id="v1", feedback_files=[fb], model="m")
    fb = write_feedback(tmp_path / "fb2.jsonl", RECORDS[1:])
    with pytest.raises(DataError, match="no new rows left to train on"):
        prepare([], [], DataConfig(), tmp_path / "v2", version_id="v2", feedback_files=[fb], model="m")
    assert not (tmp_path / "v2").exists()


def test_cli_data_with_feedback_records_it_in_the_next_versions_manifest(isolated_home, tmp_path):
    cli_run("data", "-m", "mining", str(write_jsonl(tmp_path / "b1.jsonl", [qa(i) for i in range(20)])))
    fb = write_feedback(tmp_path / "feedback.jsonl", [{**r, "model": "mining", "tag": "mining:v1"} for r in RECORDS])
    out = cli_run("data", "-m", "mining", "--fresh", "--feedback", str(fb))
    assert "feedback: 1 corrections -> train, 1 confirmed answers -> replay pool" in out
    m = versions.get("mining", "v2").manifest["stages"]["data"]
    assert m["feedback"]["counts"]["corrections"] == 1 and m["feedback"]["rows"][0]["report"].endswith("report.json")
    assert "feedback_replay.jsonl" in m["files"]
    assert "Error: give JSONL files, --feedback FILE, or both" in cli_run("data", "-m", "mining", code=2)
