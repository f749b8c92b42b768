"""`make bench-gpu`'s dry run: the GPU benchmark's code path on a tiny shape, on CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def test_bench_gpu_dry_run_trains_every_arm_on_the_same_rows(tmp_path, tiny_base):
    pytest.importorskip("trl", reason="the TRL arm needs the bench extra: pip install -e '.[bench]'")
    out = tmp_path / "bench-gpu.json"
    env = {**os.environ, "LORASHIP_BENCH_DIR": str(tmp_path / "work")}
    proc = subprocess.run([sys.executable, "-m", "benchmarks.bench_gpu", "--dry-run", "--tokenizer", str(tiny_base),
                           "--out", str(out)], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    train = result["train"]
    arms = train["rounds"][0]["arms"]
    assert set(arms) == {"loraship", "plain", "trl"}
    # the same rows, so the same non-padding tokens, in every arm
    assert len({a["train_tokens"] for a in arms.values()}) == 1 and arms["plain"]["train_tokens"] > 0
    assert len({a["rows"] for a in arms.values()}) == 1
    for arm in arms:
        assert train["tokens_per_s"][arm]["median"] > 0 and train["mfu"][arm]["median"] > 0
    assert result["matmul_params"] == 2 * (2 * 64 * 64 + 2 * 64 * 32 + 3 * 64 * 128)
    assert set(train["tokens_per_s_ratio"]) == {"loraship_vs_plain", "loraship_vs_trl"}
    assert arms["loraship"]["speed"]["gradient_checkpointing"]["enabled"] is False
    assert "MFU median" in proc.stdout and str(out) in proc.stdout


def test_the_0_5b_shape_has_the_issue_s_matmul_parameter_count():
    from benchmarks.bench_gpu import SHAPES, matmul_params

    assert round(matmul_params(SHAPES["0.5b"]) / 1e6) == 358
