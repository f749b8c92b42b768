"""`make bench`: loraship against the plain way, in the same run, as ratios. Writes bench-results/bench.json.

Each arm runs in its own subprocess so its peak RSS is its own (os.wait4's ru_maxrss).
  train   loraship train (completion-only loss, dynamic padding, length-grouped batches)
          vs a plain Trainer + peft script padding every row to max_seq_length; tokens/s
          count only non-padding tokens for both.
  incr    a v2 increment (new + replay rows) vs retraining on all rows from scratch.
  export  loraship export (merge, convert, quantize + verification) vs the same three
          llama.cpp/peft steps by hand.
  compare answers/s with concurrency vs one request at a time (llama.cpp backend).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import bench_arms

RESULTS = Path("bench-results")


def run_arm(arm: str, spec: dict) -> dict:
    """One arm in a fresh interpreter; returns its JSON result plus wall time and peak RSS."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.bench_arms", arm, json.dumps(spec)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if status != 0:
        raise RuntimeError(f"bench arm {arm} failed (status {status}); run `python -m benchmarks.bench_arms {arm} '{json.dumps(spec)}'`")
    result = json.loads(out.strip().splitlines()[-1])
    result.update(wall_s=round(wall, 2), peak_rss_mb=round(usage.ru_maxrss / 1024, 1))
    return result


def _ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b else float("nan")


def bench_train(spec: dict, repeats: int) -> dict:
    runs = []
    for _ in range(repeats):  # alternate arms so drift in machine load hits both
        ours = run_arm("train_loraship", spec)
        plain = run_arm("train_plain", spec)
        runs.append({"loraship": ours, "plain": plain,
                     "tokens_per_s_ratio": _ratio(ours["tokens_per_s"], plain["tokens_per_s"]),
                     "peak_rss_ratio": _ratio(ours["peak_rss_mb"], plain["peak_rss_mb"])})
    best = sorted(r["tokens_per_s_ratio"] for r in runs)
    return {"runs": runs, "tokens_per_s_ratio_median": best[len(best) // 2], "goal": ">= 1.5"}


def bench_incremental(spec: dict) -> dict:
    res = run_arm("incremental", spec)
    res["time_ratio"] = _ratio(res["increment_s"], res["scratch_s"])
    res["rows_ratio"] = _ratio(res["increment_rows"], res["scratch_rows"])
    res["goal"] = "time_ratio ~ rows_ratio"
    return res


def bench_export(spec: dict) -> dict:
    prepared = run_arm("export_prepare", spec)
    spec = {**spec, "home": prepared["home"]}
    ours = run_arm("export_loraship", spec)
    plain = run_arm("export_plain", spec)
    return {"loraship": ours, "plain": plain,
            "wall_ratio": _ratio(ours["wall_s"], plain["wall_s"]),
            "steps_wall_ratio": _ratio(ours["steps_s"], plain["steps_s"]),
            "peak_rss_ratio": _ratio(ours["peak_rss_mb"], plain["peak_rss_mb"]), "goal": "<= 1.1"}


def bench_compare(spec: dict) -> dict:
    res = run_arm("compare", spec)
    res["speedup"] = _ratio(res["concurrent_answers_per_s"], res["serial_answers_per_s"])
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default=None, help="HF model folder (default: the demo base if built, else a tiny model)")
    ap.add_argument("--rows", type=int, default=48, help="training rows per arm")
    ap.add_argument("--max-seq-length", type=int, default=256)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--only", nargs="*", choices=["train", "incr", "export", "compare"])
    ap.add_argument("--out", type=Path, default=RESULTS / "bench.json")
    args = ap.parse_args()
    work = Path(os.environ.get("LORASHIP_BENCH_DIR", RESULTS / "work")).resolve()
    base = bench_arms.ensure_base(args.base, work)
    spec = {"base": str(base), "rows": args.rows, "max_seq_length": args.max_seq_length, "epochs": args.epochs,
            "work": str(work)}
    todo = args.only or ["train", "incr", "export", "compare"]
    result: dict = {"spec": spec, "machine": bench_arms.machine()}
    for name, fn in (("train", lambda: bench_train(spec, args.repeats)), ("incr", lambda: bench_incremental(spec)),
                     ("export", lambda: bench_export(spec)), ("compare", lambda: bench_compare(spec))):
        if name in todo:
            print(f"== {name}", file=sys.stderr, flush=True)
            result[name] = fn()
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(result, indent=2))
    print(summary(result))


def summary(r: dict) -> str:
    lines = [f"{'benchmark':<34}{'loraship':>14}{'plain':>14}{'ratio':>9}  goal"]
    if "train" in r:
        t = r["train"]["runs"][-1]
        lines.append(f"{'train tokens/s (non-padding)':<34}{t['loraship']['tokens_per_s']:>14}{t['plain']['tokens_per_s']:>14}"
                     f"{r['train']['tokens_per_s_ratio_median']:>9}  >= 1.5")
        lines.append(f"{'train peak RSS MB':<34}{t['loraship']['peak_rss_mb']:>14}{t['plain']['peak_rss_mb']:>14}{t['peak_rss_ratio']:>9}")
    if "incr" in r:
        i = r["incr"]
        lines.append(f"{'v2 increment vs scratch (s)':<34}{i['increment_s']:>14}{i['scratch_s']:>14}{i['time_ratio']:>9}"
                     f"  ~ rows {i['rows_ratio']}")
    if "export" in r:
        e = r["export"]
        lines.append(f"{'export wall s (with verify)':<34}{e['loraship']['wall_s']:>14}{e['plain']['wall_s']:>14}{e['wall_ratio']:>9}  <= 1.1")
        lines.append(f"{'export merge+convert+quantize s':<34}{e['loraship']['steps_s']:>14}{e['plain']['steps_s']:>14}{e['steps_wall_ratio']:>9}  <= 1.1")
        lines.append(f"{'export peak RSS MB':<34}{e['loraship']['peak_rss_mb']:>14}{e['plain']['peak_rss_mb']:>14}{e['peak_rss_ratio']:>9}  <= 1.1")
    if "compare" in r:
        c = r["compare"]
        lines.append(f"{'compare answers/s':<34}{c['concurrent_answers_per_s']:>14}{c['serial_answers_per_s']:>14}{c['speedup']:>9}"
                     f"  (concurrency {c['concurrency']} vs 1)")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
