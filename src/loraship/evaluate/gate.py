"""The gate: is the newest candidate measurably better than its parent, given how few questions there are?

Per-question scores of the comparison's measure (sampling.py: the share of k sampled
answers that are right, or the greedy answer's accuracy) are paired between the candidate
and its parent (same questions, same prompts, same seeds), and every aggregate gets an
interval at `gate.confidence` (stats.py: paired bootstrap over questions, widened to a
score interval where that is wider). Each check then has three outcomes, decided on the
numbers the report shows (2 decimals):

- PASS when the whole interval clears the threshold (lower bound of the new-knowledge
  gain >= min_new_gain; upper bound of the old-knowledge loss <= max_old_loss; lower
  bound of mean grounding >= min_grounding);
- FAIL when the whole interval is on the wrong side (upper bound of the gain below
  min_new_gain; lower bound of the loss above max_old_loss; ...);
- INCONCLUSIVE when the interval straddles the threshold: too few questions to tell,
  with an estimate of how many would decide it (stats.questions_to_decide).

The verdict is FAIL if any check fails, else INCONCLUSIVE if any is inconclusive, else
PASS. Something not measured at all (no parent compared, no question of a kind) fails.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Protocol

import numpy as np

from loraship.config import GateConfig
from loraship.evaluate import sampling, stats
from loraship.evaluate.candidate import Candidate
from loraship.evaluate.scoring import retention
from loraship.paths import parse_version_id

PASS, FAIL, INCONCLUSIVE, NOT_APPLICABLE = "PASS", "FAIL", "INCONCLUSIVE", "n/a"
# aggregate -> (per-answer score, knowledge side or None for all questions)
MEANS = {
    "accuracy_new": ("accuracy", "new"),
    "accuracy_old": ("accuracy", "old"),
    "accuracy": ("accuracy", None),
    "sampled_new": ("sampled", "new"),
    "sampled_old": ("sampled", "old"),
    "sampled": ("sampled", None),
    "detail": ("detail", None),
    "relevance": ("relevance", None),
    "grounding": ("grounding", None),
}


class ScoredQuestion(Protocol):
    id: str
    knowledge: str


Scored = list[tuple[ScoredQuestion, dict[str, Any]]]
GREEDY = sampling.Measure(sampling.GREEDY, 0, None, (), "greedy answers")


def method(gate: GateConfig, measure: sampling.Measure = GREEDY) -> str:
    """One sentence naming the measure and how the intervals were made, for every report."""
    score = ("for a difference of sampled shares Student's t on the observed spread of the per-question "
             "differences (same seeds on both sides), never below one sample on one question; Wilson for a mean"
             if measure.samples else
             "Wilson for a mean, Newcombe's paired hybrid score interval for a difference")
    return (f"gate measure: {measure.describe()}; {_pct(gate.confidence)} intervals: paired bootstrap over "
            f"questions (percentile, {gate.resamples} resamples, seed {gate.seed}), widened to the score "
            f"interval where that is wider ({score}); exact McNemar test on the greedy answers' per-fact "
            "right/wrong")


def _pct(confidence: float) -> str:
    return f"{round(confidence * 100, 2):g}%"


# ---------------------------------------------------------------- intervals


def _scores(scored: Scored, key: str, knowledge: str | None) -> dict[str, float]:
    return {q.id: float(s[key]) for q, s in scored
            if (knowledge is None or q.knowledge == knowledge) and s.get(key) is not None}


def _mean_intervals(scored: Scored, gate: GateConfig) -> dict[str, dict | None]:
    out: dict[str, dict | None] = {}
    for name, (key, knowledge) in MEANS.items():
        values = list(_scores(scored, key, knowledge).values())
        out[name] = (stats.mean_interval(values, gate.confidence, gate.resamples, gate.seed).to_json()
                     if values else None)
    return out


def _paired(parent: Scored, cand: Scored, knowledge: str, key: str) -> tuple[list[float], list[float]]:
    p, c = _scores(parent, key, knowledge), _scores(cand, key, knowledge)
    ids = [qid for qid in c if qid in p]
    return [p[i] for i in ids], [c[i] for i in ids]


def _change(parent: Scored, cand: Scored, knowledge: str, gate: GateConfig,
            measure: sampling.Measure) -> stats.Interval | None:
    p, c = _paired(parent, cand, knowledge, measure.key)
    return (stats.paired_difference(p, c, gate.confidence, gate.resamples, gate.seed, measure.samples)
            if p else None)


def _retention_interval(loss: dict | None, parent_old: float | None) -> dict | None:
    """Retention is 100 * (parent - loss) / parent: its bounds follow from the loss's."""
    if loss is None or parent_old is None:
        return None
    if parent_old <= 0:
        return {"low": 100.0, "high": 100.0, "derived_from": "old_loss"}
    low, high = (min(100.0, max(0.0, 100.0 * (parent_old - x) / parent_old))
                 for x in (loss["high"], loss["low"]))
    return {"low": round(low, 2), "high": round(high, 2), "derived_from": "old_loss"}


def fact_pairs(parent: Scored, cand: Scored, knowledge: str) -> dict[str, Any]:
    """Exact McNemar on per-fact right/wrong: each fact of each question, parent vs candidate.

    Questions scored by token F1 (no facts) have no right/wrong and are left out; facts of
    one question are not independent, so this tests "did anything change", while the
    gate's thresholds are judged on the per-question intervals.
    """
    p = {q.id: s.get("facts_found") for q, s in parent if q.knowledge == knowledge}
    gained = lost = pairs = questions = 0
    for q, s in cand:
        before, after = p.get(q.id), s.get("facts_found")
        if q.knowledge != knowledge or before is None or after is None:
            continue
        questions += 1
        for was, now in zip(before, after, strict=True):
            pairs += 1
            gained += (not was) and now
            lost += was and not now
    return {"questions": questions, "facts": pairs, "gained": gained, "lost": lost,
            "p_value": round(stats.mcnemar_exact(gained, lost), 6)}


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(a - b, 2)


def level_keys(measure_name: str) -> tuple[str, str]:
    """The aggregates holding a measure's new and old levels."""
    prefix = "sampled" if measure_name == sampling.SAMPLED else "accuracy"
    return f"{prefix}_new", f"{prefix}_old"


def add_parent_deltas(candidates: list[Candidate], per_tag: dict[str, dict],
                      scored: dict[str, Scored], gate: GateConfig,
                      measure: sampling.Measure = GREEDY) -> None:
    """Intervals for every aggregate; gain, loss, retention (with intervals) against the parent,
    all on the measure's per-question scores."""
    versions = {c.version: c for c in candidates}
    new, old = level_keys(measure.name)
    for c in candidates:
        agg = per_tag[c.tag]
        agg["measure"] = measure.name
        agg["intervals"] = _mean_intervals(scored[c.tag], gate)
        p = versions.get(c.parent) if c.parent else None
        pa = per_tag[p.tag] if p else None
        agg["parent_tag"] = p.tag if p else None
        agg["new_gain"] = _diff(agg.get(new), pa and pa.get(new))
        agg["old_loss"] = _diff(pa and pa.get(old), agg.get(old))
        r = retention(agg.get(old), pa.get(old)) if pa else None
        agg["retention"] = None if r is None else round(r, 2)
        gain = _change(scored[p.tag], scored[c.tag], "new", gate, measure) if p else None
        change = _change(scored[p.tag], scored[c.tag], "old", gate, measure) if p else None
        agg["intervals"]["new_gain"] = gain.to_json() if gain else None
        agg["intervals"]["old_loss"] = change.negated().to_json() if change else None
        agg["intervals"]["retention"] = _retention_interval(
            agg["intervals"]["old_loss"], pa and pa.get(old))
        agg["mcnemar"] = ({k: fact_pairs(scored[p.tag], scored[c.tag], k) for k in ("new", "old")}
                          if p else None)


# ---------------------------------------------------------------- checks


def _check(name: str, label: str, value: Any, threshold: Any, result: str, reason: str,
           interval: dict | None = None, questions: int | None = None,
           to_decide: int | None = None) -> dict:
    return {"name": name, "label": label, "value": value,
            "interval": [interval["low"], interval["high"]] if interval else None,
            "threshold": threshold, "result": result,
            "passed": None if result == NOT_APPLICABLE else result == PASS,
            "reason": reason, "questions": questions, "questions_to_decide": to_decide}


def _not_measured(name: str, label: str, threshold: float, has_parent: bool, knowledge: str) -> dict:
    why = ("no parent compared" if not has_parent
           else f"no question has knowledge: {knowledge}; add some to the question set")
    return _check(name, label, None, threshold, FAIL, f"not measured: {why}")


def decide(low: float, high: float, threshold: float, higher_is_better: bool) -> str:
    """PASS when the whole interval clears the threshold, FAIL when it is all on the wrong side."""
    if higher_is_better:
        return PASS if low >= threshold else FAIL if high < threshold else INCONCLUSIVE
    return PASS if high <= threshold else FAIL if low > threshold else INCONCLUSIVE


def _bounded(name: str, label: str, what: str, value: float, interval: dict, threshold: float,
             higher_is_better: bool, n: int, gate: GateConfig) -> dict:
    """A threshold check on an interval; `what` describes the estimate, e.g. 'gain +12.0 points'."""
    low, high = interval["low"], interval["high"]
    result = decide(low, high, threshold, higher_is_better)
    need = (stats.questions_to_decide(stats.Interval.from_json(interval), threshold,
                                      higher_is_better, gate.confidence)
            if result == INCONCLUSIVE else None)
    f = "{:+.1f}" if name in ("new_gain", "old_loss") else "{:.1f}"  # changes carry a sign, levels not
    ci = f"{_pct(gate.confidence)} interval {f.format(low)} to {f.format(high)}"
    kind = "required" if higher_is_better else "allowed"
    if result == PASS:
        bound = f"{'lower' if higher_is_better else 'upper'} bound"
        tail = f"even its {bound} is {'at least' if higher_is_better else 'within'} the {kind} {threshold:g}"
    elif result == FAIL:
        bound = f"{'upper' if higher_is_better else 'lower'} bound"
        tail = f"even its {bound} is {'below' if higher_is_better else 'above'} the {kind} {threshold:g}"
    else:
        tail = f"the interval straddles the {kind} {threshold:g}: too few questions to tell"
    return _check(name, label, value, threshold, result, f"{what} ({ci}); {tail}", interval, n, need)


def _what(agg: dict) -> str:
    return "sampled accuracy" if agg.get("measure") == sampling.SAMPLED else "accuracy"


def _gain_check(agg: dict, gate: GateConfig, has_parent: bool) -> dict:
    label, v = "new-knowledge accuracy gain over the parent", agg["new_gain"]
    iv = agg.get("intervals", {}).get("new_gain")
    if not has_parent or v is None or iv is None:
        return _not_measured("new_gain", label, gate.min_new_gain, has_parent, "new")
    what = f"new-knowledge {_what(agg)} {v:+.1f} points over the parent"
    return _bounded("new_gain", label, what, v, iv, gate.min_new_gain, True, agg["n_new"], gate)


def _loss_check(agg: dict, gate: GateConfig, has_parent: bool) -> dict:
    label, v = "old-knowledge accuracy lost against the parent", agg["old_loss"]
    iv = agg.get("intervals", {}).get("old_loss")
    if not has_parent or v is None or iv is None:
        return _not_measured("old_loss", label, gate.max_old_loss, has_parent, "old")
    # The estimate is stated as the quantity its interval bounds (the loss), with the same sign,
    # so a rise reads "lost -11.1 points (95% interval -26.7 to +5.2)", never "+11.1" beside it.
    what = (f"old-knowledge {_what(agg)} lost {v:+.1f} points" if v > 0
            else f"old-knowledge {_what(agg)} did not drop: lost {v:+.1f} points")
    return _bounded("old_loss", label, what, v, iv, gate.max_old_loss, False, agg["n_old"], gate)


def _grounding_check(agg: dict, gate: GateConfig) -> dict:
    label, threshold = "mean grounding where questions cite sources", round(gate.min_grounding * 100, 2)
    v, iv = agg["grounding"], agg.get("intervals", {}).get("grounding")
    if not agg["n_grounded"] or v is None or iv is None:
        return _check("grounding", label, None, threshold, NOT_APPLICABLE,
                      "not applicable: no question cites sources")
    what = f"answers cite {v:.1f}% of their sources"
    return _bounded("grounding", label, what, v, iv, threshold, True, agg["n_grounded"], gate)


def _parent_check(newest: Candidate, parent: Candidate | None) -> dict:
    if parent:
        return _check("parent_compared", "parent compared", parent.tag, None, PASS,
                      f"measured against {parent.tag}")
    wanted = (f"its parent {newest.parent} is not among the candidates" if newest.parent
              else "it has no parent")
    return _check("parent_compared", "parent compared", None, None, FAIL,
                  f"no parent compared: {wanted}; a candidate must be measured against something")


# ---------------------------------------------------------------- verdict

_SIDES = {"new_gain": "new-knowledge questions", "old_loss": "old-knowledge questions",
          "grounding": "questions that cite sources"}


# More questions than any written question set holds: say the estimate is on the line instead
# of giving a count that reads like advice.
IMPRACTICAL_QUESTIONS = 10_000


def decide_line(checks: list[dict]) -> str | None:
    """'about 120 old-knowledge questions (now 30) would decide it', for the open checks."""
    counted, stuck = [], []
    for c in checks:
        if c["result"] != INCONCLUSIVE:
            continue
        side = _SIDES.get(c["name"], "questions")
        need, off = c["questions_to_decide"], abs(c["value"] - c["threshold"])
        if need is not None and need <= IMPRACTICAL_QUESTIONS:
            counted.append(f"about {need} {side} (now {c['questions']})")
        elif off < 1e-9:
            stuck.append(f"on the {side} the estimate sits exactly on the threshold: more of them "
                         "decide it only if the effect moves")
        else:  # questions_to_decide also gives None past stats.MAX_QUESTIONS
            count = f"about {need:,}" if need is not None else f"more than {stats.MAX_QUESTIONS:,}"
            stuck.append(f"on the {side} the estimate ({c['value']:+.1f}) sits {off:.2g} from the threshold "
                         f"({c['threshold']:g}): {count} of them (now {c['questions']}) would be needed, so more "
                         "questions will not settle it in practice")
    parts = ([" and ".join(counted) + " would decide it, if the effect and its spread stay as observed"]
             if counted else []) + stuck
    return "; ".join(parts) or None


def verdict_of(checks: list[dict]) -> str:
    results = {c["result"] for c in checks}
    return FAIL if FAIL in results else INCONCLUSIVE if INCONCLUSIVE in results else PASS


def _settle(verdict: dict) -> None:
    """verdict, passed, reason and decide from the checks (again after a check is added)."""
    checks = verdict["checks"]
    for c in checks:  # a check made elsewhere may only say passed True / False / None
        c.setdefault("result", {True: PASS, False: FAIL, None: NOT_APPLICABLE}[c.get("passed")])
    result = verdict_of(checks)
    first = next((c for c in checks if c["result"] == result), None)
    confidence = _pct(verdict["statistics"]["confidence"])
    verdict.update(verdict=result, passed=result == PASS,
                   reason=(f"all checks passed at {confidence} confidence" if result == PASS
                           else first["reason"]),
                   decide=decide_line(checks) if result == INCONCLUSIVE else None)


def add_check(verdict: dict, check: dict | None) -> None:
    """Append a check made outside this module (e.g. arms.gain_check) and settle the verdict again."""
    if check is not None:
        verdict["checks"].append(check)
        _settle(verdict)


def judge(candidates: list[Candidate], per_tag: dict[str, dict], gate: GateConfig,
          measure: sampling.Measure = GREEDY) -> dict:
    """The verdict for the newest candidate (highest version number) against its parent."""
    newest = max(candidates, key=lambda c: parse_version_id(c.version))
    parent = {c.version: c for c in candidates}.get(newest.parent) if newest.parent else None
    agg = per_tag[newest.tag]
    verdict = {
        "candidate": newest.tag,
        "version": newest.version,
        "parent": parent.tag if parent else None,
        "verdict": None, "passed": None, "reason": None, "decide": None,
        "checks": [_parent_check(newest, parent), _gain_check(agg, gate, bool(parent)),
                   _loss_check(agg, gate, bool(parent)), _grounding_check(agg, gate)],
        "thresholds": asdict(gate),
        "statistics": {
            "method": method(gate, measure), "measure": measure.record(),
            "confidence": gate.confidence, "resamples": gate.resamples,
            "seed": gate.seed, "numpy": np.__version__,
            "questions": {"new": agg["n_new"], "old": agg["n_old"], "grounded": agg["n_grounded"]},
            "mcnemar": agg.get("mcnemar"),
        },
    }
    _settle(verdict)
    return verdict
