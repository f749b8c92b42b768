"""bench-gate's trained models are reused only while they were trained on today's demo rows and
settings, and its answers only while the question and the served model are the same: a calibration
of yesterday's demo must not pass for today's, and a question added costs only its own answers."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

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
                     "replay": {"selection": recipe["replay_selection"], "each_epoch": recipe["replay_each_epoch"]}}}}))
        return {"version": "v2", "gguf": str(version / "gguf" / "model.gguf"), "train_s": 1.0, "steps": 1,
                "train_tokens": 1, "trained_on": bg._training_inputs()}

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

    monkeypatch.setattr(bg, "_training_inputs", lambda: "another demo")
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


class _Backend:
    """Stands in for llama.cpp answering a GGUF: it says the reference, and records what was asked."""

    asked: list[str] = []

    def __init__(self, **kw):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def answer(self, candidate, msgs, options):
        _Backend.asked.append(msgs[-1]["content"])
        return "It is green."

    def samples(self, candidate, msgs, options, seeds):
        return ["It is green." if s % 2 else "It is red." for s in seeds]


def _q(qid: str, question: str, facts=("green",)):
    return SimpleNamespace(id=qid, question=question, reference="It is green.", facts=list(facts), knowledge="old")


def _answer(monkeypatch, model, questions, cells):
    from loraship.evaluate import backends

    monkeypatch.setattr(backends, "LlamaCppBackend", _Backend)
    _Backend.asked = []
    cfg = bg._demo_config(Path("train/demo.yaml").read_text())
    return bg.answers(model, questions, cfg, cells, "v1-1"), list(_Backend.asked)


def test_a_question_is_asked_once_per_model_and_again_only_when_it_changed(monkeypatch, tmp_path):
    _fake_training(monkeypatch)
    model = bg.from_base(1, "v1", bg.DATA[0], tmp_path)
    a, b = _q("a", "What colour is kessrite?"), _q("b", "What colour is orvalite?")
    first, asked = _answer(monkeypatch, model, [a, b], tmp_path / "cells")
    assert asked == [a.question, b.question] and first["greedy"] == {"a": 100.0, "b": 100.0}
    assert first["samples"]["a"] == [100.0 if s % 2 else 0.0 for s in range(8, 16)]
    c = _q("c", "What colour is durgite?")
    more, asked = _answer(monkeypatch, model, [a, b, c], tmp_path / "cells")
    assert asked == [c.question]  # only the added question
    assert more["samples"]["a"] == first["samples"]["a"]
    _, asked = _answer(monkeypatch, model, [a, _q("b", b.question, facts=("violet",))], tmp_path / "cells")
    assert asked == [b.question]  # its facts changed: scored anew
    fewer, asked = _answer(monkeypatch, model, [c], tmp_path / "cells")
    assert asked == [] and set(fewer["greedy"]) == {"c"} and fewer["answer_s"] == fewer["seconds"]["c"]


def test_a_model_trained_again_is_answered_again(monkeypatch, tmp_path):
    trained = _fake_training(monkeypatch)
    first = bg.from_base(1, "v1", bg.DATA[0], tmp_path)
    a = _q("a", "What colour is kessrite?")
    _answer(monkeypatch, first, [a], tmp_path / "cells")
    (tmp_path / "seed1-v1" / "v1.json").unlink()
    monkeypatch.setattr(bg, "_train_export", lambda home, batches, overrides: {
        **{k: v for k, v in first.items() if k != "trained"},
        "gguf": first["gguf"].replace("/v2/", "/v2_20261207_010203/")})  # a new version folder
    again = bg.from_base(1, "v1", bg.DATA[0], tmp_path)
    assert len(trained) == 1
    _, asked = _answer(monkeypatch, again, [a], tmp_path / "cells")
    assert asked == [a.question]


def test_models_are_kept_when_only_the_held_out_split_or_compare_settings_change():
    """Moving held-out rows from val to test (the train split's rows are the same) or asking more
    of them changes the questions, not the models; a change to what trains retrains."""
    text = Path("train/demo.yaml").read_text()
    assert "split: [0.7, " in text and "compare:" in text
    today = bg._training_inputs(text)
    more_test = re.sub(r"split: \[0\.7, [0-9.]+, [0-9.]+\]", "split: [0.7, 0.1, 0.2]", text)
    assert more_test != text and bg._training_inputs(more_test) == today
    assert bg._training_inputs(text.replace("compare:\n", "compare:\n  max_test_rows: 99\n")) == today
    assert bg._training_inputs(re.sub(r"split: \[[^]]+\]", "split: [0.6, 0.2, 0.2]", text)) != today  # other training rows
    assert bg._training_inputs(text.replace("learning_rate: 2.0e-3", "learning_rate: 1.0e-3")) != today
