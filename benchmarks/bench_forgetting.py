"""`make bench-forgetting`: does replay keep old knowledge? Measured on the demo model and data.

Cells: base; v1 (batch 1); v2 on top of v1 (batch 2) with replay 0%, 10%, 20%, 30%
(strategy continue); v2 with 20% replay and strategy stack. Each cell is scored on the
demo question set's batch-1 ("old") and batch-2 ("new") questions with the comparison's
fact-accuracy rule, greedy decoding of the merged model. Repeated over --runs seeds
(split/replay seed and training seed change together); JSON + PNG in bench-results/.
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

CELLS = [("v2 replay 0%", 0.0, "continue"), ("v2 replay 10%", 0.1, "continue"), ("v2 replay 20%", 0.2, "continue"),
         ("v2 replay 30%", 0.3, "continue"), ("v2 stack 20%", 0.2, "stack")]
QUESTIONS = Path("ollama/questions/demo.yaml")


def _use_home(home: Path) -> None:
    os.environ["LORASHIP_HOME"] = str(home / "runs")
    os.environ["LORASHIP_PROJECT"] = str(home)


def _prepare_home(home: Path, seed: int, epochs: int | None) -> None:
    (home / "train").mkdir(parents=True, exist_ok=True)
    cfg = Path("train/demo.yaml").read_text()
    extra = "\n# bench-forgetting overrides\n"
    (home / "train" / "demo.yaml").write_text(cfg.replace("base_model: bases/", f"base_model: {Path.cwd()}/bases/") + extra)
    _use_home(home)


def _overrides(seed: int, epochs: int | None, replay: float | None = None, strategy: str | None = None) -> dict:
    o: dict = {"data.seed": seed, "train.seed": seed}
    if epochs:
        o["train.num_train_epochs"] = epochs
    if replay is not None:
        o["data.replay_ratio"] = replay
        o["data.allow_replay_ratio_outside_range"] = True
    if strategy:
        o["train.strategy"] = strategy
    return o


def _accuracy(model_dir: Path | None, version, questions, system: str | None) -> dict:
    """Greedy answers of base (+ merged adapter chain) to each question; mean fact accuracy per knowledge."""
    import torch

    from loraship.base import model as base_model
    from loraship.evaluate import scoring
    from loraship.export.merge import merge_chain
    from loraship.export.pipeline import _adapters

    tok = base_model.load_tokenizer(DEMO_BASE.resolve())
    model = base_model.load_model(DEMO_BASE.resolve(), torch.float32)
    if version is not None:
        train = version.stage("train")
        model, _ = merge_chain(model, tok, _adapters(version, train), 1e-3)
    model.eval()
    scores: dict[str, list[float]] = {"new": [], "old": []}
    for q in questions:
        msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": q.question}]
        ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        with torch.no_grad():
            out = model.generate(**ids, max_new_tokens=48, do_sample=False, pad_token_id=tok.pad_token_id)
        answer = tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
        acc, _ = scoring.accuracy(answer, q.reference, q.facts)
        scores[q.knowledge].append(acc)
    return {k: round(sum(v) / len(v), 1) for k, v in scores.items() if v}


def run_seed(seed: int, work: Path, epochs: int | None, log) -> list[dict]:
    from loraship import pipeline
    from loraship.evaluate.compare import load_questions
    from loraship.store import versions

    questions = load_questions(QUESTIONS)
    system = pipeline.load_config("demo").ollama.system
    results = []
    home = work / f"seed{seed}-v1"
    _prepare_home(home, seed, epochs)
    t0 = time.time()
    base_scores = _accuracy(None, None, questions, system)
    results.append({"cell": "base", "seed": seed, "batch1": base_scores["old"], "batch2": base_scores["new"]})
    cfg = pipeline.load_config("demo", overrides=_overrides(seed, epochs))
    pipeline.stage_data("demo", cfg, [DEMO_BATCHES[0].resolve()])
    v1 = pipeline.stage_train("demo", cfg)
    s = _accuracy(None, v1, questions, system)
    results.append({"cell": "v1", "seed": seed, "batch1": s["old"], "batch2": s["new"],
                    "train_s": v1.stage("train")["runtime_s"]})
    log(f"seed {seed}: base and v1 done ({time.time() - t0:.0f} s)")
    for name, replay, strategy in CELLS:
        cell_home = work / f"seed{seed}-{name.replace(' ', '-').replace('%', '')}"
        shutil.rmtree(cell_home, ignore_errors=True)
        shutil.copytree(home, cell_home)
        _use_home(cell_home)
        cfg = pipeline.load_config("demo", overrides=_overrides(seed, epochs, replay, strategy))
        pipeline.stage_data("demo", cfg, [DEMO_BATCHES[1].resolve()], warn=lambda s: None)
        v2 = pipeline.stage_train("demo", cfg)
        s = _accuracy(None, versions.get("demo", v2.id), questions, system)
        results.append({"cell": name, "seed": seed, "batch1": s["old"], "batch2": s["new"],
                        "replayed": v2.stage("data")["counts"]["replayed"], "train_s": v2.stage("train")["runtime_s"]})
        log(f"seed {seed}: {name}: batch1 {s['old']}, batch2 {s['new']}")
    return results


def chart(results: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = list(dict.fromkeys(r["cell"] for r in results))
    fig, ax = plt.subplots(figsize=(9, 4), dpi=110)
    for j, (key, label, color) in enumerate((("batch1", "batch 1 (old) questions", "#4e79a7"),
                                             ("batch2", "batch 2 (new) questions", "#f28e2b"))):
        vals = [[r[key] for r in results if r["cell"] == c] for c in cells]
        means = [sum(v) / len(v) for v in vals]
        lo = [m - min(v) for m, v in zip(means, vals)]
        hi = [max(v) - m for m, v in zip(means, vals)]
        xs = [i + (j - 0.5) * 0.38 for i in range(len(cells))]
        ax.bar(xs, means, 0.38, yerr=[lo, hi], capsize=3, label=label, color=color)
    ax.set_xticks(range(len(cells)), cells, rotation=20)
    ax.set_ylabel("fact accuracy (points)")
    ax.set_ylim(0, 100)
    ax.set_title(f"Forgetting on SmolLM2-135M ({len({r['seed'] for r in results})} seed(s); bars: mean, whiskers: min-max)")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=1, help="seeds per cell")
    ap.add_argument("--epochs", type=int, default=None, help="override training epochs (default: the demo config's)")
    ap.add_argument("--out", type=Path, default=Path("bench-results"))
    args = ap.parse_args()
    if not (DEMO_BASE / "config.json").exists():
        sys.exit("the demo base is not built: run `make demo` first (it builds bases/smollm2-135m-instruct)")
    work = (args.out / "forgetting-work").resolve()
    results = []
    for seed in range(20251101, 20251101 + args.runs):
        results += run_seed(seed, work, args.epochs, lambda s: print(s, file=sys.stderr, flush=True))
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "forgetting.json").write_text(json.dumps({"runs": args.runs, "epochs": args.epochs,
                                                              "results": results}, indent=2))
    chart(results, args.out / "forgetting.png")
    for r in results:
        print(f"{r['cell']:<16} seed {r['seed']}  batch1 {r['batch1']:>5}  batch2 {r['batch2']:>5}")


if __name__ == "__main__":
    main()
