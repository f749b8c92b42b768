"""bench-gate's trained models are reused only while they were trained on today's demo inputs:
a calibration of yesterday's demo must not pass for today's."""

from __future__ import annotations

import json
from pathlib import Path

import benchmarks.bench_gate as bg

from loraship.train import hparams


def _fake_training(monkeypatch):
    """Stands in for train+export (minutes each): it writes the manifest a real increment would,
    with the recipe today's code chooses; the cache logic under test is bench_gate's own."""
    trained = []
    for var in ("LORASHIP_HOME", "LORASHIP_PROJECT"):  # bench_gate points these at its homes; restored after
        monkeypatch.setenv(var, "unset")

    def train_export(home, batches, overrides):
        trained.append((home.name, [b.name for b in batches]))
        version = home / "runs" / "demo" / "v2"
        (version / "gguf").mkdir(parents=True, exist_ok=True)
        recipe = bg._recipe_today(home, overrides)
        (version / "manifest.json").write_text(json.dumps({"stages": {
            "train": {"hyperparameters": {k: recipe[k] for k in bg.RECIPE}},
            "data": {"replay_ratio": {"requested": recipe["replay_ratio"]},
                     "replay": {"selection": recipe["replay_selection"]}}}}))
        return {"version": "v2", "gguf": str(version / "gguf" / "model.gguf"), "train_s": 1.0, "steps": 1,
                "train_tokens": 1, "inputs": bg._inputs()}

    def prepare_home(home):
        (home / "train").mkdir(parents=True)
        (home / "train" / "demo.yaml").write_text(Path("train/demo.yaml").read_text())

    monkeypatch.setattr(bg, "_train_export", train_export)
    monkeypatch.setattr(bg, "_prepare_home", prepare_home)
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


def test_a_changed_increment_default_retrains_the_default_arm_only(monkeypatch, tmp_path):
    """The demo's files do not name the increment recipe: a default changed in the code must not
    leave the calibration measuring yesterday's default."""
    trained = _fake_training(monkeypatch)
    bg.from_base(1, "v1", bg.DATA[0], tmp_path)
    for name, overrides in (("default", {}), ("forget", bg.FORGET), ("l2", bg.VARIANTS["l2"])):
        bg.v2_model(1, name, overrides, tmp_path)
    monkeypatch.setattr(hparams, "INCREMENT_METHOD", "l2")
    for name, overrides in (("default", {}), ("forget", bg.FORGET), ("l2", bg.VARIANTS["l2"])):
        bg.v2_model(1, name, overrides, tmp_path)
    assert [name for name, _ in trained] == ["seed1-v1", "seed1-default", "seed1-forget", "seed1-l2", "seed1-default"]


def test_a_model_trained_again_is_answered_again(monkeypatch, tmp_path):
    trained = _fake_training(monkeypatch)
    first = bg.from_base(1, "v1", bg.DATA[0], tmp_path)
    spec = bg._answers_spec(first, "v1-1", [])
    (tmp_path / "seed1-v1" / "v1.json").unlink()
    monkeypatch.setattr(bg, "_train_export", lambda home, batches, overrides: {
        **{k: v for k, v in first.items() if k != "trained"},
        "gguf": first["gguf"].replace("/v2/", "/v2_20261207_010203/")})  # a new version folder
    again = bg.from_base(1, "v1", bg.DATA[0], tmp_path)
    assert len(trained) == 1 and bg._answers_spec(again, "v1-1", []) != spec
    assert bg._answers_spec(again, "v1-1", []) == bg._answers_spec(again, "v1-1", [])
