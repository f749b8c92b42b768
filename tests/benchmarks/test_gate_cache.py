"""bench-gate's trained models are reused only while they were trained on today's demo inputs:
a calibration of yesterday's demo must not pass for today's."""

from __future__ import annotations

import benchmarks.bench_gate as bg


def _fake_training(monkeypatch):
    """Stands in for train+export (minutes each); the cache logic under test is bench_gate's own."""
    trained = []

    def train_export(home, batches, overrides):
        trained.append((home.name, [b.name for b in batches]))
        return {"version": "v1", "gguf": str(home / "model.gguf"), "train_s": 1.0, "steps": 1,
                "train_tokens": 1, "inputs": bg._inputs()}

    monkeypatch.setattr(bg, "_train_export", train_export)
    monkeypatch.setattr(bg, "_prepare_home", lambda home: home.mkdir(parents=True))
    return trained


def test_models_retrain_when_the_demo_inputs_change(monkeypatch, tmp_path):
    trained = _fake_training(monkeypatch)
    bg.from_base(1, "v1", bg.DATA[0], tmp_path)
    bg.v2_model(1, "default", {}, tmp_path)
    assert [name for name, _ in trained] == ["seed1-v1", "seed1-default"]
    # what make demo trains on: each batch with its paraphrase rows
    assert trained[0][1] == ["demo_batch1.jsonl", "demo_batch1_paraphrases.jsonl"]
    assert trained[1][1] == ["demo_batch2.jsonl", "demo_batch2_paraphrases.jsonl"]

    bg.from_base(1, "v1", bg.DATA[0], tmp_path)
    bg.v2_model(1, "default", {}, tmp_path)
    assert len(trained) == 2  # same inputs: both cached

    monkeypatch.setattr(bg, "_inputs", lambda: "another demo")
    bg.from_base(1, "v1", bg.DATA[0], tmp_path)
    bg.v2_model(1, "default", {}, tmp_path)
    assert [name for name, _ in trained[2:]] == ["seed1-v1", "seed1-default"]


def test_a_v2_is_trained_again_when_its_v1_was(monkeypatch, tmp_path):
    trained = _fake_training(monkeypatch)
    bg.from_base(1, "v1", bg.DATA[0], tmp_path)
    bg.v2_model(1, "forget", bg.FORGET, tmp_path)
    (tmp_path / "seed1-v1" / "v1.json").unlink()  # v1 lost (killed run): trained again
    bg.from_base(1, "v1", bg.DATA[0], tmp_path)
    bg.v2_model(1, "forget", bg.FORGET, tmp_path)
    assert [name for name, _ in trained] == ["seed1-v1", "seed1-forget", "seed1-v1", "seed1-forget"]
