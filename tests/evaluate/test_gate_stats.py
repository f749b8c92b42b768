"""The gate on constructed per-question score tables, and the statistics under it.

Known values come from published examples: the McNemar exact test and Newcombe's paired
interval on Cavo et al. (2012) as worked in Fagerland, Lydersen & Laake, "Statistical
Analysis of Contingency Tables" (ch. 8): table [[59, 6], [16, 80]], exact conditional
P = 0.052479, Newcombe square-and-add 95% CI -0.1186 to -0.0046; Wilson intervals for
0/10 and 5/10 as tabulated by Newcombe (1998).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest

from loraship.config import GateConfig
from loraship.evaluate import gate, sampling, scoring, stats
from loraship.evaluate.candidate import Candidate


@dataclass
class Q:
    id: str
    knowledge: str
    sources: list[str] = field(default_factory=list)


def table(new: list[tuple[int, int]], old: list[tuple[int, int]], cfg: GateConfig | None = None,
          facts: bool = True) -> dict:
    """Judge v2 against v1 on (parent right?, candidate right?) pairs per question."""
    cands = [Candidate("demo:v1", "v1"), Candidate("demo:v2", "v2", "v1")]
    scored: dict[str, list] = {"demo:v1": [], "demo:v2": []}
    for side, pairs in (("new", new), ("old", old)):
        for i, pair in enumerate(pairs):
            q = Q(f"{side}{i}", side)
            for tag, right in zip(("demo:v1", "demo:v2"), pair):
                s = {"accuracy": 100.0 * right, "detail": 50.0, "relevance": 10.0, "grounding": None}
                if facts:
                    s["facts_found"] = [bool(right)]
                scored[tag].append((q, s))
    per_tag = {tag: scoring.aggregate(rows) for tag, rows in scored.items()}
    cfg = cfg or GateConfig()
    gate.add_parent_deltas(cands, per_tag, scored, cfg)
    return {"aggregates": per_tag, "gate": gate.judge(cands, per_tag, cfg)}


def pairs(both: int = 0, gained: int = 0, lost: int = 0, neither: int = 0) -> list[tuple[int, int]]:
    return [(1, 1)] * both + [(0, 1)] * gained + [(1, 0)] * lost + [(0, 0)] * neither


def check(result: dict, name: str) -> dict:
    return next(c for c in result["gate"]["checks"] if c["name"] == name)


# ---------------------------------------------------------------- statistics: known values


def test_mcnemar_exact_matches_published_and_hand_computed_values():
    assert stats.mcnemar_exact(6, 16) == pytest.approx(0.052479, abs=5e-7)  # Cavo et al. 2012
    assert stats.mcnemar_exact(16, 6) == stats.mcnemar_exact(6, 16)
    assert stats.mcnemar_exact(10, 2) == pytest.approx(2 * (1 + 12 + 66) / 4096)
    assert stats.mcnemar_exact(5, 0) == pytest.approx(2 / 32)
    assert stats.mcnemar_exact(0, 0) == 1.0 and stats.mcnemar_exact(1, 1) == 1.0
    with pytest.raises(ValueError):
        stats.mcnemar_exact(-1, 2)


def test_wilson_interval_matches_tabulated_values():
    assert stats.wilson(0, 10, 0.95) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert stats.wilson(5, 10, 0.95) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert stats.z_value(0.95) == pytest.approx(1.959964, abs=1e-6)


def test_newcombe_paired_interval_matches_the_published_example():
    # rows: candidate right / wrong; columns: parent right / wrong
    t = pairs(both=59, gained=6, lost=16, neither=80)
    parent, cand = [100.0 * p for p, _ in t], [100.0 * c for _, c in t]
    low, high = stats.score_paired_difference(parent, cand, 0.95)
    assert (low, high) == pytest.approx((-11.86, -0.46), abs=0.01)
    assert stats.paired_difference(parent, cand, 0.95, 10000, 1).estimate == pytest.approx(-100 * 10 / 161)


def test_bootstrap_is_deterministic_for_a_seed():
    rng = np.random.default_rng(3)
    parent, cand = rng.random(40) * 100.0, rng.random(40) * 100.0  # F1-like scores: no ties
    a = stats.paired_difference(parent, cand, 0.95, 5000, seed=7)
    assert a == stats.paired_difference(parent, cand, 0.95, 5000, seed=7)
    assert a.bootstrap != stats.paired_difference(parent, cand, 0.95, 5000, seed=8).bootstrap
    # the gate's JSON carries what made the interval, and reads back to the same interval
    assert stats.Interval.from_json(a.to_json()).to_json() == a.to_json()


def test_an_interval_is_never_certain_when_every_pair_agrees():
    same = [100.0] * 8 + [0.0] * 8
    iv = stats.paired_difference(same, same, 0.95, 5000, seed=1)
    assert iv.bootstrap == (0.0, 0.0)  # the bootstrap alone would "prove" no change
    assert iv.low < -5 and iv.high > 5  # the score interval keeps 16 questions honest


def test_on_few_questions_the_gate_interval_covers_where_the_bootstrap_alone_does_not():
    """Why the hull: 10 questions, 5% of them truly improve, 200 simulated comparisons."""
    rng, true, hits = np.random.default_rng(2024), 5.0, {"bootstrap": 0, "gate": 0}
    for run in range(200):
        gained = rng.random(10) < 0.05
        parent = np.where(rng.random(10) < 0.4, 100.0, 0.0) * ~gained
        cand = np.where(gained, 100.0, parent)
        iv = stats.paired_difference(parent, cand, 0.95, 2000, seed=run)
        hits["bootstrap"] += iv.bootstrap[0] <= true <= iv.bootstrap[1]
        hits["gate"] += iv.low <= true <= iv.high
    assert hits["gate"] >= 0.95 * 200 and hits["bootstrap"] < 0.75 * 200


def test_questions_to_decide_finds_the_first_count_that_decides():
    iv = stats.paired_difference([0.0] * 20, [100.0] * 4 + [0.0] * 16, 0.95, 5000, seed=1)
    assert iv.estimate == pytest.approx(20.0) and iv.low < 5 < iv.high
    need = stats.questions_to_decide(iv, 5.0, True, 0.95)
    assert need is not None and need > 20
    assert stats.project(iv, need, 0.95)[0] >= 5.0 > stats.project(iv, need - 1, 0.95)[0]
    assert stats.questions_to_decide(iv, 20.0, True, 0.95) is None  # the estimate is the threshold


# ---------------------------------------------------------------- the gate on tables


def test_pass_when_every_interval_clears_its_threshold():
    result = table(pairs(both=5, gained=45, neither=10), pairs(both=80, gained=10, neither=10),
                   GateConfig(min_grounding=0))
    g = result["gate"]
    assert g["verdict"] == "PASS" and g["passed"] is True and g["decide"] is None
    gain, loss = check(result, "new_gain"), check(result, "old_loss")
    assert gain["interval"][0] >= 5 and loss["interval"][1] <= 2
    assert g["reason"] == "all checks passed at 95% confidence"
    assert check(result, "grounding")["result"] == "n/a"


def test_fail_when_even_the_upper_bound_of_the_gain_is_below_the_minimum():
    result = table(pairs(both=20, neither=40), pairs(both=60))
    gain = check(result, "new_gain")
    assert result["gate"]["verdict"] == "FAIL" and gain["result"] == "FAIL"
    assert gain["interval"][1] < 5 and "even its upper bound is below the required 5" in gain["reason"]


def test_fail_when_even_the_lower_bound_of_the_loss_is_above_the_maximum():
    result = table(pairs(gained=60), pairs(both=20, lost=30, neither=10))
    loss = check(result, "old_loss")
    assert loss["result"] == "FAIL" and loss["interval"][0] > 2 and result["gate"]["verdict"] == "FAIL"
    assert result["gate"]["reason"] == loss["reason"]


def test_a_point_estimate_that_passes_is_inconclusive_when_its_interval_does_not():
    """The ticket's case: 12 new and 8 old questions, gain +16.7 and no loss look like a PASS."""
    result = table(pairs(gained=2, neither=10), pairs(both=8))
    agg = result["aggregates"]["demo:v2"]
    assert agg["new_gain"] >= 5 and agg["old_loss"] <= 2  # the old point-estimate gate passed this
    g = result["gate"]
    assert g["verdict"] == "INCONCLUSIVE" and g["passed"] is False
    gain, loss = check(result, "new_gain"), check(result, "old_loss")
    assert gain["result"] == loss["result"] == "INCONCLUSIVE"
    assert gain["interval"][0] < 5 <= gain["interval"][1] and loss["interval"][0] <= 2 < loss["interval"][1]
    assert "straddles the required 5: too few questions to tell" in gain["reason"]
    assert g["decide"] == (f"about {gain['questions_to_decide']} new-knowledge questions (now 12) and "
                           f"about {loss['questions_to_decide']} old-knowledge questions (now 8) would "
                           "decide it, if the effect and its spread stay as observed")


def test_an_estimate_on_the_threshold_says_no_count_of_questions_decides_it():
    result = table(pairs(gained=2, neither=38), pairs(both=200), GateConfig(max_old_loss=10))
    assert check(result, "new_gain")["value"] == 5.0 and result["gate"]["verdict"] == "INCONCLUSIVE"
    assert check(result, "new_gain")["questions_to_decide"] is None
    assert result["gate"]["decide"] == ("on the new-knowledge questions the estimate sits exactly on the "
                                        "threshold: more of them decide it only if the effect moves")


def test_an_estimate_just_off_the_threshold_says_more_questions_will_not_settle_it():
    # gain +5.1 against a threshold of 5: tens of thousands of questions, not advice to follow
    result = table(pairs(gained=2, neither=37), pairs(both=200), GateConfig(max_old_loss=10))
    gain = check(result, "new_gain")
    assert result["gate"]["verdict"] == "INCONCLUSIVE" and gain["questions_to_decide"] > gate.IMPRACTICAL_QUESTIONS
    assert result["gate"]["decide"] == (
        f"on the new-knowledge questions the estimate (+5.1) sits 0.13 from the threshold (5): about "
        f"{gain['questions_to_decide']:,} of them (now 39) would be needed, so more questions will not "
        "settle it in practice")


def test_an_estimate_past_the_largest_searched_count_is_not_called_exactly_on_the_threshold():
    # questions_to_decide gives None both on the threshold and past stats.MAX_QUESTIONS
    open_check = {"result": "INCONCLUSIVE", "name": "old_loss", "value": 2.004, "threshold": 2.0,
                  "questions": 45, "questions_to_decide": None}
    assert gate.decide_line([open_check]) == (
        "on the old-knowledge questions the estimate (+2.0) sits 0.004 from the threshold (2): more than "
        f"{stats.MAX_QUESTIONS:,} of them (now 45) would be needed, so more questions will not settle it in practice")


def test_the_estimated_question_count_decides_when_the_effect_holds():
    small = table(pairs(gained=3, neither=12), pairs(both=200), GateConfig(max_old_loss=10))
    assert small["gate"]["verdict"] == "INCONCLUSIVE"
    need = check(small, "new_gain")["questions_to_decide"]
    k = -(-need // 15)  # the same table, repeated until it has at least `need` questions
    big = table(pairs(gained=3 * k, neither=12 * k), pairs(both=200), GateConfig(max_old_loss=10))
    assert big["gate"]["verdict"] == "PASS", big["gate"]["reason"]


def test_fail_outranks_inconclusive_and_every_check_keeps_its_own_result():
    result = table(pairs(gained=2, neither=10), pairs(both=20, lost=30, neither=10))
    assert result["gate"]["verdict"] == "FAIL"
    assert [c["result"] for c in result["gate"]["checks"]] == ["PASS", "INCONCLUSIVE", "FAIL", "n/a"]
    assert result["gate"]["decide"] is None


def test_thresholds_are_judged_on_the_rounded_numbers_the_report_shows():
    t = (pairs(both=5, gained=45, neither=10), pairs(both=80, gained=10, neither=10))
    low = check(table(*t), "new_gain")["interval"][0]
    assert check(table(*t, GateConfig(min_new_gain=low)), "new_gain")["result"] == "PASS"
    assert check(table(*t, GateConfig(min_new_gain=low + 0.01)), "new_gain")["result"] == "INCONCLUSIVE"


def test_every_aggregate_has_an_interval_and_the_gate_records_its_method():
    result = table(pairs(both=5, gained=25), pairs(both=20, lost=2, neither=8))
    agg = result["aggregates"]["demo:v2"]
    for key in ("accuracy_new", "accuracy_old", "accuracy", "detail", "relevance",
                "new_gain", "old_loss", "retention"):
        iv = agg["intervals"][key]
        assert iv["low"] <= agg[key] <= iv["high"], key
    assert agg["intervals"]["grounding"] is None and result["aggregates"]["demo:v1"]["intervals"]["new_gain"] is None
    st = result["gate"]["statistics"]
    assert (st["confidence"], st["resamples"], st["seed"]) == (0.95, 10000, GateConfig().seed)
    assert st["questions"] == {"new": 30, "old": 30, "grounded": 0}
    assert "paired bootstrap over questions" in st["method"] and "Newcombe" in st["method"]
    assert st["mcnemar"]["old"] == {"questions": 30, "facts": 30, "gained": 0, "lost": 2,
                                    "p_value": 0.5}
    assert st["mcnemar"]["new"]["gained"] == 25 and st["mcnemar"]["new"]["p_value"] < 1e-6


def test_questions_without_facts_are_left_out_of_the_exact_test():
    result = table(pairs(gained=10), pairs(both=10), facts=False)
    assert result["gate"]["statistics"]["mcnemar"]["new"] == {
        "questions": 0, "facts": 0, "gained": 0, "lost": 0, "p_value": 1.0}


def test_a_higher_confidence_widens_the_interval_and_can_turn_pass_into_inconclusive():
    t = (pairs(both=5, gained=8, neither=17), pairs(both=200))
    at95 = table(*t, GateConfig(max_old_loss=10))
    at99 = table(*t, GateConfig(max_old_loss=10, confidence=0.99))
    assert at95["gate"]["verdict"] == "PASS" and at99["gate"]["verdict"] == "INCONCLUSIVE"
    assert check(at99, "new_gain")["interval"][0] < check(at95, "new_gain")["interval"][0]
    assert "99% interval" in check(at99, "new_gain")["reason"]


def test_add_check_settles_the_verdict_again():
    result = table(pairs(both=5, gained=45, neither=10), pairs(both=80, gained=10, neither=10))
    g = result["gate"]
    assert g["verdict"] == "PASS"
    gate.add_check(g, {"name": "extra", "label": "extra", "value": 1.0, "threshold": 2.0,
                       "passed": False, "reason": "extra check failed"})
    assert (g["verdict"], g["passed"], g["reason"]) == ("FAIL", False, "extra check failed")
    assert g["checks"][-1]["result"] == "FAIL"


_NUMBER = r"[+-]?\d+(?:\.\d+)?"


@pytest.mark.parametrize(("new", "old"), [
    (pairs(both=5, gained=45, neither=10), pairs(both=80, gained=10, neither=10)),  # old knowledge rose
    (pairs(gained=60), pairs(both=20, lost=30, neither=10)),  # lost
    (pairs(both=10, gained=3, lost=1, neither=20), pairs(both=12, gained=5, lost=1, neither=12)),
    (pairs(both=20, neither=40), pairs(both=60)),  # no change at all
])
def test_every_printed_estimate_lies_inside_its_printed_interval_with_one_sign(new, old):
    """'did not drop (+11.1 points) (95% interval -26.7 to +5.2)' once printed a gain beside the
    loss's interval: each reason states the interval's own quantity, and its number sits inside."""
    import re

    result = table(new, old)
    for name in ("new_gain", "old_loss"):
        c = check(result, name)
        point = float(re.search(rf"({_NUMBER}) points", c["reason"]).group(1))
        low, high = (float(x) for x in re.search(rf"interval ({_NUMBER}) to ({_NUMBER})", c["reason"]).groups())
        assert low <= point <= high, c["reason"]
        assert abs(point - c["value"]) < 0.051 and [low, high] == pytest.approx(c["interval"], abs=0.051), c



SAMPLED = sampling.Measure(sampling.SAMPLED, 8, 0.7, tuple(range(8, 16)), "compare.samples 8")


@pytest.mark.parametrize("shift", [-30.0, -5.0, 0.0, 12.5])
def test_sampled_estimates_lie_inside_their_printed_intervals_in_reasons_and_tag_lines(shift):
    """The same for the sampled measure: the check's reason and the terminal's tag line state
    the gain and loss of the shares the gate judged, inside their own intervals."""
    import re

    from loraship.evaluate import report_gate

    rng = np.random.default_rng(int(shift) + 100)
    cands = [Candidate("demo:v1", "v1"), Candidate("demo:v2", "v2", "v1")]
    scored: dict[str, list] = {"demo:v1": [], "demo:v2": []}
    for side, n in (("new", 30), ("old", 40)):
        parent = rng.integers(0, 9, n) * 12.5
        moved = np.clip(parent + (shift if side == "old" else 50.0) + rng.choice([-12.5, 0, 12.5], n), 0, 100)
        for i in range(n):
            for tag, share in (("demo:v1", parent[i]), ("demo:v2", moved[i])):
                scored[tag].append((Q(f"{side}{i}", side), {"accuracy": 100.0 * (share > 50), "sampled": float(share),
                                                             "detail": 50.0, "relevance": 10.0, "grounding": None}))
    per_tag = {tag: scoring.aggregate(rows) for tag, rows in scored.items()}
    gate.add_parent_deltas(cands, per_tag, scored, GateConfig(), SAMPLED)
    report = {"aggregates": per_tag, "gate": gate.judge(cands, per_tag, GateConfig(), SAMPLED)}
    for name in ("new_gain", "old_loss"):
        c = check(report, name)
        assert "sampled accuracy" in c["reason"]
        point = float(re.search(rf"({_NUMBER}) points", c["reason"]).group(1))
        low, high = (float(x) for x in re.search(rf"interval ({_NUMBER}) to ({_NUMBER})", c["reason"]).groups())
        assert low <= point <= high, c["reason"]
    line = report_gate.summary_lines(report)[1]
    for word in ("gain", "loss"):
        point, low, high = (float(x) for x in re.search(rf"{word} ({_NUMBER}) \[({_NUMBER}), ({_NUMBER})\]",
                                                          line).groups())
        assert low <= point <= high, line
