"""Aggregates, intervals, the table and the chart of `make bench-forgetting`.

Each record is one cell x seed: {"cell", "seed", "replay", "outcomes": {question id: 0..100}}.
The intervals are the gate's own (evaluate/stats.py), so the default increment method is
chosen on the same kind of evidence the gate demands of a version: a cell's score for a
question is its mean over the seeds (each seed one draw of training, as each sample is one
draw of an answer), levels get stats.mean_interval, and every comparison between two cells
(gain over the base, change against v1, "vs replay", "vs_base_replay_ratio") is
stats.paired_difference over the same questions with samples = the number of seeds (Student's
t on the paired per-question differences; Newcombe's interval for a single seed). Retention is
v2's old-fact accuracy relative to its own v1, with bounds derived from the interval of the
old-fact change against v1, as the gate derives retention from the old-knowledge loss. Old and
new questions are kept apart.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from loraship.evaluate import stats

GOAL_RETENTION = 90.0  # v2 keeps at least 90% of v1's old-fact accuracy
GOAL_GAIN = 30.0  # and answers at least 30 points more new facts than the base
RESAMPLES = 4000
SEED = 7
CONFIDENCE = 0.95


def _cells(records: list[dict]) -> list[str]:
    return list(dict.fromkeys(r["cell"] for r in records))


def _scores(records: list[dict], cell: str, seeds: list[int], ids: list[str]) -> np.ndarray | None:
    """Per question, the cell's mean outcome over the seeds; None until every seed has the cell."""
    by_seed = {r["seed"]: r["outcomes"] for r in records if r["cell"] == cell}
    if any(s not in by_seed for s in seeds):
        return None
    return np.array([[by_seed[s][q] for q in ids] for s in seeds], dtype=float).mean(axis=0)


def _level(scores: np.ndarray) -> dict:
    iv = stats.mean_interval(scores, CONFIDENCE, RESAMPLES, SEED)
    return {"mean": round(iv.estimate, 1), "lo": round(iv.low, 1), "hi": round(iv.high, 1)}


def _change_iv(ref: np.ndarray, cell: np.ndarray, n_seeds: int) -> stats.Interval:
    return stats.paired_difference(ref, cell, CONFIDENCE, RESAMPLES, SEED, samples=n_seeds if n_seeds > 1 else 0)


def _change(ref: np.ndarray, cell: np.ndarray, n_seeds: int) -> dict:
    iv = _change_iv(ref, cell, n_seeds)
    return {"mean": round(iv.estimate, 1), "lo": round(iv.low, 1), "hi": round(iv.high, 1)}


def _paired(s: dict, ref: dict, n_seeds: int) -> dict:
    """A cell's old and new accuracy minus another's, on the same seeds and questions."""
    return {k: _change(ref[k], s[k], n_seeds) for k in ("old", "new")}


def _retention(cell_old: np.ndarray, v1_old: np.ndarray, n_seeds: int) -> dict:
    """100 x cell / v1 on old facts; its bounds are the old-fact change's, over v1's mean."""
    iv, base = _change_iv(v1_old, cell_old, n_seeds), max(float(v1_old.mean()), 1e-9)
    return {k: round(100 * (base + x) / base, 1) for k, x in (("mean", iv.estimate), ("lo", iv.low), ("hi", iv.high))}


def summarise(records: list[dict], sides: dict[str, str]) -> dict:
    """Per cell: old and new accuracy, retention of v1's old accuracy, new gain over base, with intervals."""
    seeds = sorted({r["seed"] for r in records if r["cell"] == "v1"})
    ids = {k: [q for q, s in sides.items() if s == k] for k in ("old", "new")}
    n = len(seeds)
    scores: dict[str, dict] = {}
    for cell in _cells(records):
        per = {k: _scores(records, cell, seeds, ids[k]) for k in ids}
        if per["old"] is not None:  # else not every seed has this cell yet
            scores[cell] = per
    out = []
    for cell, s in scores.items():
        row = {"cell": cell, "replay": next(r.get("replay") for r in records if r["cell"] == cell),
               "seeds": n, "old": _level(s["old"]), "new": _level(s["new"])}
        train_s = [r["train_s"] for r in records if r["cell"] == cell and "train_s" in r]
        row["train_s"] = round(sum(train_s) / len(train_s), 1) if train_s else None
        if cell not in ("base", "v1") and "v1" in scores and "base" in scores:
            row["retention"] = _retention(s["old"], scores["v1"]["old"], n)
            row["gain"] = _change(scores["base"]["new"], s["new"], n)
            row["goal_met"] = row["retention"]["mean"] >= GOAL_RETENTION and row["gain"]["mean"] >= GOAL_GAIN
            row["goal_met_at_lower_bound"] = row["retention"]["lo"] >= GOAL_RETENTION and row["gain"]["lo"] >= GOAL_GAIN
        if cell not in ("base", "v1", "replay") and "replay" in scores:
            row["vs_replay"] = _paired(s, scores["replay"], n)
        if cell.endswith("%") and (same := cell.rsplit(" ", 1)[0]) in scores:  # "distill+l2 30%" vs its 20% cell
            row["vs_base_replay_ratio"] = _paired(s, scores[same], n)
        out.append(row)
    return {"cells": out, "resamples": RESAMPLES,
            "interval": "the gate's intervals (evaluate/stats.py) over questions, each question's score its mean "
                        "over the seeds; comparisons paired, Student's t with samples = seeds"}


def _rank(row: dict) -> tuple:
    """Keep the most old knowledge among methods that still gain GOAL_GAIN new points at the lower
    bound of the gain's interval; when none does, the highest mean of old and new accuracy.
    The lower bound, not the point estimate: on one tuning seed, a weight whose gain sat at
    exactly 30.0 points (new 33.3 of 30 questions, interval 13-47) won on the point estimate
    while it had barely learned anything."""
    learns = row["gain"]["lo"] >= GOAL_GAIN
    both = (row["old"]["mean"] + row["new"]["mean"]) / 2
    return (learns, row["old"]["mean"] if learns else both, row["new"]["mean"])


def best_method(records: list[dict], sides: dict[str, str], methods: list[str]) -> str:
    """The method (of `methods`) ranked first by `_rank`."""
    rows = {r["cell"]: r for r in summarise(records, sides)["cells"]}
    scored = [(_rank(rows[m]), m) for m in methods if m in rows and "gain" in rows[m]]
    if not scored:
        raise SystemExit("no 20% replay cell finished on every seed: nothing to choose the best method from")
    return max(scored)[1]


def _fmt(iv: dict | None, sign: str = "") -> str:
    return "-" if iv is None else f"{iv['mean']:{sign}.1f} [{iv['lo']:{sign}.1f}, {iv['hi']:{sign}.1f}]"


def table(summary: dict, n_seeds: int) -> str:
    lines = [f"| cell ({n_seeds} seed{'s' if n_seeds != 1 else ''}) | replay | old facts (35) | new facts (30) "
             f"| retention of v1's old, % | new gain over base, points | goal | old vs replay (paired) "
             f"| new vs replay (paired) | train s |",
             "|---|---:|---:|---:|---:|---:|:---:|---:|---:|---:|"]
    for r in summary["cells"]:
        replay = "-" if r["replay"] is None else f"{r['replay']:.0%}"
        goal = "-" if "goal_met" not in r else ("yes" if r["goal_met"] else "no")
        train = "-" if r["train_s"] is None else f"{r['train_s']:.0f}"
        vs = r.get("vs_replay") or {}
        lines.append(f"| {r['cell']} | {replay} | {_fmt(r['old'])} | {_fmt(r['new'])} | {_fmt(r.get('retention'))} "
                     f"| {_fmt(r.get('gain'))} | {goal} | {_fmt(vs.get('old'), '+')} | {_fmt(vs.get('new'), '+')} "
                     f"| {train} |")
    return "\n".join(lines)


def chart(summary: dict, out: Path, n_seeds: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summary["cells"]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(13, 4.6), dpi=110, gridspec_kw={"width_ratios": [1.6, 1]})
    for j, (key, label, color) in enumerate((("old", "batch 1 (old) facts", "#4e79a7"),
                                             ("new", "batch 2 (new) facts", "#f28e2b"))):
        means = [r[key]["mean"] for r in rows]
        err = [[r[key]["mean"] - r[key]["lo"] for r in rows], [r[key]["hi"] - r[key]["mean"] for r in rows]]
        xs = [i + (j - 0.5) * 0.38 for i in range(len(rows))]
        ax.bar(xs, means, 0.38, yerr=err, capsize=3, label=label, color=color)
    ax.set_xticks(range(len(rows)), [r["cell"] for r in rows], rotation=30, ha="right")
    ax.set_ylabel("fact accuracy (points)")
    ax.set_ylim(0, 100)
    ax.set_title(f"SmolLM2-135M, {n_seeds} seed(s): mean and 95% interval (the gate's)")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    for r in rows:
        if "retention" not in r:
            continue
        rt, g = r["retention"], r["gain"]
        bx.errorbar(g["mean"], rt["mean"], xerr=[[g["mean"] - g["lo"]], [g["hi"] - g["mean"]]],
                    yerr=[[rt["mean"] - rt["lo"]], [rt["hi"] - rt["mean"]]], fmt="o", capsize=3)
        bx.annotate(r["cell"], (g["mean"], rt["mean"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
    bx.axhline(GOAL_RETENTION, ls="--", color="grey")
    bx.axvline(GOAL_GAIN, ls="--", color="grey")
    bx.set_xlabel("v2 new-fact gain over base (points)")
    bx.set_ylabel("v2 old-fact accuracy, % of v1's")
    bx.set_title("goal: upper right of the dashed lines")
    bx.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
