"""The gate calibration's statistics on constructed answers: null pairs must not FAIL, a model that
forgot must, and the sampled measure narrows what the greedy one cannot."""

from __future__ import annotations

import numpy as np
import pytest
from benchmarks.gate_calibration import calibrate, table

from loraship.config import GateConfig

OLD = [f"o{i}" for i in range(40)]
NEW = [f"n{i}" for i in range(30)]
SIDES = {**{q: "old" for q in OLD}, **{q: "new" for q in NEW}}
SEEDS = [1, 2, 3, 4]


def _model(rng, p_old: np.ndarray, p_new: np.ndarray, k: int = 8) -> dict:
    """Answers drawn from per-question probabilities of being right: greedy is right when p > 1/2."""
    p = {**dict(zip(OLD, p_old)), **dict(zip(NEW, p_new))}
    return {"train_s": 1.0, "answers": {
        "greedy": {q: 100.0 * (v > 0.5) for q, v in p.items()},
        "samples": {q: list(100.0 * (rng.random(k) < v)) for q, v in p.items()}, "answer_s": 1.0}}


def _models() -> dict:
    rng, own = np.random.default_rng(5), np.random.default_rng(6)  # the retrain arm draws from its own stream
    knows = rng.beta(0.7, 0.7, len(OLD))
    models = {}
    for s in [*SEEDS, 5]:
        jitter = np.clip(knows + rng.normal(0, 0.08, len(OLD)), 0, 1)  # another seed, the same knowledge
        models[f"v1/{s}"] = _model(rng, jitter, np.full(len(NEW), 0.05))
        if s in SEEDS:
            models[f"default/{s}"] = _model(rng, jitter, np.full(len(NEW), 0.8))
            models[f"forget/{s}"] = _model(rng, jitter * 0.4, np.full(len(NEW), 0.9))
            models[f"retrain/{s}"] = _model(own, jitter, np.full(len(NEW), 0.85))
            models[f"retrain/{s}"]["train_s"] = 3.0
    return models


def test_calibration_counts_false_fails_power_and_verdicts_through_the_gates_own_rules():
    report = calibrate(_models(), SIDES, [*SEEDS, 5], GateConfig(resamples=1000))
    assert report["pairs"] == {"null": 4, "null_all": 20, "forget": 4, "default": 4}
    rows = {(r["measure"], r["max_old_loss"]): r for r in report["rows"]}
    assert set(rows) == {(m, t) for m in ("greedy", "sampled k=1", "sampled k=2", "sampled k=4", "sampled k=8")
                         for t in (2.0, 5.0, 10.0)}
    for r in report["rows"]:
        assert r["null_false_fail"]["hits"] == 0  # the same knowledge is never judged lost
        assert r["forget_false_pass"]["hits"] == 0 and sum(r["default_verdicts"].values()) == 4
    for key in [("greedy", t) for t in (2.0, 5.0, 10.0)] + [("sampled k=8", t) for t in (2.0, 5.0, 10.0)]:
        assert rows[key]["forget_fail"]["hits"] == 4  # a model that forgot is caught
    widths = [rows[(f"sampled k={k}", 10.0)]["old_loss_half_width"]["null"] for k in (1, 2, 4, 8)]
    assert widths == sorted(widths, reverse=True) and widths[-1] < widths[0] / 2  # samples narrow it
    assert rows[("sampled k=8", 10.0)]["default_verdicts"]["FAIL"] == 0
    assert report["levels"]["forget"]["old_sampled"] < report["levels"]["v1"]["old_sampled"]
    rt = report["retrain"]
    assert rt["seeds"] == 4 and rt["train_s_share"] == pytest.approx(1 / 3, abs=1e-3)
    old, new = rt["sampled_old"]["difference"], rt["sampled_new"]["difference"]
    assert old[1] <= old[0] <= old[2] and abs(old[0]) < 5  # the same old knowledge
    assert new[0] == pytest.approx(rt["sampled_new"]["incremental"] - rt["sampled_new"]["retrain"], abs=0.11)
    assert new[0] < 0 and rt["goal_met"]  # a little less new knowledge, a third of the time
    md = table(report)
    assert md.count("\n| sampled k=8 |") == 3 and "| forget | 4 |" in md
    assert "| training s | 3 | 1 | 0.33x |" in md


def test_increment_recipes_are_set_against_the_retrain_and_judged_by_the_gate():
    """A recipe that forgets what v1 knew is worse than the retrain on old facts and FAILs the
    gate, and the loss is split by whether it replayed a row of the fact."""
    models = _models()
    rng = np.random.default_rng(7)
    for s in SEEDS:
        v1_old = np.array([np.mean(models[f"v1/{s}"]["answers"]["samples"][q]) / 100 for q in OLD])
        kept = np.where(np.arange(len(OLD)) < 20, 1.0, 0.0)  # it replayed rows of the first 20 facts only
        models[f"slack/{s}"] = _model(rng, v1_old * kept, np.full(len(NEW), 0.95))
        models[f"slack/{s}"]["replayed"] = OLD[:20]
    report = calibrate(models, SIDES, [*SEEDS, 5], GateConfig(resamples=1000), ["slack"])
    slack, default = report["recipes"]["slack"], report["recipes"]["default"]
    assert slack["gate"]["verdicts"] == ["FAIL"] * 4 and slack["gate"]["seeds"] == SEEDS
    assert default["gate"]["verdicts"].count("FAIL") == 0
    assert slack["vs_retrain"]["sampled_old"]["difference"][2] < 0  # lost old facts, beyond noise
    assert slack["vs_retrain"]["sampled_new"]["difference"][0] > default["vs_retrain"]["sampled_new"]["difference"][0]
    for lo in slack["gate"]["old_loss"]:
        assert lo[1] <= lo[0] <= lo[2] and lo[0] > 20  # a loss, stated as a loss
    cover = slack["coverage"]
    assert cover["replayed"]["pairs"] == 20 * 4 and cover["not_replayed"]["pairs"] == 20 * 4
    lo, hi = cover["replayed"]["old_loss"][1:], cover["not_replayed"]["old_loss"]
    assert lo[0] <= 0 <= lo[1] and hi[1] > 20  # what it forgot is what it did not replay
    assert default["coverage"] is None  # no replay record: not split
    md = table(report)
    assert "| slack |" in md and md.count("FAIL +") == 4 and "(80) / +" in md
