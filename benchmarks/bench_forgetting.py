"""`make bench-forgetting`: which increment method keeps v1's knowledge while v2 learns batch 2?

Measured on the demo model (SmolLM2-135M-Instruct, train/demo.yaml) and its fixed
questions (ollama/questions/demo.yaml: 35 batch-1 "old" facts, 30 batch-2 "new" facts),
fact accuracy of greedy answers from the merged fp32 model.

Per seed: base (no training); v1 on batch 1; then v2 on batch 2 from that same v1
(strategy continue) under each method at 20% replay:
  replay       cross-entropy on new + replayed rows, the demo's 2e-3 for 6 epochs
  distill      + KL(v1 || v2) on replayed rows' answer tokens (train.distill_weight 1)
  lr 1e-4      the same as replay at what was the auto increment learning rate
  lr 5e-4      ... at a quarter of the demo's rate
  3 epochs     ... with half the epochs
  l2           + L2 pull toward v1's adapter weights (train.l2_weight, tuned first: the
               best of L2_GRID on TUNE_SEED, a seed the matrix does not report)
  distill+l2   both
and then the best of them at 10% and 30% replay: the one that keeps the most old facts among
those whose new-fact gain is at least 30 points at its interval's lower bound (else the best
mean of old and new). Seeds change training (LoRA init, row order, dropout); the data split
stays the demo's (data.seed), the one tests/data/test_demo_data.py checks every fixed fact
against. Each cell's per-question outcomes are cached in <out>/forgetting-cells/, so a
killed run resumes where it stopped. A seed's cached v2 cells stand only while its v1 adapter
does: when v1 has to be trained again, CPU training is not bit-reproducible (same machine,
same seed: 6 of 65 answers changed), so the seed's v2 cells are measured again rather than
paired with another v1. Intervals: the gate's (evaluate/stats.py, via forgetting_stats.py), over
questions, with each question's score the mean over the seeds.

Writes <out>/forgetting.json, forgetting.png and forgetting.md (the table); --docs also
copies them into docs/ and replaces the table in docs/benchmarks.md. --summarise recomputes
those from a finished run's forgetting.json without training.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

from benchmarks.bench_arms import DEMO_BASE, DEMO_BATCHES
from benchmarks.forgetting_stats import (
    GOAL_GAIN,
    GOAL_RETENTION,
    best_method,
    chart,
    summarise,
    table,
)
from loraship import demo

QUESTIONS = Path("ollama/questions/demo.yaml")
FIRST_SEED = 20251101
TUNE_SEED = FIRST_SEED - 1  # the L2 weight is chosen on a seed the matrix does not report
DISTILL_WEIGHT = 1.0
L2_GRID = (0.01, 0.03, 0.1)


def method_overrides(l2_weight: float) -> dict[str, dict]:
    """Each method's v2 config overrides (every weight explicit, so a cached cell says what it ran)."""
    replay = {"train.increment_method": "replay"}  # explicit: the shipped default may change
    return {
        "replay": replay,
        "distill": {"train.increment_method": "distill", "train.distill_weight": DISTILL_WEIGHT},
        "lr 1e-4": {**replay, "train.increment_learning_rate": 1e-4},
        "lr 5e-4": {**replay, "train.increment_learning_rate": 5e-4},
        "3 epochs": {**replay, "train.increment_epochs": 3},
        "l2": {"train.increment_method": "l2", "train.l2_weight": l2_weight},
        "distill+l2": {"train.increment_method": "distill+l2", "train.distill_weight": DISTILL_WEIGHT,
                       "train.l2_weight": l2_weight},
    }


METHODS = list(method_overrides(0.0))
BASE_REPLAY, OTHER_REPLAYS = 0.2, (0.1, 0.3)
EVAL = "greedy, 32 new tokens, training dtype"  # part of every cached cell's key


Batches = tuple[list[Path], list[Path]]  # batch 1's files (v1), batch 2's (v2)
DEMO_DATA: Batches = ([DEMO_BATCHES[0]], [DEMO_BATCHES[1]])  # the original rows (this matrix's)
SHIPPED_DATA: Batches = (list(demo.BATCHES[0]), list(demo.BATCHES[1]))  # what `make demo` trains on now


def _inputs_sha(batches: Batches = DEMO_DATA) -> str:
    """The demo config, data and questions a cell was measured on: a change invalidates the cache."""
    import hashlib

    h = hashlib.sha256()
    for path in (Path("train/demo.yaml"), *batches[0], *batches[1], QUESTIONS):
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _use_home(home: Path) -> None:
    os.environ["LORASHIP_HOME"] = str(home / "runs")
    os.environ["LORASHIP_PROJECT"] = str(home)


def _prepare_home(home: Path) -> None:
    (home / "train").mkdir(parents=True, exist_ok=True)
    cfg = Path("train/demo.yaml").read_text()
    (home / "train" / "demo.yaml").write_text(cfg.replace("base_model: bases/", f"base_model: {Path.cwd()}/bases/"))
    _use_home(home)


def _overrides(seed: int, replay: float | None = None, extra: dict | None = None) -> dict:
    o: dict = {"train.seed": seed, **(extra or {})}
    if replay is not None:
        o["data.replay_ratio"] = replay
    return o


class Scorer:
    """Greedy answers of the base (+ a version's merged adapter chain) to the fixed questions."""

    def __init__(self):
        from loraship import pipeline
        from loraship.evaluate.compare import load_questions

        self.questions = load_questions(QUESTIONS)
        self.system = pipeline.load_config("demo", Path("train/demo.yaml")).ollama.system

    def outcomes(self, version=None) -> dict[str, float]:
        import torch

        from loraship.base import model as base_model
        from loraship.evaluate import scoring
        from loraship.export.merge import merge_chain
        from loraship.export.pipeline import _adapters
        from loraship.train import device

        tok = base_model.load_tokenizer(DEMO_BASE.resolve())
        tok.padding_side = "left"  # batched generation continues every prompt from its last token
        model = base_model.load_model(DEMO_BASE.resolve(), torch.float32)
        if version is not None:  # merged and checked in fp32, then answers in the training dtype
            model, _ = merge_chain(model, tok, _adapters(version, version.stage("train")), 1e-3)
        model.to(device.choose("cpu").torch_dtype()).eval()
        prompts = [tok.apply_chat_template(([{"role": "system", "content": self.system}] if self.system else [])
                                           + [{"role": "user", "content": q.question}],
                                           add_generation_prompt=True, tokenize=False) for q in self.questions]
        out: dict[str, float] = {}
        step = (len(prompts) + 1) // 2
        for i in range(0, len(prompts), step):
            batch = tok(prompts[i:i + step], return_tensors="pt", padding=True, add_special_tokens=False)
            with torch.no_grad():
                gen = model.generate(**batch, max_new_tokens=32, do_sample=False, pad_token_id=tok.pad_token_id)
            for q, row in zip(self.questions[i:i + step], gen[:, batch["input_ids"].shape[1]:]):
                acc, _ = scoring.accuracy(tok.decode(row, skip_special_tokens=True), q.reference, q.facts)
                out[q.id] = acc
        return out

    def sides(self) -> dict[str, str]:
        return {q.id: q.knowledge for q in self.questions}


def _cached(path: Path, spec: dict) -> dict | None:
    if path.exists():
        rec = json.loads(path.read_text())
        if rec.get("spec") == spec:
            return rec
    return None


def _save(path: Path, rec: dict) -> dict:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(rec, indent=1))
    os.replace(tmp, path)
    return rec


def cell_spec(name: str, seed: int, replay: float | None = None, extra: dict | None = None,
              batches: Batches = DEMO_DATA) -> dict:
    """What a cell ran: its cache key (a cached cell counts only while its spec is unchanged)."""
    spec = {"cell": name, "seed": seed, "overrides": _overrides(seed, replay, extra), "eval": EVAL,
            "inputs": _inputs_sha(batches)}
    if batches != DEMO_DATA:
        spec["data"] = [[str(f) for f in files] for files in batches]
    return spec


def cell_path(cells: Path, seed: int, name: str) -> Path:
    return cells / str(seed) / f"{name.replace(' ', '_').replace('%', 'pct')}.json"


def v1_cell(seed: int, work: Path, cells: Path, scorer: Scorer, name: str = "v1", extra: dict | None = None,
            batches: Batches = DEMO_DATA) -> dict:
    """v1 of one seed (`name`, `extra`, `batches`: a variant of v1's training, for bench_learning). Every v2
    cell of the seed trains from this v1's adapter, so when the adapter is gone but the numbers
    are cached (a cleaned work folder), v1 is trained again and must reproduce its cached
    answers exactly; if it does not, the seed's cached v2 cells were measured from another v1
    and are dropped, to be measured again."""
    from loraship import pipeline
    from loraship.store import versions

    path = cell_path(cells, seed, name)
    home = work / f"seed{seed}-{path.stem}"
    spec = cell_spec(name, seed, extra=extra, batches=batches)
    rec = _cached(path, spec)
    if rec and (home / "runs" / "demo").exists():
        return rec
    shutil.rmtree(home, ignore_errors=True)
    _prepare_home(home)
    cfg = pipeline.load_config("demo", overrides=spec["overrides"])
    pipeline.stage_data("demo", cfg, [f.resolve() for f in batches[0]])
    v1 = pipeline.stage_train("demo", cfg)
    train = versions.get("demo", v1.id).stage("train")
    fresh = {"spec": spec, "outcomes": scorer.outcomes(v1), "train_s": train["runtime_s"],
             "epochs_run": train["epochs_run"]}
    if rec is not None:
        reconcile_v1(path, rec, fresh)
    return _save(path, fresh)


def reconcile_v1(path: Path, cached: dict, fresh: dict) -> bool:
    """Keep the seed's cached v2 cells only if v1 trained again gives the cached v1's answers."""
    seed = cached["spec"]["seed"]
    if fresh["outcomes"] == cached["outcomes"]:
        _say(f"seed {seed}: v1 trained again reproduces its cached answers; the seed's cached cells stand")
        return True
    # the cells trained from this v1: its bench_learning v2 ("<v1 cell> v2") and, for the plain
    # v1, the seed's method cells (every cell not named after a v1)
    def mine(p: Path) -> bool:
        return p.stem == path.stem + "_v2" or (path.stem == "v1" and not p.stem.startswith("v1"))

    stale = sorted(p for p in path.parent.glob("*.json") if mine(p))
    for p in stale:
        p.unlink()
    _say(f"seed {seed}: v1 trained again answers differently from its cached record; dropping the seed's "
         f"cached cells ({', '.join(p.stem for p in stale) or 'none'}) to measure them again")
    return False


def _drift(v1: Path, v2: Path) -> float:
    """L2 distance between v2's and v1's adapter weights (how far the increment moved)."""
    from safetensors.torch import load_file

    a, b = (load_file(p / "adapter" / "adapter_model.safetensors") for p in (v1, v2))
    return round(sum(float((b[k].float() - a[k].float()).pow(2).sum()) for k in a) ** 0.5, 4)


def v2_cell(seed: int, name: str, replay: float | None, extra: dict, work: Path, cells: Path, scorer: Scorer,
            parent: str = "v1", batches: Batches = DEMO_DATA) -> dict:
    """v2 of one seed from the v1 cell `parent`, at `replay` (None: the demo config's ratio)."""
    from loraship import pipeline
    from loraship.store import versions

    spec = cell_spec(name, seed, replay, extra, batches)
    path = cell_path(cells, seed, name)
    if rec := _cached(path, spec):
        return rec
    home = work / f"seed{seed}-{path.stem}"
    shutil.rmtree(home, ignore_errors=True)
    shutil.copytree(work / f"seed{seed}-{cell_path(cells, seed, parent).stem}", home)
    _use_home(home)
    cfg = pipeline.load_config("demo", overrides=spec["overrides"])
    pipeline.stage_data("demo", cfg, [f.resolve() for f in batches[1]], warn=lambda s: None)
    v2 = versions.get("demo", pipeline.stage_train("demo", cfg).id)
    train = v2.stage("train")
    rec = {"spec": spec, "outcomes": scorer.outcomes(v2), "train_s": train["runtime_s"],
           "drift_from_v1": _drift(versions.get("demo", "v1").path, v2.path),
           "epochs_run": train["epochs_run"], "replayed": v2.stage("data")["counts"]["replayed"],
           "increment": train.get("increment"), "learning_rate": train["hyperparameters"]["learning_rate"]}
    shutil.rmtree(home, ignore_errors=True)  # the numbers are what this keeps; adapters would fill the disk
    return _save(path, rec)


def _record(rec: dict, seed: int) -> dict:
    """A cached cell as the statistics read it: cell, seed, replay ratio, outcomes, timings, and
    the spec it ran (what forgetting.json says each number measured)."""
    spec = rec["spec"]
    return {"cell": spec["cell"], "seed": seed, "replay": spec.get("overrides", {}).get("data.replay_ratio"),
            **{k: v for k, v in rec.items() if k != "spec"}, "spec": spec}


def _base(cells: Path, scorer: Scorer) -> dict:
    spec = {"cell": "base", "eval": EVAL, "inputs": _inputs_sha()}
    return _cached(cells / "base.json", spec) or _save(cells / "base.json", {"spec": spec, "outcomes": scorer.outcomes()})


def tune_l2(work: Path, cells: Path, scorer: Scorer) -> tuple[float, list[dict]]:
    """The L2 weight of L2_GRID ranked first on TUNE_SEED (forgetting_stats._rank)."""
    records = [_record(_base(cells, scorer), TUNE_SEED), _record(v1_cell(TUNE_SEED, work, cells, scorer), TUNE_SEED)]
    for weight in L2_GRID:
        t0 = time.time()
        records.append(_record(v2_cell(TUNE_SEED, f"l2 {weight:g}", BASE_REPLAY, method_overrides(weight)["l2"],
                                       work, cells, scorer), TUNE_SEED))
        _say(f"tuning seed {TUNE_SEED}: l2 weight {weight:g} ({time.time() - t0:.0f} s)")
    best = best_method(records, scorer.sides(), [f"l2 {w:g}" for w in L2_GRID])
    return float(best.split()[1]), records


def run(seeds: list[int], methods: dict[str, dict], replays: bool, work: Path, cells: Path,
        best: str | None) -> list[dict]:
    scorer = Scorer()
    base = _base(cells, scorer)
    records = [_record(base, s) for s in seeds]  # the base is deterministic: one evaluation serves every seed
    for seed in seeds:
        t0 = time.time()
        records.append(_record(v1_cell(seed, work, cells, scorer), seed))
        _say(f"seed {seed}: v1 ({time.time() - t0:.0f} s)")
        for name in methods:
            t0 = time.time()
            records.append(_record(v2_cell(seed, name, BASE_REPLAY, methods[name], work, cells, scorer), seed))
            _say(f"seed {seed}: {name} ({time.time() - t0:.0f} s)")
    if replays:
        best = best or best_method(records, scorer.sides(), methods)
        _say(f"best method at 20% replay: {best}")
        for seed in seeds:
            for ratio in OTHER_REPLAYS:
                t0 = time.time()
                records.append(_record(v2_cell(seed, f"{best} {ratio:.0%}", ratio, methods[best], work, cells,
                                               scorer), seed))
                _say(f"seed {seed}: {best} at {ratio:.0%} replay ({time.time() - t0:.0f} s)")
    return records


def write_docs_section(marker: str, md: str, out: Path, names: tuple[str, ...]) -> None:
    """Replace the table between <!-- marker --> and <!-- /marker --> in docs/benchmarks.md with
    `md`, and copy the run's files `names` from `out` into docs/."""
    doc = Path("docs/benchmarks.md")
    text = doc.read_text(encoding="utf-8")
    start, end = f"<!-- {marker} -->", f"<!-- /{marker} -->"
    if start not in text or end not in text:
        sys.exit(f"{doc} has no {start} ... {end} markers around the table to replace")
    head, rest = text.split(start, 1)
    doc.write_text(head + start + "\n" + md + "\n" + end + rest.split(end, 1)[1], encoding="utf-8")
    for name in names:
        shutil.copyfile(out / name, Path("docs") / name)


def _write_docs(out: Path, md: str) -> None:
    write_docs_section("forgetting-table", md, out, ("forgetting.json", "forgetting.png"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3, help="training seeds per cell (default 3)")
    ap.add_argument("--quick", action="store_true", help="one seed, the 20%% replay cells only (a smoke run)")
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of: " + ", ".join(METHODS))
    ap.add_argument("--best", choices=METHODS, help="the method for the 10/30%% cells (default: measured)")
    ap.add_argument("--l2-weight", type=float, help=f"skip tuning it over {L2_GRID} on seed {TUNE_SEED}")
    ap.add_argument("--only-seeds", help="comma-separated seeds of the matrix: compute just their 20%% cells, "
                    "and with --best also their 10/30%% cells (a worker: split the matrix over processes, copy "
                    "each worker's forgetting-cells/<seed>/ and forgetting-work/seed<seed>-v1/ into one --out, then "
                    "run without this flag there)")
    ap.add_argument("--summarise", type=Path, metavar="JSON",
                    help="only recompute the statistics, table and chart of a finished run's forgetting.json "
                    "(no training), into --out")
    ap.add_argument("--out", type=Path, default=Path("bench-results"))
    ap.add_argument("--docs", action="store_true", help="copy JSON + chart into docs/ and update docs/benchmarks.md")
    args = ap.parse_args()
    if args.summarise:
        return summarise_only(args.summarise, args.out, args.docs)
    if not (DEMO_BASE / "config.json").exists():
        sys.exit("the demo base is not built: run `make demo` first (it builds bases/smollm2-135m-instruct)")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if unknown := [m for m in methods if m not in METHODS]:
        sys.exit(f"--methods: unknown {', '.join(unknown)} (known: {', '.join(METHODS)})")
    seeds = list(range(FIRST_SEED, FIRST_SEED + (1 if args.quick else args.seeds)))
    if args.only_seeds:
        wanted = [int(x) for x in args.only_seeds.split(",") if x.strip()]
        if stray := [x for x in wanted if x not in seeds]:
            sys.exit(f"--only-seeds: {stray} are not among the matrix's seeds {seeds}")
        seeds = wanted
    work = (args.out / "forgetting-work").resolve()
    cells = (args.out / "forgetting-cells").resolve()
    tuning: list[dict] = []
    l2_weight = args.l2_weight
    if l2_weight is None and any("l2" in m for m in methods):
        l2_weight, tuning = tune_l2(work, cells, Scorer())
        _say(f"l2 weight: {l2_weight:g} (tuned on seed {TUNE_SEED})")
    chosen = {m: method_overrides(l2_weight or 0.0)[m] for m in methods}
    # A worker (--only-seeds) cannot pick the best method from its own seeds alone: it runs the
    # 10/30% cells only when told which method they are for (--best).
    replays = not args.quick and (not args.only_seeds or args.best is not None)
    records = run(seeds, chosen, replays, work, cells, args.best)
    write_report(args.out, seeds, chosen, l2_weight, tuning, records, args.docs)


def write_report(out: Path, seeds: list[int], methods: dict, l2_weight: float | None, tuning: list[dict],
                 records: list[dict], docs: bool) -> None:
    """forgetting.json, .png and .md from the cells' records (and docs/, with docs)."""
    sides = Scorer().sides()
    summary = summarise(records, sides)
    tuned = summarise(tuning, sides) if tuning else None
    out.mkdir(parents=True, exist_ok=True)
    _save(out / "forgetting.json", {
        "seeds": seeds, "methods": methods, "replay": BASE_REPLAY, "l2_tuning": {
            "seed": TUNE_SEED, "grid": L2_GRID, "chosen": l2_weight, "summary": tuned, "cells": tuning},
        "goal": {"retention": GOAL_RETENTION, "new_gain_over_base": GOAL_GAIN}, "summary": summary,
        "cells": records})
    chart(summary, out / "forgetting.png", len(seeds))
    md = table(summary, len(seeds))
    if tuned:
        md += f"\n\nL2 weight tuning (seed {TUNE_SEED}, not among the seeds above; chosen: {l2_weight:g}):\n\n"
        md += table(tuned, 1)
    (out / "forgetting.md").write_text(md + "\n")
    print(md)
    if docs:
        _write_docs(out, md)


def summarise_only(path: Path, out: Path, docs: bool) -> None:
    """The statistics of a finished run again, from its forgetting.json: no training, no cache
    (for a change to the statistics; the measurements stay what that run measured)."""
    try:
        report = json.loads(path.read_text())
        tuning = report.get("l2_tuning") or {}
        args = (report["seeds"], report["methods"], tuning.get("chosen"), tuning.get("cells") or [], report["cells"])
    except (OSError, ValueError, KeyError) as e:
        raise SystemExit(f"--summarise {path}: not a forgetting.json of a finished run ({e})") from None
    write_report(out, *args, docs)


if __name__ == "__main__":
    main()
