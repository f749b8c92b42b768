"""`make bench-gate`: is the gate right, and can it decide? Calibrated on the demo model.

Per training seed s (FIRST_SEED ...), everything as `make demo` does it (train/demo.yaml, and
each batch with its paraphrase rows, demo.BATCHES):
  v1       batch 1 from the base, training seed s, exported to Q4_K_M
  default  v2 on batch 2 from that v1 with the shipped increment defaults (what the demo ships)
  forget   v2 from that v1 with no replay and plain cross-entropy (the forgetting benchmark's
           plain replay lost about 25 old points at 20% replay; without replay it forgets more):
           a candidate the gate must FAIL
  retrain  one version from the base on batch 1 and batch 2 together, the same recipe (epochs,
           rate, batch): the continual-learning literature's bar (Ibrahim et al. 2024: replay
           plus a re-warmed rate matches retraining on all data) for the incremental v2
  recipes  v2 on batch 2 from the same v1 with another increment recipe (VARIANTS: plain replay,
           the L2 pull alone, a weaker pull, replay drawn again each epoch), for the retrain
           seeds: what the default's pull toward v1 costs in new facts and time, each against
           the same retrain
and one v1 more (seed FIRST_SEED + seeds), so each v1 has a *null* partner: v1 of the next seed,
retrained on the same data with another seed (different weights, the same knowledge). The
gate must not judge a null partner to have lost old knowledge. Batch 1 and 2 share no topic and
the split is per topic with the data seed, so the retrain's test rows are exactly v1's and v2's.

Every model answers the questions `make demo` compares on (ollama/questions/demo.yaml plus
the held-out test rows of today's split: batch 2's as new, batch 1's as old) once, from its
exported GGUF through loraship's llama.cpp backend: one greedy answer and K_MAX answers sampled
at the served temperature with the seeds compare uses. The gate's statistics (evaluate/stats.py,
evaluate/gate.decide) are then applied offline to every pair, for the greedy measure and for
the sampled one at each k in K_LIST (the first k of the K_MAX samples) and each threshold in
LOSS_THRESHOLDS (benchmarks/gate_calibration.py). Each model is cached in <out>/gate-work/
under what decides its weights (`_training_inputs`) and its recipe, and its answers per
question in <out>/gate-cells/, so a killed run resumes where it stopped and a question added
is asked alone.

Writes <out>/gate-calibration.json and gate-calibration.md; --docs also copies the JSON into
docs/ and replaces the table in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

from benchmarks.bench_arms import DEMO_BASE
from benchmarks.bench_forgetting import (
    SHIPPED_DATA,
    Batches,
    _prepare_home,
    _save,
    _say,
    _use_home,
    write_docs_section,
)
from benchmarks.demo_facts import row_tokens, teaches
from benchmarks.gate_calibration import K_LIST, calibrate, table

# What `make demo` trains on (each batch and its paraphrase rows): the calibration is of the demo
# as it ships, so a change to its data or config retrains every model (see _inputs).
DATA: Batches = SHIPPED_DATA

FIRST_SEED = 20251101
K_MAX = max(K_LIST)
FORGET = {"data.replay_ratio": 0.0, "data.allow_replay_ratio_outside_range": True, "train.increment_method": "replay"}
# Increment recipes measured beside the default against the retrain, all at the demo's 30% replay:
# the default (distill+l2) kept old facts as well as a retrain but learned ~25 points fewer new
# ones, and the forgetting matrix put 21-23 of those points on its pull toward v1.
# Then with the replay budget spread over distinct facts (data.replay_selection: diverse): with a
# random draw, the old facts that lost points were those none of whose rows was replayed.
DIVERSE = {"data.replay_selection": "diverse"}
# Then with the replay drawn again for every epoch (data.replay_each_epoch): every old row is
# replayed over the epochs, at one draw's cost (the retrain sees them all in every epoch).
EACH_EPOCH = {"data.replay_each_epoch": True}
VARIANTS = {
    "replay": {"train.increment_method": "replay"},  # no pull: replay alone keeps the old facts
    "l2": {"train.increment_method": "l2"},  # the pull without distillation's parent forward pass
    "l2-0.01": {"train.increment_method": "l2", "train.l2_weight": 0.01},  # a third of the pull
    "distill+l2-0.01": {"train.increment_method": "distill+l2", "train.l2_weight": 0.01},  # the default, less pull
    "l2-0.01-diverse": {"train.increment_method": "l2", "train.l2_weight": 0.01, **DIVERSE},
    "replay-diverse": {"train.increment_method": "replay", **DIVERSE},
    "distill+l2-diverse": {"train.increment_method": "distill+l2", **DIVERSE},
    "replay-each-epoch": {"train.increment_method": "replay", **EACH_EPOCH},
    "l2-0.01-each-epoch": {"train.increment_method": "l2", "train.l2_weight": 0.01, **EACH_EPOCH},
    "l2-0.003-each-epoch": {"train.increment_method": "l2", "train.l2_weight": 0.003, **EACH_EPOCH},
}
RECIPE = ("increment_method", "distill_weight", "l2_weight")  # what an increment is trained with
EVAL = f"Q4_K_M via llama.cpp, greedy + {K_MAX} samples at the served temperature"


def _questions():
    """The questions `make demo` compares v2 on: the fixed set plus the held-out test rows of
    today's split (batch 2's as new, batch 1's as old), and the config that asks them."""
    from loraship.data import prepare as data
    from loraship.evaluate import compare

    cfg = _demo_config(Path("train/demo.yaml").read_text())
    qs = compare.load_questions(Path("ollama/questions") / f"{cfg.compare.questions}.yaml")
    with _scratch_data(cfg) as root:
        qs += compare.questions_from_rows(data.load_rows(root / "v2" / "test.jsonl"), "new", "test:v2",
                                          cfg.compare.max_test_rows, cfg.compare.seed)
        qs += compare.questions_from_rows(data.load_rows(root / "v2" / "old_test.jsonl"), "old", "test:ancestors",
                                          cfg.compare.max_test_rows, cfg.compare.seed)
    return qs, cfg


@contextmanager
def _scratch_data(cfg):
    """Today's data stage on the demo's batches in a scratch folder: v1 (batch 1), v2 (batch 2 on
    v1) and the retrain (both) as version folders (their data/ files) under the yielded root."""
    import tempfile

    from loraship.data.prepare import EarlierVersion, prepare

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        prepare([b.resolve() for b in DATA[0]], [], cfg.data, root / "v1", version_id="v1")
        prepare([b.resolve() for b in DATA[1]], [EarlierVersion("v1", root / "v1", True)], cfg.data, root / "v2",
                version_id="v2")
        prepare([b.resolve() for b in DATA[0] + DATA[1]], [], cfg.data, root / "retrain", version_id="v1")
        yield root


def _train_export(home: Path, batches: list[Path], overrides: dict) -> dict:
    from loraship import pipeline
    from loraship.store import versions

    inputs = _training_inputs()  # before training: what it was trained on, even if a file changes meanwhile
    _use_home(home)
    cfg = pipeline.load_config("demo", overrides=overrides)
    pipeline.stage_data("demo", cfg, [b.resolve() for b in batches], warn=lambda s: None)
    version = pipeline.stage_train("demo", cfg)
    _, rec = pipeline.stage_export("demo", cfg, version.id)
    train = versions.get("demo", version.id).stage("train")
    return {"version": version.id, "gguf": str(version.path / next(iter(rec["ggufs"].values()))),
            "train_s": train["runtime_s"], "steps": train.get("global_steps"),
            "train_tokens": train.get("train_tokens"), "trained_on": inputs}


_TRAINING_INPUTS: dict[str, str] = {}


def _training_inputs(config_text: str | None = None) -> str:
    """What decides a model's weights and GGUF, and nothing else: the demo config without its
    `compare` section and split fractions, and the rows each version trains on (today's data stage
    on the demo's batches, in a scratch folder: v1, the default v2 on it, the retrain), with the
    val rows where they can pick the epoch kept. The questions, the compare settings and which
    held-out rows are val or test decide only the answers, which the cells key per question; so
    a demo that holds out more test rows from the same training rows keeps its models."""
    import hashlib

    import yaml

    from loraship.data.prepare import FINAL, POOL, VAL

    config_text = Path("train/demo.yaml").read_text() if config_text is None else config_text
    key = hashlib.sha256(config_text.encode() + b"".join(p.read_bytes() for b in DATA for p in b)).hexdigest()
    if key in _TRAINING_INPUTS:
        return _TRAINING_INPUTS[key]
    config = yaml.safe_load(config_text)
    config.pop("compare", None)
    config.get("data", {}).pop("split", None)
    h = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
    cfg = _demo_config(config_text)
    with _scratch_data(cfg) as root:
        picks_epoch = cfg.train.load_best_epoch or cfg.train.early_stopping_patience > 0
        for version in ("v1", "v2", "retrain"):
            for name in (FINAL, POOL) + ((VAL,) if picks_epoch else ()):
                if (root / version / name).exists():
                    h.update(f"{version}/{name}".encode() + (root / version / name).read_bytes())
    _TRAINING_INPUTS[key] = h.hexdigest()[:16]
    return _TRAINING_INPUTS[key]


def _demo_config(config_text: str):
    """The demo's config as loraship reads it (outside any bench home)."""
    import tempfile

    from loraship import config as config_mod

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "demo.yaml"
        path.write_text(config_text)
        return config_mod.load(path)


def _cached_model(done: Path) -> dict | None:
    """A finished model's record, or None when it was trained on other rows or settings than
    today's (`_training_inputs`). Steps and tokens are read from its version's manifest where the
    record predates them (they are what compares training cost whatever else ran beside it)."""
    if not done.exists():
        return None
    rec = json.loads(done.read_text())
    if rec.get("trained_on") != _training_inputs():
        _say(f"{done.parent.name}: trained on other demo rows or settings; training it again")
        return None
    if "steps" not in rec:
        train = _manifest(rec)["stages"]["train"]
        rec.update(steps=train.get("global_steps"), train_tokens=train.get("train_tokens"))
    return rec


def _version_dir(rec: dict) -> Path:
    """The version folder a model record's GGUF was exported into (runs/demo/<version>/gguf/)."""
    return Path(rec["gguf"]).parents[1]


def _manifest(rec: dict) -> dict:
    return json.loads((_version_dir(rec) / "manifest.json").read_text())


def from_base(seed: int, name: str, batches: list[Path], work: Path) -> dict:
    """One version trained from the base on `batches` (v1: batch 1; retrain: both), exported."""
    home = work / f"seed{seed}-{name}"
    done = home / f"{name}.json"
    if rec := _cached_model(done):
        return rec
    shutil.rmtree(home, ignore_errors=True)
    _prepare_home(home)
    # a fresh id per training, so a v2 can tell that the v1 it was built on was trained again
    return _save(done, {**_train_export(home, batches, {"train.seed": seed}), "trained": uuid.uuid4().hex})


def _recipe_trained(rec: dict) -> dict:
    """The increment recipe a cached v2 was trained with, from its version's manifest."""
    manifest = _manifest(rec)
    hp = manifest["stages"]["train"]["hyperparameters"]
    data = manifest["stages"]["data"]
    return _recipe(hp, data["replay_ratio"]["requested"],
                   data["replay"].get("selection", "random"),  # (random before there was a choice)
                   bool(data["replay"].get("each_epoch")))


def _recipe_today(home: Path, overrides: dict) -> dict:
    """The recipe today's code and config would train this v2 with: a changed default (in
    train/hparams.py, not in the demo's files) must retrain the default arm too."""
    from loraship import pipeline
    from loraship.train import hparams

    _use_home(home)
    cfg = pipeline.load_config("demo", overrides=overrides)
    values, _ = hparams.choose(cfg.train, 1, is_increment=True, device="cpu", strategy=cfg.train.strategy)
    return _recipe(values, cfg.data.replay_ratio, cfg.data.replay_selection, cfg.data.replay_each_epoch)


def _recipe(hyperparameters: dict, replay_ratio: float, selection: str, each_epoch: bool) -> dict:
    # without replay there is nothing to select or draw again
    return {**{k: hyperparameters[k] for k in RECIPE}, "replay_ratio": replay_ratio,
            "replay_selection": selection if replay_ratio else None,
            "replay_each_epoch": bool(each_epoch and replay_ratio)}


def v2_model(seed: int, name: str, overrides: dict, work: Path) -> dict:
    home = work / f"seed{seed}-{name}"
    done = home / "v2.json"
    v1 = json.loads((work / f"seed{seed}-v1" / "v1.json").read_text()).get("trained")
    if (rec := _cached_model(done)) and rec.get("v1") == v1:  # (a v1 trained again makes its v2s stale)
        if _recipe_trained(rec) == _recipe_today(work / f"seed{seed}-v1", overrides):
            return rec
        _say(f"{home.name}: trained with another increment recipe than today's; training it again")
    shutil.rmtree(home, ignore_errors=True)
    shutil.copytree(work / f"seed{seed}-v1", home)
    (home / "v1.json").unlink()
    rec = _train_export(home, DATA[1], {"train.seed": seed, **overrides})
    return _save(done, {**rec, "v1": v1})


def answers(model: dict, questions, cfg, cells: Path, key: str) -> dict:
    """Greedy accuracy and K_MAX sampled accuracies per question. Cached per question: a question
    is asked again only when its text, reference or facts changed, or the model or how it is
    served did; a question added to the set is asked of every cached model alone."""
    from loraship.evaluate import compare, sampling, scoring
    from loraship.evaluate.backends import LlamaCppBackend
    from loraship.evaluate.candidate import Candidate

    measure = sampling.choose(_with_samples(cfg.compare, K_MAX), cfg.ollama.temperature)
    greedy_opts = compare.options_for(cfg.compare)
    sample_opts = sampling.options(greedy_opts, measure)
    spec = _answers_spec(model, key, cfg, greedy_opts, measure.record())
    path = cells / f"{key}.json"
    rec = _cell(path, spec)
    todo = [q for q in questions if rec["asked"].get(q.id) != _asked(q)]
    if todo:
        c = Candidate(key, "v1", gguf_path=Path(model["gguf"]))
        with LlamaCppBackend(n_ctx=cfg.ollama.num_ctx or 2048, n_threads=os.cpu_count()) as backend:
            for q in todo:
                t0 = time.time()
                msgs = ([{"role": "system", "content": cfg.ollama.system}] if cfg.ollama.system else []) + \
                       [{"role": "user", "content": q.question}]
                rec["greedy"][q.id] = scoring.accuracy(backend.answer(c, msgs, greedy_opts), q.reference, q.facts)[0]
                texts = backend.samples(c, msgs, sample_opts, list(measure.seeds))
                rec["samples"][q.id] = [scoring.accuracy(t, q.reference, q.facts)[0] for t in texts]
                rec["seconds"][q.id] = round(time.time() - t0, 2)
                rec["asked"][q.id] = _asked(q)
        _save(path, rec)
    ids = [q.id for q in questions]
    return {**{part: {i: rec[part][i] for i in ids} for part in ("greedy", "samples", "seconds", "asked")},
            "spec": spec, "answer_s": round(sum(rec["seconds"][i] for i in ids), 1), "asked_now": len(todo)}


def _asked(q) -> str:
    """A question as the model is asked it and its answer scored."""
    import hashlib

    return hashlib.sha256(json.dumps([q.question, q.reference, list(q.facts)]).encode()).hexdigest()[:16]


def _cell(path: Path, spec: dict) -> dict:
    """A model's cell: its answers so far when they are of this model served this way, else empty."""
    empty = {"spec": spec, "greedy": {}, "samples": {}, "seconds": {}, "asked": {}}
    if not path.exists():
        return empty
    rec = json.loads(path.read_text())
    return rec if rec.get("spec") == spec else empty


def _answers_spec(model: dict, key: str, cfg, options: dict, measure: dict) -> dict:
    """What a model's cached answers are of, apart from the questions. The GGUF is named by its
    version folder, which carries the training's timestamp: a model trained again (its v1 was, or
    its recipe changed) under the same key must be answered again, not read from the last one's
    cell; the serving settings are what the demo's compare would ask with."""
    gguf = f"{_version_dir(model).name}/{Path(model['gguf']).name}"
    serving = {"system": cfg.ollama.system, "num_ctx": cfg.ollama.num_ctx, "greedy": options, "sampled": measure}
    return {"model": key, "gguf": gguf, "eval": EVAL, "serving": serving}


def _with_samples(compare_cfg, k: int):
    from dataclasses import replace

    return replace(compare_cfg, samples=k)


def run(seeds: int, out: Path, retrain_seeds: int, variants: list[str]) -> dict:
    work, cells = (out / "gate-work").resolve(), (out / "gate-cells").resolve()
    seed_list = list(range(FIRST_SEED, FIRST_SEED + seeds + 1))  # the last v1 is only a null partner
    models: dict[str, dict] = {}
    questions = cfg = None
    for i, seed in enumerate(seed_list):
        t0 = time.time()
        models[f"v1/{seed}"] = from_base(seed, "v1", DATA[0], work)
        if i < seeds:
            models[f"default/{seed}"] = v2_model(seed, "default", {}, work)
            models[f"forget/{seed}"] = v2_model(seed, "forget", FORGET, work)
        if questions is None:
            questions, cfg = _questions()
        _say(f"seed {seed}: trained and exported ({time.time() - t0:.0f} s)")
        _answer_all(models, seed, questions, cfg, cells)
    for seed in seed_list[:min(retrain_seeds, seeds)]:  # after the calibration's models: the arm comes second
        models[f"retrain/{seed}"] = from_base(seed, "retrain", DATA[0] + DATA[1], work)
        for name in variants:
            models[f"{name}/{seed}"] = v2_model(seed, name, VARIANTS[name], work)
        _answer_all(models, seed, questions, cfg, cells)
    for key, model in models.items():
        if key.split("/")[0] not in ("v1", "retrain"):
            model["replayed"] = replayed_questions(model, questions)
    sides = {q.id: q.knowledge for q in questions}
    return calibrate(models, sides, seed_list, cfg.gate, variants)


def replayed_questions(model: dict, questions) -> list[str]:
    """The old questions whose fact a row of this v2's replay set teaches (none without replay);
    with replay drawn again each epoch, a row any epoch replayed."""
    from loraship.data.prepare import load_rows
    from loraship.train.replay_epochs import draws_for

    data_dir = _version_dir(model) / "data"
    final = load_rows(data_dir / "incremental_replay_final.jsonl")
    stages = _manifest(model)["stages"]
    draws = draws_for(data_dir, stages["data"], final, stages["train"]["hyperparameters"]["num_train_epochs"])
    replayed = [r for d in draws.per_epoch for r in d] if draws else [r for r in final if r["origin"] == "replay"]
    taught = [row_tokens(r) for r in replayed]
    return [q.id for q in questions if q.knowledge == "old" and any(teaches(q.question, q.facts, t) for t in taught)]


def _answer_all(models: dict, seed: int, questions, cfg, cells: Path) -> None:
    for key in [k for k in models if k.endswith(f"/{seed}") and "answers" not in models[k]]:
        t1 = time.time()
        models[key]["answers"] = answers(models[key], questions, cfg, cells, key.replace("/", "-"))
        _say(f"  {key}: {models[key]['answers']['asked_now']} of {len(questions)} questions asked now, the rest "
             f"cached ({time.time() - t1:.0f} s)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=5, help="training seeds (default 5; one v1 more is trained as "
                    "the last seed's null partner)")
    ap.add_argument("--retrain-seeds", type=int, default=3, help="seeds that also get the retrain arm (one version "
                    "on both batches), trained after every calibration model (default 3; 0 leaves it out)")
    ap.add_argument("--variants", default=",".join(VARIANTS),
                    help=f"increment recipes trained beside the default on the retrain seeds and compared with "
                    f"the retrain (comma-separated, default all: {', '.join(VARIANTS)}; 'none' leaves them out)")
    ap.add_argument("--out", type=Path, default=Path("bench-results"))
    ap.add_argument("--docs", action="store_true", help="copy the JSON into docs/ and update docs/benchmarks.md")
    args = ap.parse_args()
    if not (DEMO_BASE / "config.json").exists():
        sys.exit("the demo base is not built: run `make base-demo` (or `make demo`) first")
    if args.seeds < 2:
        sys.exit("--seeds: at least 2 (rates over one seed say nothing)")
    variants = [] if args.variants == "none" else [v.strip() for v in args.variants.split(",") if v.strip()]
    if unknown := [v for v in variants if v not in VARIANTS]:
        sys.exit(f"--variants: unknown {', '.join(unknown)}; choose from {', '.join(VARIANTS)} (or 'none')")
    report = run(args.seeds, args.out, args.retrain_seeds, variants)
    md = table(report)
    args.out.mkdir(parents=True, exist_ok=True)
    _save(args.out / "gate-calibration.json", report)
    (args.out / "gate-calibration.md").write_text(md + "\n")
    print(md)
    if args.docs:
        write_docs_section("gate-calibration", md, args.out, ("gate-calibration.json",))


if __name__ == "__main__":
    main()
