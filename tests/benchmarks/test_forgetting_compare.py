"""Two forgetting runs compared cell by cell on their shared seeds (benchmarks/forgetting_compare.py)."""

from __future__ import annotations

from benchmarks.forgetting_compare import compare, table

SIDES = {f"o{i}": "old" for i in range(10)} | {f"n{i}": "new" for i in range(10)}


def _run(old_right: int, seeds=(1, 2, 3)) -> dict:
    outcomes = {q: (100.0 if (q.startswith("o") and int(q[1:]) < old_right) or q.startswith("n") else 0.0)
                for q in SIDES}
    return {"cells": [{"cell": "v1", "seed": s, "outcomes": outcomes} for s in seeds]}


def test_a_run_against_itself_changes_nothing():
    row = compare(_run(6), _run(6), SIDES, ["v1"])[0]
    assert row["seeds"] == [1, 2, 3]
    assert row["old"]["change"]["mean"] == 0 and row["old"]["reference"]["mean"] == 60.0


def test_a_candidate_that_forgets_shows_a_loss_inside_its_interval():
    row = compare(_run(8), _run(4), SIDES, ["v1"])[0]
    change = row["old"]["change"]
    assert change["mean"] == -40.0 and change["lo"] <= -40.0 <= change["hi"] and change["hi"] < 0
    assert row["new"]["change"]["mean"] == 0
    assert "| v1 | 3 | 80.0 | 40.0 | -40.0 [" in table([row])


def test_only_shared_seeds_count_and_missing_cells_are_skipped():
    rows = compare(_run(5, seeds=(1, 2)), _run(5, seeds=(2, 3)), SIDES, ["v1", "distill+l2"])
    assert [r["cell"] for r in rows] == ["v1"] and rows[0]["seeds"] == [2]
