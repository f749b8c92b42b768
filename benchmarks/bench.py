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
    log = Path(spec["work"]) / f"{arm}.log"  # the arm's stderr, for when it fails
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "benchmarks.bench_arms", arm, json.dumps(spec)],
                                stdout=subprocess.PIPE, stderr=err, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if status != 0:
        raise RuntimeError(f"bench arm {arm} failed (status {status}); see {log}")
    result = json.loads(out.strip().splitlines()[-1])
    result.update(wall_s=round(wall, 2), peak_rss_mb=round(usage.ru_maxrss / 1024, 1))
    return result


def _ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b else float("nan")


TRAIN_ARMS = ("loraship", "loraship_fp32", "loraship_native_dropout", "loraship_unfolded", "plain", "trl")
OPTIONAL_ARMS = ("loraship_padding_free", "loraship_bf16", "loraship_fp32_padding_free", "loraship_onebatch",
                 "loraship_bf16_onebatch")
BASELINES = ("plain", "trl")
# Measured variants of loraship, each one speed choice turned off or forced: padding-free
# forced on whatever attention there is; fp32 or bf16 whatever the device choice picked
# (train.dtype); torch's nn.Dropout instead of the cheaper mask (train.fast_dropout);
# unfolded: micro-batches of batch x accumulation kept (train.fold_accumulation); onebatch:
# the step's rows as one configured batch (hyperparameters changed, not the speed plan).
VARIANTS = {"padding_free": {"train.padding_free": True}, "fp32": {"train.dtype": "float32"},
            "bf16": {"train.dtype": "bfloat16"}, "native_dropout": {"train.fast_dropout": False},
            "unfolded": {"train.fold_accumulation": False}}


def _arm_spec(spec: dict, arm: str) -> tuple[str, dict]:
    if arm.startswith("loraship"):
        overrides = {k: v for name, o in VARIANTS.items() if name in arm for k, v in o.items()}
        if "onebatch" in arm:
            overrides.update({"train.per_device_train_batch_size": spec["batch"] * spec["accum"],
                              "train.gradient_accumulation_steps": 1})
        return "train_loraship", {**spec, "overrides": overrides}
    return f"train_{arm}", spec


def _interval(values: list[float]) -> dict:
    v = sorted(values)
    return {"min": v[0], "median": v[len(v) // 2], "max": v[-1], "n": len(v)}


def ratio_estimate(ratios: list[float], confidence: float = 0.95) -> dict:
    """The geometric mean of same-round ratios with a Student-t interval on their logs:
    rounds are the samples, so 3 rounds give a wide interval, and that is the honest width.
    One round has no interval (null)."""
    import math

    from loraship.evaluate.stats import t_value

    logs = [math.log(r) for r in ratios]
    n = len(logs)
    mean = sum(logs) / n
    out = {"ratio": round(math.exp(mean), 3), "interval": None, "confidence": confidence, "rounds": n,
           "per_round": [round(r, 3) for r in ratios]}
    if n > 1:
        sd = math.sqrt(sum((x - mean) ** 2 for x in logs) / (n - 1))
        half = t_value(confidence, n - 1) * sd / math.sqrt(n)
        out["interval"] = [round(math.exp(mean - half), 3), round(math.exp(mean + half), 3)]
    return out


def bench_train(spec: dict, repeats: int, arms: tuple[str, ...] = TRAIN_ARMS, on_round=lambda rounds: None) -> dict:
    """Every arm on the same prepared rows, interleaved (arm order rotates each round) so
    drifting machine load hits all arms; ratios per round, then their min/median/max."""
    prepared = run_arm("train_prepare", spec)
    spec = {**spec, **prepared}
    rounds = []
    for r in range(repeats):
        order = arms[r % len(arms):] + arms[:r % len(arms)]
        results = {}
        for arm in order:
            name, arm_spec = _arm_spec(spec, arm)
            results[arm] = run_arm(name, arm_spec)
            results[arm]["loadavg_1m"] = os.getloadavg()[0]
        ratios = {f"{a}_vs_{b}": _ratio(results[a]["tokens_per_s"], results[b]["tokens_per_s"])
                  for a in arms if a.startswith("loraship") for b in arms if b in BASELINES}
        rounds.append({"order": list(order), "arms": results, "tokens_per_s_ratio": ratios})
        on_round(rounds)  # a partial result survives an interrupted run
    summary = {a: _interval([rd["arms"][a]["tokens_per_s"] for rd in rounds]) for a in arms}
    ratios = {k: ratio_estimate([rd["tokens_per_s_ratio"][k] for rd in rounds]) for k in rounds[0]["tokens_per_s_ratio"]}
    return {"train_rows": prepared["train_rows"], "rounds": rounds, "tokens_per_s": summary,
            "tokens_per_s_ratio": ratios, "goal": {"loraship_vs_plain": ">= 1.5", "loraship_vs_trl": ">= 1.0"}}


def bench_incremental(spec: dict) -> dict:
    res = run_arm("incremental", spec)
    res["time_ratio"] = _ratio(res["increment_s"], res["scratch_s"])
    res["rows_ratio"] = _ratio(res["increment_rows"], res["scratch_rows"])
    res["goal"] = "time_ratio ~ rows_ratio"
    return res


def bench_export(spec: dict, repeats: int) -> dict:
    """loraship export (every check included) and the bare three steps, interleaved per round
    on the same trained adapter; the ratio is of each process's wall time (imports, loading,
    writing: what a person waits for), with each step's own time beside it."""
    prepared = run_arm("export_prepare", spec)
    spec = {**spec, "home": prepared["home"]}
    rounds = []
    for r in range(repeats):
        order = ("export_loraship", "export_plain") if r % 2 == 0 else ("export_plain", "export_loraship")
        res = {arm: run_arm(arm, spec) for arm in order}
        rounds.append({"order": list(order), "loraship": res["export_loraship"], "plain": res["export_plain"],
                       "wall_ratio": _ratio(res["export_loraship"]["wall_s"], res["export_plain"]["wall_s"])})
    return {"rounds": rounds, "wall_ratio": ratio_estimate([rd["wall_ratio"] for rd in rounds]),
            "peak_rss_ratio": ratio_estimate([_ratio(rd["loraship"]["peak_rss_mb"], rd["plain"]["peak_rss_mb"])
                                              for rd in rounds]), "goal": "<= 1.1"}


def bench_compare(spec: dict) -> dict:
    return run_arm("compare", spec)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default=None, help="HF model folder (default: the demo base if built, else a tiny model)")
    ap.add_argument("--rows", type=int, default=48, help="training rows per arm")
    ap.add_argument("--max-seq-length", type=int, default=256)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3, help="interleaved rounds of the train and export arms")
    ap.add_argument("--only", nargs="*", choices=["train", "incr", "export", "compare"])
    ap.add_argument("--train-arms", nargs="*", choices=TRAIN_ARMS + OPTIONAL_ARMS,
                    default=list(TRAIN_ARMS))
    ap.add_argument("--out", type=Path, default=RESULTS / "bench.json")
    args = ap.parse_args()
    work = Path(os.environ.get("LORASHIP_BENCH_DIR", RESULTS / "work")).resolve()
    base = bench_arms.ensure_base(args.base, work)
    spec = {"base": str(base), "rows": args.rows, "max_seq_length": args.max_seq_length, "epochs": args.epochs,
            "work": str(work), "lora": bench_arms.LORA, "batch": bench_arms.BATCH, "accum": bench_arms.ACCUM,
            "lr": bench_arms.LR, "rows_file": str(bench_arms.demo_rows_file(args.rows, work))}
    todo = args.only or ["train", "incr", "export", "compare"]
    result: dict = {"spec": spec, "machine": bench_arms.machine()}
    for name, fn in (("train", lambda: bench_train(spec, args.repeats, tuple(args.train_arms), partial(args.out, result))), ("incr", lambda: bench_incremental(spec)),
                     ("export", lambda: bench_export(spec, args.repeats)), ("compare", lambda: bench_compare(spec))):
        if name in todo:
            print(f"== {name}", file=sys.stderr, flush=True)
            result[name] = fn()
            result.update(headline(result))
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(result, indent=2))
    print(summary(result))


def headline(result: dict) -> dict:
    """The two numbers the speed issue asks for, at the top of the JSON: loraship's training
    tokens/s over the plain per-batch-padding script's, and its export wall time over the
    bare merge + convert + quantize, each with its interval over the rounds."""
    out = {}
    if "train" in result and "loraship_vs_plain" in result["train"]["tokens_per_s_ratio"]:
        out["train_vs_plain"] = {**result["train"]["tokens_per_s_ratio"]["loraship_vs_plain"], "goal": ">= 1.5",
                                 "measure": "non-padding tokens/s in optimizer steps, loraship / plain"}
    if "export" in result:
        out["export_vs_bare"] = {**result["export"]["wall_ratio"], "goal": "<= 1.1",
                                 "measure": "export wall s (all checks) / bare merge+convert+quantize wall s"}
    return out


def partial(out: Path, result: dict):
    def write(rounds: list) -> None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({**result, "train_partial": {"rounds": rounds}}, indent=2))

    return write


def _estimate(e: dict) -> str:
    iv = e["interval"]
    return f"{e['ratio']}" + (f" [{iv[0]}, {iv[1]}]" if iv else " (1 round)")


def train_summary(t: dict) -> list[str]:
    """Tokens/s per arm (min / median / max over the rounds) and loraship's same-round ratios."""
    lines = [f"{'train arm':<28}{'tokens/s min':>14}{'median':>10}{'max':>10}   same-round ratio (95% interval)"]
    for arm, iv in t["tokens_per_s"].items():
        rtxt = "  ".join(f"vs {k.split('_vs_')[1]} {_estimate(r)}"
                         for k, r in t["tokens_per_s_ratio"].items() if k.startswith(f"{arm}_vs_"))
        lines.append(f"{arm:<28}{iv['min']:>14}{iv['median']:>10}{iv['max']:>10}   {rtxt}")
    return lines


def summary(r: dict) -> str:
    lines = []
    if "train" in r:
        lines += train_summary(r["train"])
    lines.append(f"{'benchmark':<34}{'loraship':>14}{'plain':>14}{'ratio':>9}  goal")
    if "incr" in r:
        i = r["incr"]
        lines.append(f"{'v2 increment vs scratch (s)':<34}{i['increment_s']:>14}{i['scratch_s']:>14}{i['time_ratio']:>9}"
                     f"  ~ rows {i['rows_ratio']}")
    if "export" in r:
        e = r["export"]
        med = lambda side, key: sorted(rd[side][key] for rd in e["rounds"])[len(e["rounds"]) // 2]  # noqa: E731
        lines.append(f"{'export wall s (median)':<34}{med('loraship', 'wall_s'):>14}{med('plain', 'wall_s'):>14}"
                     f"{e['wall_ratio']['ratio']:>9}  <= 1.1  {_estimate(e['wall_ratio'])}")
        lines.append(f"{'export peak RSS MB (median)':<34}{med('loraship', 'peak_rss_mb'):>14}"
                     f"{med('plain', 'peak_rss_mb'):>14}{e['peak_rss_ratio']['ratio']:>9}")
        split = e["rounds"][-1]
        lines.append("export steps, last round (s): loraship " + ", ".join(
            f"{k} {v}" for k, v in split["loraship"]["timings_s"].items()) + "; bare " + ", ".join(
            f"{k} {v}" for k, v in split["plain"]["timings_s"].items()))
    if "compare" in r:
        for backend in ("llamacpp", "ollama_double", "ollama_real"):
            if backend in r["compare"]:
                c = r["compare"][backend]
                lines.append(f"{'compare answers/s ' + backend:<34}{c['auto_answers_per_s']:>14}"
                             f"{c['two_at_once_default_threads_answers_per_s']:>14}{c['auto_vs_two_at_once']:>9}"
                             f"  auto ({c['auto_plan']['workers']} at once) vs 2 at once; 1 at a time: "
                             f"{c['one_at_a_time_answers_per_s']}")
        for key, v in (r["compare"].get("sampling") or {}).items():
            if key.startswith("k"):
                lo, hi = v["ratio_interval"]
                lines.append(f"{'sampled answers/s, ' + key.replace('k', 'k=') + ' per question':<34}"
                             f"{v['batched_answers_per_s']:>14}{v['one_at_a_time_answers_per_s']:>14}"
                             f"{v['ratio_mean']:>9}  batched vs one at a time [{lo}, {hi}]")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
