"""The statistics behind `make bench-forgetting`: means, retention and gain with intervals over
seeds x questions, and the rule that picks the default increment method, on constructed cells."""

from __future__ import annotations

import pytest
from benchmarks.forgetting_stats import best_method, summarise, table

OLD = [f"o{i}" for i in range(10)]
NEW = [f"n{i}" for i in range(10)]
SIDES = {**{q: "old" for q in OLD}, **{q: "new" for q in NEW}}
SEEDS = (1, 2, 3)


def _cell(cell: str, seed: int, old_right: int, new_right: int, replay: float | None = 0.2) -> dict:
    """A cell whose first `old_right` old and `new_right` new questions are answered fully."""
    outcomes = {q: 100.0 if i < old_right else 0.0 for i, q in enumerate(OLD)}
    outcomes |= {q: 100.0 if i < new_right else 0.0 for i, q in enumerate(NEW)}
    return {"cell": cell, "seed": seed, "replay": replay, "outcomes": outcomes, "train_s": 10.0}


def _records(cells: dict[str, tuple[int, int]]) -> list[dict]:
    records = [_cell("base", s, 0, 0, None) for s in SEEDS] + [_cell("v1", s, 8, 0, None) for s in SEEDS]
    return records + [_cell(name, s, o, n) for name, (o, n) in cells.items() for s in SEEDS]


def test_retention_and_gain_are_against_v1_and_the_base_with_intervals_around_them():
    rows = {r["cell"]: r for r in summarise(_records({"keeps": (8, 6), "forgets": (4, 9)}), SIDES)["cells"]}
    keeps, forgets = rows["keeps"], rows["forgets"]
    assert keeps["retention"]["mean"] == pytest.approx(100.0) and keeps["gain"]["mean"] == pytest.approx(60.0)
    assert forgets["retention"]["mean"] == pytest.approx(50.0) and forgets["gain"]["mean"] == pytest.approx(90.0)
    assert keeps["goal_met"] and not forgets["goal_met"]  # 90% retention and +30 points
    for row in (keeps, forgets):
        for key in ("old", "new", "gain"):
            assert row[key]["lo"] <= row[key]["mean"] <= row[key]["hi"]
    # every seed answered the same questions: only the questions' resampling widens the interval
    assert forgets["old"]["lo"] < forgets["old"]["mean"] < forgets["old"]["hi"]


def test_the_best_method_keeps_the_most_old_facts_among_those_that_still_learn_the_new_ones():
    records = _records({"low lr": (8, 1), "replay": (4, 9), "l2": (7, 8)})
    # "low lr" keeps everything but gains 10 points, under the 30 that count as learning
    assert best_method(records, SIDES, ["low lr", "replay", "l2"]) == "l2"
    assert best_method(records, SIDES, ["low lr", "replay"]) == "replay"
    # "edge" gains 40 points on 10 questions: the interval's lower bound is under 30, so it does
    # not count as learning, though it keeps more old facts than "replay"
    assert best_method(_records({"edge": (8, 4), "replay": (4, 9)}), SIDES, ["edge", "replay"]) == "replay"
    # when nothing learns, the best mean of old and new
    assert best_method(_records({"a": (8, 1), "b": (2, 2)}), SIDES, ["a", "b"]) == "a"


def test_a_cell_missing_a_seed_is_left_out_until_every_seed_has_it():
    records = _records({"l2": (7, 8)}) + [_cell("partial", 1, 8, 8)]
    summary = summarise(records, SIDES)
    assert [r["cell"] for r in summary["cells"]] == ["base", "v1", "l2"]
    assert "| l2 | 20% | 70.0 [" in table(summary, len(SEEDS))


def test_each_method_is_also_compared_with_plain_replay_paired_question_by_question():
    rows = {r["cell"]: r for r in summarise(_records({"replay": (4, 9), "l2": (7, 8)}), SIDES)["cells"]}
    vs = rows["l2"]["vs_replay"]
    assert vs["old"]["mean"] == pytest.approx(30.0) and vs["new"]["mean"] == pytest.approx(-10.0)
    # identical seeds: the paired interval is the gate's over 10 questions, 3 of which l2 gets and replay
    # does not (Student's t on those differences: wider than the bootstrap's [0, 60] on so few)
    assert -10.0 < vs["old"]["lo"] < 30.0 < vs["old"]["hi"] < 70.0
    assert "gate's intervals" in summarise(_records({"replay": (4, 9)}), SIDES)["interval"]
    assert "vs_replay" not in rows["replay"] and "vs_replay" not in rows["v1"]
    assert "| l2 | 20% |" in table(summarise(_records({"replay": (4, 9), "l2": (7, 8)}), SIDES), 3)
    assert "+30.0 [" in table(summarise(_records({"replay": (4, 9), "l2": (7, 8)}), SIDES), 3)


def test_a_replay_ratio_cell_is_paired_with_its_methods_20_percent_cell():
    records = _records({"replay": (4, 9), "l2": (7, 8)}) + [_cell("l2 30%", s, 8, 8, 0.3) for s in SEEDS]
    rows = {r["cell"]: r for r in summarise(records, SIDES)["cells"]}
    assert rows["l2 30%"]["vs_base_replay_ratio"]["old"]["mean"] == pytest.approx(10.0)
    assert rows["l2 30%"]["vs_base_replay_ratio"]["new"]["mean"] == pytest.approx(0.0)
    assert "vs_base_replay_ratio" not in rows["l2"]
