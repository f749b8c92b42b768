"""`make bench-gpu`: training throughput, MFU and peak memory of loraship, a plain script and TRL
on a 0.5B-shaped model, all in one run. Writes bench-results/bench-gpu.json.

The model is a random-init Llama of the 0.5B shape (hidden 896, intermediate 4864, 24
layers, 14 heads, 2 KV heads, SmolLM2's 49152-token vocabulary: 358M matmul parameters),
LoRA r16/alpha 32 on all seven projections, batch 16, one epoch over 3000 synthetic chat
rows of up to 1024 tokens (the train split: 2700). Arms as in benchmarks/train_arms.py,
interleaved over --repeats rounds.

MFU counts 4 x N FLOPs per non-padding token (N = matmul parameters of the decoder
layers; forward 2N, backward 2N for the activations' gradients, the LoRA weights'
gradients are negligible) against --peak-tflops (989: dense bf16 of an H100/H200 SXM).

Built for a stock CUDA PyTorch image (torch, transformers, peft, accelerate): TRL and
liger-kernel come as wheels (`make bench-gpu-wheels` here, carried as build/gpu-wheels),
the tokenizer as a folder (build/gpu-wheels/tokenizer), since that machine reaches no
package index. `--dry-run` runs the same code on a tiny shape in well under a minute on
CPU (tests/benchmarks/test_bench_gpu_dry_run.py).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

from benchmarks.bench import TRAIN_ARMS, bench_train, train_summary

SHAPES = {
    "0.5b": {"hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
             "num_attention_heads": 14, "num_key_value_heads": 2},
    "tiny": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2},
}
WORDS = ("basin survey mineral site river layer core sample depth north ridge quarry grain vein "
         "record method shaft clay stone map field crew season report drill water iron copper "
         "ancient settlement trench measure level station bearing slope fault seam").split()
TOKENIZER_DIR = Path("build/gpu-wheels/tokenizer")


def matmul_params(shape: dict) -> int:
    """Weights of the decoder layers' projections (q, k, v, o, gate, up, down)."""
    h, i = shape["hidden_size"], shape["intermediate_size"]
    kv = h // shape["num_attention_heads"] * shape["num_key_value_heads"]
    return shape["num_hidden_layers"] * (2 * h * h + 2 * h * kv + 3 * h * i)


def tokenizer(work: Path, given: str | None):
    from transformers import AutoTokenizer

    for folder in (given, TOKENIZER_DIR, work / "tokenizer"):
        if folder and (Path(folder) / "tokenizer_config.json").exists():
            return AutoTokenizer.from_pretrained(folder)
    from loraship.base.from_gguf import load_gguf_tokenizer
    from loraship.base.smollm2 import smollm2_gguf

    tok = load_gguf_tokenizer(smollm2_gguf())
    tok.save_pretrained(work / "tokenizer")
    return tok


def build_base(shape_name: str, tok, work: Path) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = work / f"base-{shape_name}"
    if (out / "config.json").exists():
        return out
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), max_position_embeddings=2048, tie_word_embeddings=True,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id, rms_norm_eps=1e-5, **SHAPES[shape_name])
    model = LlamaForCausalLM(config)
    if torch.cuda.is_available():
        model = model.to(torch.bfloat16)  # half the bytes to write and hash; arms load in their own dtype
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


def synthetic_rows(tok, n: int, max_len: int, mean_len: int, seed: int = 0) -> list[dict]:
    """Single-turn chat rows whose rendered length is at most max_len tokens (mean about mean_len)."""
    rng = random.Random(seed)
    rows = []
    for k in range(n):
        target = min(max_len - 16, 24 + int(rng.expovariate(1 / max(mean_len - 24, 1))))
        q_words = max(4, target // 3)
        a_words = max(4, target - q_words - 12)
        msgs = [{"role": "user", "content": " ".join(rng.choices(WORDS, k=q_words)) + "?"},
                {"role": "assistant", "content": " ".join(rng.choices(WORDS, k=a_words)) + "."}]
        while len(tok.apply_chat_template(msgs, tokenize=True)) > max_len and len(msgs[1]["content"]) > 8:
            msgs[1]["content"] = msgs[1]["content"][: len(msgs[1]["content"]) * 3 // 4] + "."
        rows.append({"id": f"g{k}", "messages": msgs})
    return rows


def add_mfu(result: dict, n_matmul: int, peak_tflops: float) -> None:
    for arm, iv in result["tokens_per_s"].items():
        result.setdefault("mfu", {})[arm] = {k: float(f"{4 * n_matmul * iv[k] / (peak_tflops * 1e12):.3g}")
                                             for k in ("min", "median", "max")}
    result["peak_gpu_mb"] = {arm: max(rd["arms"][arm].get("peak_gpu_mb") or 0 for rd in result["rounds"])
                             for arm in result["tokens_per_s"]}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="tiny shape, 16 rows of up to 64 tokens: same code, CPU-sized")
    ap.add_argument("--shape", choices=sorted(SHAPES), default="0.5b")
    ap.add_argument("--rows", type=int, default=3000)
    ap.add_argument("--max-seq-length", type=int, default=1024)
    ap.add_argument("--mean-length", type=int, default=350, help="mean rendered row length in tokens")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--arms", nargs="*", choices=TRAIN_ARMS, default=None, help="default: all (--dry-run: no padding-free variant)")
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="the accelerator's dense bf16 peak")
    ap.add_argument("--tokenizer", default=None, help="a saved tokenizer folder (default: build/gpu-wheels/tokenizer)")
    ap.add_argument("--out", type=Path, default=Path("bench-results/bench-gpu.json"))
    args = ap.parse_args(argv)
    if args.dry_run:  # the three arms the table needs; the padding-free variant only adds time
        args.shape, args.rows, args.max_seq_length, args.mean_length, args.batch = "tiny", 16, 64, 40, 4
        args.arms = args.arms or ["loraship", "plain", "trl"]
    args.arms = args.arms or ["loraship", "loraship_padding_free", "plain", "trl"]  # fp32 is no GPU question
    work = Path(os.environ.get("LORASHIP_BENCH_DIR", "bench-results/work-gpu")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    tok = tokenizer(work, args.tokenizer)
    base = build_base(args.shape, tok, work)
    rows_file = work / f"rows-{args.rows}-{args.max_seq_length}.jsonl"
    rows_file.write_text("".join(json.dumps(r) + "\n" for r in synthetic_rows(tok, args.rows, args.max_seq_length,
                                                                             args.mean_length)))
    spec = {"base": str(base), "work": str(work), "rows_file": str(rows_file), "epochs": 1,
            "max_seq_length": args.max_seq_length, "lora": {"r": 16, "alpha": 32, "dropout": 0.05},
            "batch": args.batch, "accum": 1, "lr": 2e-4}
    result = bench_train(spec, args.repeats, tuple(args.arms))
    n = matmul_params(SHAPES[args.shape])
    add_mfu(result, n, args.peak_tflops)
    out = {"shape": args.shape, "matmul_params": n, "peak_tflops": args.peak_tflops, "spec": spec,
           "machine": _machine(), "total_s": round(time.perf_counter() - t0, 1), "train": result}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    print("\n".join(train_summary(result)))
    for arm in result["tokens_per_s"]:
        print(f"{arm:<24} MFU median {result['mfu'][arm]['median']:.2%}  peak GPU MB {result['peak_gpu_mb'][arm]}")
    print(f"total {out['total_s']} s; JSON: {args.out}")
    return out


def _machine() -> dict:
    import torch

    info = {"torch": torch.__version__, "cuda": torch.cuda.is_available(), "python": sys.version.split()[0]}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    import transformers

    info["transformers"] = transformers.__version__
    return info


if __name__ == "__main__":
    main()
