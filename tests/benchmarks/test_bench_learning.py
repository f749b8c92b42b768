"""`make bench-learning`'s statistics on constructed cells: each v1 variant against the baseline
one, and a variant's v2 against the issue's goals, with every estimate inside its interval."""

from __future__ import annotations

import pytest

from benchmarks import bench_learning as bl

SIDES = {f"o{i}": "old" for i in range(20)} | {f"n{i}": "new" for i in range(20)}
SEEDS = [1, 2, 3]


def _cell(name: str, seed: int, old_right: int, new_right: int) -> dict:
    outcomes = {q: 100.0 if int(q[1:]) < (old_right if q[0] == "o" else new_right) else 0.0 for q in SIDES}
    return {"cell": name, "seed": seed, "outcomes": outcomes, "train_s": 10.0 * seed}


def _records(v2_old_right: int) -> list[dict]:
    cells = []
    for s in SEEDS:
        cells += [_cell("base", s, 0, 0), _cell("v1", s, 12, 0), _cell("v1 10 epochs", s, 19, 0),
                  _cell("v1 10 epochs v2", s, v2_old_right, 19)]
    return cells


def test_a_variant_that_learns_more_is_shown_against_the_baseline_v1():
    rows = bl.summarise(_records(19), SIDES, SEEDS, ["baseline", "10 epochs"], ["10 epochs"])
    baseline, more = rows
    assert baseline["v1_old"]["mean"] == 60.0 and "v1_old_vs_baseline" not in baseline
    assert more["v1_old"]["mean"] == 95.0 and more["v1_train_s"] == 20.0
    gain = more["v1_old_vs_baseline"]
    assert gain["mean"] == 35.0 and 0 < gain["lo"] <= 35.0 <= gain["hi"]
    assert more["v1_goal_met_at_lower_bound"] is (more["v1_old"]["lo"] >= bl.GOAL_V1)
    assert more["v2_gain"]["mean"] == 95.0 and more["v2_retention"]["mean"] == 100.0
    assert more["v2_goal_met_at_lower_bound"]
    line = next(x for x in bl.table(rows, 3).splitlines() if x.startswith("| 10 epochs |"))
    assert "| 95.0 [" in line and "| +35.0 [" in line and "v1 " in line and "v2 yes" in line


@pytest.mark.parametrize("v2_old_right,met", [(19, True), (10, False)])
def test_v2_meets_its_goal_only_when_it_keeps_ninety_percent_at_the_lower_bound(v2_old_right, met):
    row = bl.summarise(_records(v2_old_right), SIDES, SEEDS, ["10 epochs"], ["10 epochs"])[0]
    retention = row["v2_retention"]
    assert retention["lo"] <= retention["mean"] <= retention["hi"]
    assert row["v2_goal_met_at_lower_bound"] is met
    if not met:
        assert retention["mean"] == pytest.approx(100 * 10 / 19, abs=0.1)


def test_unknown_variants_are_refused_with_the_known_ones():
    with pytest.raises(SystemExit, match="unknown variant.*known: baseline"):
        bl._names("baseline,warp speed", "--variants")
