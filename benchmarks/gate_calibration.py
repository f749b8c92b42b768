"""The gate's error rates on the demo, from cached answers (benchmarks/bench_gate.py).

Every number goes through the gate's own machinery: stats.paired_difference for the interval
of a pair (with `samples` = k for the sampled measure) and gate.decide for the verdict of a
check, so what is calibrated here is what `loraship compare` runs.

- null pairs (v1 of seed s, v1 of seed s+1): the false-FAIL rate of the old-knowledge check
  is the share judged FAIL (lost more than the allowed points). Pairs share a model with
  their neighbour, so they are not quite independent; the Wilson interval over pairs is
  stated as it is. 0 FAILs of n pairs bounds the rate below 5% only from n = 73 on (Wilson's
  upper bound 3.84 / (n + 3.84)), so `null_all` also judges every ordered pair of distinct v1
  seeds (30 of 6 v1s): more judgements, all sharing models, so its interval is optimistic.
- forget pairs (v1, v2 without replay): the power, the share the old-knowledge check FAILs
  (a false PASS is a PASS of one of these).
- default pairs (v1, v2 with the shipped increment defaults): the whole verdict (the new-gain
  check at gate.min_new_gain with the old-loss check at each threshold): PASS, FAIL or
  INCONCLUSIVE, and how wide the old-loss interval was.
- retrain (one version on both batches from the base) against the incremental default v2 of
  the same seed: old and new accuracy, incremental minus retrain, per question averaged over
  the seeds (each seed a sample, as in forgetting_stats), with the gate's paired interval;
  and the increment's training time, optimizer steps and tokens as a share of the retrain's.
  The goal (the issue): within RETRAIN_MARGIN points on both at no more than
  RETRAIN_TIME_SHARE of its training time.
- recipes (v2 from the same v1 with another increment recipe): each against the same retrain,
  as the default is, and judged against its own v1 by the whole gate at k = max(K_LIST) and the
  shipped max_old_loss: what a user of that recipe would see.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from loraship.config import GateConfig
from loraship.evaluate import stats
from loraship.evaluate.gate import FAIL, INCONCLUSIVE, PASS, decide, verdict_of

K_LIST = (1, 2, 4, 8)  # sampled measures evaluated (the first k of the cached samples)
LOSS_THRESHOLDS = (2.0, 5.0, 10.0)  # gate.max_old_loss values evaluated
RETRAIN_MARGIN, RETRAIN_TIME_SHARE = 5.0, 0.6


def _scores(answers: dict, k: int, ids: list[str]) -> list[float]:
    if k == 0:
        return [float(answers["greedy"][q]) for q in ids]
    return [float(np.mean(answers["samples"][q][:k])) for q in ids]


def _interval(parent: dict, cand: dict, ids: list[str], k: int, gate: GateConfig) -> stats.Interval:
    return stats.paired_difference(_scores(parent, k, ids), _scores(cand, k, ids), gate.confidence,
                                   gate.resamples, gate.seed, samples=k)


def _rounded(iv: stats.Interval) -> list[float]:
    """[estimate, low, high] to 0.1 point, as the JSON keeps an interval."""
    return [round(iv.estimate, 1), round(iv.low, 1), round(iv.high, 1)]


def _signed(t: list[float]) -> str:
    """A kept [estimate, low, high] as the tables print it: +1.0 [-2.0, +4.0]."""
    return f"{t[0]:+.1f} [{t[1]:+.1f}, {t[2]:+.1f}]"


def _rate(hits: int, n: int, confidence: float) -> dict:
    lo, hi = stats.wilson(hits, n, confidence)
    return {"hits": hits, "n": n, "rate": round(100 * hits / n, 1), "low": round(100 * lo, 1),
            "high": round(100 * hi, 1)}


def _pairs(models: dict, seeds: list[int]) -> dict[str, list[tuple[str, str]]]:
    return {"null": [(f"v1/{a}", f"v1/{b}") for a, b in zip(seeds, seeds[1:])],
            "null_all": [(f"v1/{a}", f"v1/{b}") for a in seeds for b in seeds if a != b and f"v1/{b}" in models],
            "forget": [(f"v1/{s}", f"forget/{s}") for s in seeds if f"forget/{s}" in models],
            "default": [(f"v1/{s}", f"default/{s}") for s in seeds if f"default/{s}" in models]}


def _measure_rows(models: dict, pairs: dict, ids: dict, k: int, gate: GateConfig) -> list[dict]:
    """One row per threshold for one measure (k = 0: greedy)."""
    loss = {kind: [_interval(models[p]["answers"], models[c]["answers"], ids["old"], k, gate).negated()
                   for p, c in ps] for kind, ps in pairs.items()}
    gain = [_interval(models[p]["answers"], models[c]["answers"], ids["new"], k, gate) for p, c in pairs["default"]]
    gains = [decide(g.low, g.high, gate.min_new_gain, True) for g in gain]
    rows = []
    for t in LOSS_THRESHOLDS:
        judged = {kind: [decide(iv.low, iv.high, t, False) for iv in ivs] for kind, ivs in loss.items()}
        whole = [verdict_of([{"result": g}, {"result": o}]) for g, o in zip(gains, judged["default"])]
        # what it would take: old questions that would decide each undecided default pair (the gate's estimate)
        need = [stats.questions_to_decide(iv, t, False, gate.confidence)
                for iv, v in zip(loss["default"], judged["default"]) if v == INCONCLUSIVE]
        rows.append({
            "measure": "greedy" if k == 0 else f"sampled k={k}", "samples": k, "max_old_loss": t,
            "null_false_fail": _rate(judged["null"].count(FAIL), len(judged["null"]), gate.confidence),
            "null_all_false_fail": _rate(judged["null_all"].count(FAIL), len(judged["null_all"]), gate.confidence),
            "forget_fail": _rate(judged["forget"].count(FAIL), len(judged["forget"]), gate.confidence),
            "forget_false_pass": _rate(judged["forget"].count(PASS), len(judged["forget"]), gate.confidence),
            "default_verdicts": {v: whole.count(v) for v in (PASS, FAIL, INCONCLUSIVE)},
            "default_old_loss": {v: judged["default"].count(v) for v in (PASS, FAIL, INCONCLUSIVE)},
            "default_undecided_questions_to_decide": need,
        })
    widths = {kind: round(float(np.mean([(iv.high - iv.low) / 2 for iv in ivs])), 1) for kind, ivs in loss.items()}
    estimates = {kind: [round(iv.estimate, 1) for iv in ivs] for kind, ivs in loss.items()}
    for row in rows:
        row["old_loss_half_width"] = widths
        row["old_loss_estimates"] = estimates
        row["default_new_gain"] = [_rounded(g) for g in gain]
    return rows


def _levels(models: dict, ids: dict, k_max: int) -> dict[str, Any]:
    """Mean old / new accuracy per kind of model, greedy and sampled at k_max."""
    out: dict[str, Any] = {}
    for kind in dict.fromkeys(m.split("/")[0] for m in models):  # in the order they were trained
        keys = [m for m in models if m.startswith(kind + "/")]
        out[kind] = {f"{side}_{name}": round(float(np.mean([np.mean(_scores(models[m]["answers"], k, ids[side]))
                                                            for m in keys])), 1)
                     for side in ("old", "new") for name, k in (("greedy", 0), ("sampled", k_max))}
        out[kind]["models"] = len(keys)
        out[kind]["train_s"] = round(float(np.mean([models[m]["train_s"] for m in keys])), 1)
        out[kind]["answer_s"] = round(float(np.mean([models[m]["answers"]["answer_s"] for m in keys])), 1)
    return out


def _mean(models: dict, keys: list[str], field: str) -> float:
    return float(np.mean([models[m][field] for m in keys]))


def retrain_comparison(models: dict, ids: dict, seeds: list[int], gate: GateConfig,
                       kind: str = "default") -> dict | None:
    """An incremental v2 (`kind`: the default or a recipe) against a retrain on both batches,
    seed by seed (see above)."""
    seeds = [s for s in seeds if f"retrain/{s}" in models and f"{kind}/{s}" in models]
    if not seeds:
        return None
    ret, inc = [f"retrain/{s}" for s in seeds], [f"{kind}/{s}" for s in seeds]
    out: dict[str, Any] = {"seeds": len(seeds)}
    for name, k in (("greedy", 0), ("sampled", max(K_LIST))):
        draws = (k or 1) * len(seeds)
        for side in ("old", "new"):
            a, b = (np.mean([_scores(models[m]["answers"], k, ids[side]) for m in arm], axis=0) for arm in (ret, inc))
            iv = stats.paired_difference(a, b, gate.confidence, gate.resamples, gate.seed,
                                         samples=draws if draws > 1 else 0)
            out[f"{name}_{side}"] = {"retrain": round(float(a.mean()), 1), "incremental": round(float(b.mean()), 1),
                                     "difference": _rounded(iv)}
    for field in ("train_s", "steps", "train_tokens"):
        if all(models[m].get(field) for m in ret + inc):
            out[f"{field}_retrain"] = round(_mean(models, ret, field), 1)
            out[f"{field}_incremental"] = round(_mean(models, inc, field), 1)
            out[f"{field}_share"] = round(_mean(models, inc, field) / _mean(models, ret, field), 3)
    sampled = [out["sampled_old"]["difference"], out["sampled_new"]["difference"]]
    share = out.get("train_s_share")
    out["goal_met"] = all(d[0] >= -RETRAIN_MARGIN for d in sampled) and share is not None and share <= RETRAIN_TIME_SHARE
    out["goal_met_at_lower_bound"] = out["goal_met"] and all(d[1] >= -RETRAIN_MARGIN for d in sampled)
    return out


def recipe_verdicts(models: dict, ids: dict, seeds: list[int], gate: GateConfig, kind: str) -> dict:
    """A recipe's v2s judged against their own v1s by the whole gate, as `loraship compare` would
    at the shipped settings (k = max(K_LIST) samples, gate.max_old_loss, gate.min_new_gain)."""
    k = max(K_LIST)
    out: dict[str, Any] = {"max_old_loss": gate.max_old_loss, "samples": k, "seeds": [], "verdicts": [],
                           "old_loss": [], "new_gain": []}
    for s in seeds:
        if f"{kind}/{s}" not in models:
            continue
        parent, cand = models[f"v1/{s}"]["answers"], models[f"{kind}/{s}"]["answers"]
        loss = _interval(parent, cand, ids["old"], k, gate).negated()
        gain = _interval(parent, cand, ids["new"], k, gate)
        out["seeds"].append(s)
        out["verdicts"].append(verdict_of([{"result": decide(gain.low, gain.high, gate.min_new_gain, True)},
                                           {"result": decide(loss.low, loss.high, gate.max_old_loss, False)}]))
        out["old_loss"].append(_rounded(loss))
        out["new_gain"].append(_rounded(gain))
    return out


def replay_coverage(models: dict, ids: dict, seeds: list[int], gate: GateConfig, kind: str) -> dict | None:
    """A recipe's old-fact loss against its own v1 (sampled, k = max(K_LIST)), split by whether its
    replay set held a row teaching the fact (`replayed` in the model record); each seed's
    questions pooled as pairs of their own."""
    k = max(K_LIST)
    groups: dict[str, tuple[list[float], list[float]]] = {"replayed": ([], []), "not_replayed": ([], [])}
    for s in seeds:
        cand = models.get(f"{kind}/{s}")
        if not cand or "replayed" not in cand:
            continue
        parent, replayed = models[f"v1/{s}"]["answers"], set(cand["replayed"])
        for q in ids["old"]:
            p, c = groups["replayed" if q in replayed else "not_replayed"]
            p.extend(_scores(parent, k, [q]))
            c.extend(_scores(cand["answers"], k, [q]))
    if not any(p for p, _ in groups.values()):
        return None
    out: dict[str, Any] = {}
    for name, (p, c) in groups.items():
        if p:
            iv = stats.paired_difference(p, c, gate.confidence, gate.resamples, gate.seed, samples=k).negated()
            out[name] = {"pairs": len(p), "old_loss": _rounded(iv)}
    return out


def calibrate(models: dict, sides: dict[str, str], seeds: list[int], gate: GateConfig,
              recipes: tuple[str, ...] | list[str] = ()) -> dict:
    ids = {side: [q for q, s in sides.items() if s == side] for side in ("old", "new")}
    pairs = _pairs(models, seeds)
    rows = [r for k in (0, *K_LIST) for r in _measure_rows(models, pairs, ids, k, gate)]
    return {"seeds": seeds, "questions": {side: len(v) for side, v in ids.items()},
            "pairs": {kind: len(v) for kind, v in pairs.items()}, "gate": {
                "confidence": gate.confidence, "min_new_gain": gate.min_new_gain, "resamples": gate.resamples},
            "levels": _levels(models, ids, max(K_LIST)), "rows": rows,
            "retrain": retrain_comparison(models, ids, seeds, gate),
            "recipes": {name: {"vs_retrain": retrain_comparison(models, ids, seeds, gate, name),
                               "gate": recipe_verdicts(models, ids, seeds, gate, name),
                               "coverage": replay_coverage(models, ids, seeds, gate, name)}
                        for name in ("default", *recipes)},
            "models": {k: {**{kk: vv for kk, vv in m.items() if kk not in ("answers", "replayed")},
                           **({"replayed_old_questions": len(m["replayed"])} if "replayed" in m else {})}
                       for k, m in models.items()}}


def _r(rate: dict) -> str:
    return f"{rate['hits']}/{rate['n']} ({rate['rate']:.0f}% [{rate['low']:.0f}, {rate['high']:.0f}])"


def table(report: dict) -> str:
    head = ("| measure | max_old_loss | null judged FAIL (false-FAIL) | all v1 pairs judged FAIL | forget judged "
            "FAIL (power) | forget PASS (false-PASS) | default v2 verdict P/F/I | old questions that would decide "
            "the undecided | old-loss half-width: null / forget / default |")
    lines = [head, "|---|---:|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        d, w = r["default_verdicts"], r["old_loss_half_width"]
        need = sorted(r["default_undecided_questions_to_decide"], key=lambda n: n if n is not None else 1e12)
        need_text = ", ".join("never" if n is None else f"{n:,}" for n in need) or "-"
        lines.append(f"| {r['measure']} | {r['max_old_loss']:g} | {_r(r['null_false_fail'])} | "
                     f"{_r(r['null_all_false_fail'])} | "
                     f"{_r(r['forget_fail'])} | {_r(r['forget_false_pass'])} | "
                     f"{d[PASS]}/{d[FAIL]}/{d[INCONCLUSIVE]} | {need_text} | {w['null']} / {w['forget']} / "
                     f"{w['default']} |")
    lv = report["levels"]
    lines += ["", "| models | count | old greedy | old sampled | new greedy | new sampled | train s | answer s |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for kind, v in lv.items():
        lines.append(f"| {kind} | {v['models']} | {v['old_greedy']} | {v['old_sampled']} | {v['new_greedy']} | "
                     f"{v['new_sampled']} | {v['train_s']} | {v['answer_s']} |")
    if rt := report.get("retrain"):
        lines += ["", f"| incremental v2 vs retrain on both batches ({rt['seeds']} seeds) | retrain | incremental | "
                  "incremental - retrain [interval] |", "|---|---:|---:|---|"]
        for key in ("sampled_old", "sampled_new", "greedy_old", "greedy_new"):
            d = rt[key]["difference"]
            lines.append(f"| {key.replace('_', ' ')} facts | {rt[key]['retrain']} | {rt[key]['incremental']} | "
                         f"{_signed(d)} |")
        for field, label in (("train_s", "training s"), ("steps", "optimizer steps"), ("train_tokens", "tokens")):
            if f"{field}_share" in rt:
                lines.append(f"| {label} | {rt[f'{field}_retrain']:g} | {rt[f'{field}_incremental']:g} | "
                             f"{rt[f'{field}_share']:.2f}x |")
    lines += _recipes_table(report.get("recipes") or {})
    return "\n".join(lines)


def _recipes_table(recipes: dict) -> list[str]:
    """Increment recipes on the retrain seeds: against the retrain, and the gate's verdict on each."""
    rows = {name: r for name, r in recipes.items() if r["vs_retrain"]}
    if len(rows) < 2:  # the default alone is the table above
        return []
    g0 = next(iter(rows.values()))["gate"]
    lines = ["", "| increment recipe (retrain seeds) | old: v2 - retrain, sampled | new: v2 - retrain, sampled | "
             f"training s / retrain | steps / retrain | old-fact loss vs own v1: facts replayed / not (pairs) | "
             f"gate vs own v1 (k={g0['samples']}, max_old_loss {g0['max_old_loss']:g}): old-fact loss per seed |",
             "|---|---|---|---:|---:|---|---|"]
    for name, r in rows.items():
        rt, g = r["vs_retrain"], r["gate"]
        old, new = rt["sampled_old"]["difference"], rt["sampled_new"]["difference"]
        judged = ", ".join(f"{v} {_signed(lo)}" for v, lo in zip(g["verdicts"], g["old_loss"]))
        lines.append(f"| {name} | {_signed(old)} | {_signed(new)} | {rt.get('train_s_share', float('nan')):.2f}x | "
                     f"{rt.get('steps_share', float('nan')):.2f}x | {_coverage_cell(r.get('coverage'))} | {judged} |")
    return lines


def _coverage_cell(coverage: dict | None) -> str:
    if not coverage:
        return "-"
    return " / ".join(f"{_signed(c['old_loss'])} ({c['pairs']})" if (c := coverage.get(name)) else "-"
                      for name in ("replayed", "not_replayed"))
