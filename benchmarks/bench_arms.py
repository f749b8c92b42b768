"""The arms `benchmarks.bench` runs, each in its own process: `python -m benchmarks.bench_arms ARM SPEC_JSON`.

Each prints one JSON line with its measurements. The plain arms use transformers,
peft and llama.cpp the way a hand-written script would, on the same model, data and
settings as the loraship arms.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import train_arms

DEMO_BASE = Path("bases/smollm2-135m-instruct")
DEMO_BATCHES = (Path("train/data/demo_batch1.jsonl"), Path("train/data/demo_batch2.jsonl"))
LORA = {"r": 8, "alpha": 16, "dropout": 0.05}
BATCH, ACCUM, LR = 4, 2, 2e-4


def machine() -> dict:
    import torch

    return {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "cuda": torch.cuda.is_available()}


def ensure_base(base: str | None, work: Path) -> Path:
    if base:
        return Path(base).resolve()
    if (DEMO_BASE / "config.json").exists():
        return DEMO_BASE.resolve()
    from loraship.base.tiny import build_tiny_model

    tiny = work / "tiny-base"
    return tiny if (tiny / "config.json").exists() else build_tiny_model(tiny)


def _rows(n: int, batch: int = 0) -> list[dict]:
    """n demo rows (cycled), read through the data stage's own normaliser."""
    from loraship.data.load import normalise

    rows = []
    for i, line in enumerate(DEMO_BATCHES[batch].read_text(encoding="utf-8").splitlines()):
        _, row = normalise(json.loads(line), f"r{i}", 1 << 20, "bench")
        rows.append({"messages": row["messages"], "topic": row["topic"]})
    return (rows * (n // len(rows) + 1))[:n]


def demo_rows_file(n: int, work: Path) -> Path:
    work.mkdir(parents=True, exist_ok=True)
    return _write(work / f"demo-rows-{n}.jsonl", _rows(n))


def _home(spec: dict, name: str) -> Path:
    home = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=spec["work"]))
    (home / "train").mkdir()
    cfg = (f"base_model: {spec['base']}\ntrain:\n  num_train_epochs: {spec['epochs']}\n  max_seq_length: {spec['max_seq_length']}\n"
           f"  lora_r: {LORA['r']}\n  lora_alpha: {LORA['alpha']}\n  per_device_train_batch_size: {BATCH}\n"
           f"  gradient_accumulation_steps: {ACCUM}\n  learning_rate: {LR}\n  early_stopping_patience: 0\n"
           "data:\n  split: [0.9, 0.1, 0.0]\n")
    (home / "train" / "bench.yaml").write_text(cfg)
    os.environ["LORASHIP_HOME"] = str(home / "runs")
    os.environ["LORASHIP_PROJECT"] = str(home)
    return home


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps({"messages": r["messages"], "topic": r.get("topic"), "id": f"r{i}"}) + "\n"
                            for i, r in enumerate(rows)))
    return path


def incremental(spec: dict) -> dict:
    from loraship import pipeline

    n = spec["rows"]
    home = _home(spec, "incr")
    cfg = pipeline.load_config("bench")
    a, b = _write(home / "a.jsonl", _rows(n, 0)), _write(home / "b.jsonl", _rows(n, 1))
    pipeline.stage_data("bench", cfg, [a], strict=False)
    pipeline.stage_train("bench", cfg)
    pipeline.stage_data("bench", cfg, [b], strict=False)
    v2 = pipeline.stage_train("bench", cfg).stage("train")
    scratch_home = _home(spec, "scratch")
    both = _write(scratch_home / "ab.jsonl", _rows(n, 0) + _rows(n, 1))
    pipeline.stage_data("bench", pipeline.load_config("bench"), [both], strict=False)
    full = pipeline.stage_train("bench", pipeline.load_config("bench")).stage("train")
    return {"increment_s": v2["runtime_s"], "increment_rows": v2["rows"]["train"],
            "scratch_s": full["runtime_s"], "scratch_rows": full["rows"]["train"]}


def export_prepare(spec: dict) -> dict:
    from loraship import pipeline

    home = _home(spec, "export")
    cfg = pipeline.load_config("bench")
    pipeline.stage_data("bench", cfg, [_write(home / "a.jsonl", _rows(16))], strict=False)
    pipeline.stage_train("bench", pipeline.load_config("bench", overrides={"train.num_train_epochs": 1}))
    return {"home": str(home)}


def _copy_home(spec: dict, name: str) -> Path:
    home = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=spec["work"]))
    shutil.copytree(spec["home"], home, dirs_exist_ok=True)
    os.environ["LORASHIP_HOME"] = str(home / "runs")
    os.environ["LORASHIP_PROJECT"] = str(home)
    return home


def export_loraship(spec: dict) -> dict:
    from loraship import pipeline

    _copy_home(spec, "export-loraship")
    _, rec = pipeline.stage_export("bench", pipeline.load_config("bench"), "v1")
    return {"timings_s": rec["timings_s"], "runtime_s": rec["runtime_s"],
            "base_hash_cached": rec["merge"].get("base_hash_cached", [])}


def export_plain(spec: dict) -> dict:
    import ctypes

    import llama_cpp
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from loraship.export import toolchain
    from loraship.store import versions

    home = _copy_home(spec, "export-plain")
    v = versions.get("bench", "v1")
    t0 = time.perf_counter()
    base = AutoModelForCausalLM.from_pretrained(spec["base"], dtype=torch.float32)
    merged = PeftModel.from_pretrained(base, v.path / "adapter").merge_and_unload()
    merged.save_pretrained(home / "merged")
    AutoTokenizer.from_pretrained(spec["base"]).save_pretrained(home / "merged")
    t1 = time.perf_counter()
    conv = toolchain.require_converter()
    env = {**os.environ, "PYTHONPATH": str(conv / "gguf-py")}
    subprocess.run([sys.executable, str(conv / "convert_hf_to_gguf.py"), str(home / "merged"), "--outfile",
                    str(home / "f16.gguf"), "--outtype", "f16"], check=True, env=env, capture_output=True)
    t2 = time.perf_counter()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M
    params.nthread = os.cpu_count() or 1  # as loraship's export does
    assert llama_cpp.llama_model_quantize(str(home / "f16.gguf").encode(), str(home / "q4.gguf").encode(),
                                          ctypes.byref(params)) == 0
    t3 = time.perf_counter()
    return {"timings_s": {"merge_and_save": round(t1 - t0, 2), "convert": round(t2 - t1, 2),
                          "quantize": round(t3 - t2, 2)}}


def compare(spec: dict) -> dict:
    from benchmarks.compare_arms import compare as run

    return run(spec, [r["messages"][0]["content"] for r in _rows(8)])


ARMS = {**train_arms.ARMS, **{f.__name__: f for f in (incremental, export_prepare, export_loraship, export_plain,
                                                      compare)}}

if __name__ == "__main__":
    spec = json.loads(sys.argv[2])
    Path(spec["work"]).mkdir(parents=True, exist_ok=True)
    print(json.dumps(ARMS[sys.argv[1]](spec)))
