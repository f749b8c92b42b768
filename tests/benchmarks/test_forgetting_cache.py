"""`make bench-forgetting`'s cell cache and reports: a seed's cached cells stand only while its v1
does, and a finished run's statistics can be recomputed without training."""

from __future__ import annotations

import json

import pytest

from benchmarks import bench_forgetting as bf


@pytest.mark.parametrize("same", [True, False])
def test_a_seeds_cached_cells_stand_only_if_v1_trained_again_reproduces_its_answers(tmp_path, same):
    cells = tmp_path / "cells"
    for name, rec in (("v1", {"outcomes": {"q": 50.0}}), ("replay", {"outcomes": {"q": 25.0}})):
        bf._save(bf.cell_path(cells, 1, name), {"spec": bf.cell_spec(name, 1), **rec})
    v1 = bf.cell_path(cells, 1, "v1")
    cached = json.loads(v1.read_text())
    fresh = {**cached, "outcomes": {"q": 50.0 if same else 0.0}}
    assert bf.reconcile_v1(v1, cached, fresh) is same
    assert bf.cell_path(cells, 1, "replay").exists() is same


def test_a_v1_variant_trained_again_differently_drops_only_the_cells_grown_from_it(tmp_path):
    cells = tmp_path / "cells"
    names = ("v1", "v1 v2", "replay", "v1 rank 32", "v1 rank 32 v2", "v1 paraphrases v2")
    for name in names:
        bf._save(bf.cell_path(cells, 1, name), {"spec": bf.cell_spec(name, 1), "outcomes": {"q": 50.0}})
    variant = bf.cell_path(cells, 1, "v1 rank 32")
    cached = json.loads(variant.read_text())
    assert not bf.reconcile_v1(variant, cached, {**cached, "outcomes": {"q": 0.0}})
    left = {n for n in names if bf.cell_path(cells, 1, n).exists()}
    assert left == {"v1", "v1 v2", "replay", "v1 rank 32", "v1 paraphrases v2"}
    plain = bf.cell_path(cells, 1, "v1")
    cached = json.loads(plain.read_text())
    assert not bf.reconcile_v1(plain, cached, {**cached, "outcomes": {"q": 0.0}})
    left = {n for n in names if bf.cell_path(cells, 1, n).exists()}
    assert left == {"v1", "v1 rank 32", "v1 paraphrases v2"}  # its v2 and the method cells went


def test_summarise_only_rewrites_the_statistics_of_a_finished_run_without_training(tmp_path, monkeypatch):
    from pathlib import Path

    monkeypatch.chdir(Path(__file__).resolve().parents[2])  # the demo's questions and config
    sides = bf.Scorer().sides()
    def cell(name, seed, old, new, replay=None):
        return {"cell": name, "seed": seed, "replay": replay, "train_s": 1.0,
                "outcomes": {q: (old if s == "old" else new) for q, s in sides.items()}}
    cells = [c for s in (1, 2, 3) for c in (cell("base", s, 0.0, 0.0), cell("v1", s, 60.0, 0.0),
                                           cell("replay", s, 30.0, 90.0, 0.2), cell("l2", s, 54.0, 80.0, 0.2))]
    report = tmp_path / "run" / "forgetting.json"
    report.parent.mkdir()
    report.write_text(json.dumps({"seeds": [1, 2, 3], "methods": {}, "cells": cells, "l2_tuning": None}))
    bf.summarise_only(report, tmp_path / "again", docs=False)
    md = (tmp_path / "again" / "forgetting.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| l2 | 20% |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert [c.split(" [")[0] for c in cells[2:5]] == ["54.0", "80.0", "90.0"]  # old, new, retention
    assert cells[7].startswith("+24.0 [") and cells[8].startswith("-10.0 [")  # paired against replay
    assert (tmp_path / "again" / "forgetting.png").stat().st_size > 1000
    with pytest.raises(SystemExit, match="not a forgetting.json of a finished run"):
        bf.summarise_only(tmp_path / "again" / "forgetting.md", tmp_path / "x", docs=False)
