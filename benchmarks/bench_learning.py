"""`make bench-learning`: what makes a version learn more of the facts it is taught?

Measured like `make bench-forgetting` (same demo model, questions, seeds, scorer: greedy
answers of the merged model to ollama/questions/demo.yaml, 35 batch-1 "old" facts and 30
batch-2 "new" facts). Per seed, v1 is trained on batch 1 under each variant of the demo's
training config (train/demo.yaml plus the variant's overrides) and scored on its own facts
(the old ones); then, for the variants named by --v2, v2 is trained on batch 2 from that
variant's v1 with the shipped increment (the demo config's method and replay ratio, the
variant's overrides kept) and scored on old facts (kept) and new ones (learned).

The goal (issue 20): v1 answers at least 75% of its facts; v2 gains at least 70 points of
new facts over the base and keeps at least 90% of v1's old ones, both at the lower bound
of the interval. Intervals are the gate's (forgetting_stats): per question the mean over
seeds, paired comparisons against the baseline on the same seeds and questions.
Cells are cached in <out>/forgetting-cells/ (keyed by what they ran), so a killed run resumes.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from benchmarks import bench_forgetting as bf
from benchmarks.forgetting_stats import _change, _fmt, _level, _retention, _scores

GOAL_V1 = 75.0  # % of v1's own facts
GOAL_V2_GAIN = 70.0  # points of new facts over the base
GOAL_V2_RETENTION = 90.0  # % of v1's old-fact accuracy
BASELINE = "baseline"
# The baseline is train/demo.yaml (6 epochs at 2e-3, batch 4, rank 8 on every projection,
# cosine schedule, answer-only loss) on the demo's original rows (2-3 per fact); each variant
# changes one thing of it (two at most, named by both).
VARIANTS: dict[str, dict] = {
    BASELINE: {},
    "10 epochs": {"train.num_train_epochs": 10},
    "rank 32": {"train.lora_r": 32, "train.lora_alpha": 64},
    "batch 2": {"train.per_device_train_batch_size": 2},
    "neftune 5": {"train.neftune_noise_alpha": 5.0},
    "constant lr": {"train.lr_scheduler_type": "constant_with_warmup"},
    "paraphrases": {},
    "rank 32 + 10 epochs": {"train.lora_r": 32, "train.lora_alpha": 64, "train.num_train_epochs": 10},
    "rank 32 + paraphrases": {"train.lora_r": 32, "train.lora_alpha": 64},
}
# Variants that change the data: two more rows per fact (other wordings, both directions of
# "mineral X is mined at site Y"), in files of their own beside each batch.
DATA: dict[str, bf.Batches] = {"paraphrases": bf.SHIPPED_DATA, "rank 32 + paraphrases": bf.SHIPPED_DATA}
# What `make bench-learning` runs (the table in docs/benchmarks.md); the two combinations are
# there for --variants (each would take the demo past 10 minutes on 2 cores).
DEFAULT_VARIANTS = [BASELINE, "10 epochs", "rank 32", "batch 2", "neftune 5", "constant lr", "paraphrases"]
DEFAULT_V2 = [BASELINE, "paraphrases"]  # the demo before, and the data it ships now


def v1_name(variant: str) -> str:
    """The variant's v1 cell; the baseline's is bench_forgetting's own "v1" (shares its cache)."""
    return "v1" if variant == BASELINE else f"v1 {variant}"


def run(seeds: list[int], variants: list[str], v2: list[str], out: Path) -> list[dict]:
    work, cells = (out / "forgetting-work").resolve(), (out / "forgetting-cells").resolve()
    scorer = bf.Scorer()
    base = bf._base(cells, scorer)
    records = [bf._record(base, s) for s in seeds]
    for seed in seeds:
        for variant in variants:
            t0 = time.time()
            batches = DATA.get(variant, bf.DEMO_DATA)
            rec = bf.v1_cell(seed, work, cells, scorer, v1_name(variant), VARIANTS[variant] or None, batches)
            records.append(bf._record(rec, seed))
            bf._say(f"seed {seed}: {v1_name(variant)} ({time.time() - t0:.0f} s)")
            if variant in v2:
                t0 = time.time()
                name = f"{v1_name(variant)} v2"
                rec = bf.v2_cell(seed, name, None, VARIANTS[variant], work, cells, scorer, v1_name(variant), batches)
                records.append(bf._record(rec, seed))
                bf._say(f"seed {seed}: {name} ({time.time() - t0:.0f} s)")
    return records


def _mean_train_s(records: list[dict], cell: str) -> float:
    times = [r["train_s"] for r in records if r["cell"] == cell]
    return round(sum(times) / len(times), 1)


def summarise(records: list[dict], sides: dict[str, str], seeds: list[int], variants: list[str],
              v2: list[str]) -> list[dict]:
    """Per variant: v1's own-fact accuracy (and against the baseline's v1, paired); with v2, its
    new-fact gain over the base and retention of its v1's old facts, and the goals met."""
    ids = {k: [q for q, s in sides.items() if s == k] for k in ("old", "new")}
    n = len(seeds)

    def scores(cell: str, side: str):
        return _scores(records, cell, seeds, ids[side])

    baseline_old = scores(v1_name(BASELINE), "old") if BASELINE in variants else None
    rows = []
    for variant in variants:
        cell = v1_name(variant)
        v1_old = scores(cell, "old")
        row = {"variant": variant, "overrides": VARIANTS[variant], "seeds": n,
               "v1_old": _level(v1_old), "v1_train_s": _mean_train_s(records, cell)}
        row["v1_goal_met_at_lower_bound"] = row["v1_old"]["lo"] >= GOAL_V1
        if baseline_old is not None and variant != BASELINE:
            row["v1_old_vs_baseline"] = _change(baseline_old, v1_old, n)
        if variant in v2:
            name = f"{cell} v2"
            old, new = scores(name, "old"), scores(name, "new")
            row.update(v2_old=_level(old), v2_new=_level(new), v2_retention=_retention(old, v1_old, n),
                       v2_gain=_change(scores("base", "new"), new, n), v2_train_s=_mean_train_s(records, name))
            row["v2_goal_met_at_lower_bound"] = (row["v2_gain"]["lo"] >= GOAL_V2_GAIN
                                                 and row["v2_retention"]["lo"] >= GOAL_V2_RETENTION)
        rows.append(row)
    return rows


def table(rows: list[dict], n_seeds: int) -> str:
    lines = [f"| variant ({n_seeds} seeds) | v1: own facts (35), % | v1 vs baseline, points | v1 train s "
             f"| v2: new gain over base, points | v2: retention of v1's old, % | v2 train s | goals at lower bound |",
             "|---|---:|---:|---:|---:|---:|---:|:---:|"]
    for r in rows:
        goals = "v1 " + ("yes" if r["v1_goal_met_at_lower_bound"] else "no")
        if "v2_gain" in r:
            goals += ", v2 " + ("yes" if r["v2_goal_met_at_lower_bound"] else "no")
        lines.append(f"| {r['variant']} | {_fmt(r['v1_old'])} | {_fmt(r.get('v1_old_vs_baseline'), '+')} "
                     f"| {r['v1_train_s']:.0f} | {_fmt(r.get('v2_gain'), '+')} | {_fmt(r.get('v2_retention'))} "
                     f"| {'-' if 'v2_train_s' not in r else format(r['v2_train_s'], '.0f')} | {goals} |")
    return "\n".join(lines)


def _names(arg: str, flag: str) -> list[str]:
    names = list(dict.fromkeys(v.strip() for v in arg.split(",") if v.strip()))
    if unknown := [v for v in names if v not in VARIANTS]:
        sys.exit(f"{flag}: unknown variant(s) {', '.join(unknown)} (known: {', '.join(VARIANTS)})")
    return names


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3, help="training seeds (default 3, the forgetting benchmark's)")
    ap.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                    help="comma-separated subset of: " + ", ".join(VARIANTS) + " (default: all but the combinations)")
    ap.add_argument("--v2", default=",".join(DEFAULT_V2),
                    help="variants whose v1 also gets a v2 (comma-separated; default: " + ", ".join(DEFAULT_V2) + ")")
    ap.add_argument("--out", type=Path, default=Path("bench-results/learning"))
    ap.add_argument("--docs", action="store_true", help="copy learning.json into docs/ and replace the table in "
                    "docs/benchmarks.md")
    args = ap.parse_args()
    if not (bf.DEMO_BASE / "config.json").exists():
        sys.exit("the demo base is not built: run `make demo` first (it builds bases/smollm2-135m-instruct)")
    variants, v2 = _names(args.variants, "--variants"), _names(args.v2, "--v2")
    variants += [v for v in v2 if v not in variants]
    seeds = list(range(bf.FIRST_SEED, bf.FIRST_SEED + args.seeds))
    records = run(seeds, variants, v2, args.out)
    rows = summarise(records, bf.Scorer().sides(), seeds, variants, v2)
    md = table(rows, len(seeds))
    bf._save(args.out / "learning.json", {
        "seeds": seeds, "goal": {"v1_own_facts": GOAL_V1, "v2_new_gain": GOAL_V2_GAIN,
                                 "v2_retention": GOAL_V2_RETENTION},
        "variants": rows, "cells": records})
    (args.out / "learning.md").write_text(md + "\n")
    print(md)
    if args.docs:
        bf.write_docs_section("learning-table", md, args.out, ("learning.json",))


if __name__ == "__main__":
    main()
