"""The demo dataset: both batches pass the data stage cleanly, and the fixed questions are answerable.

`make demo` trains v1 on batch 1 and v2 on batch 2, then compares them on
ollama/questions/demo.yaml. That comparison only means something if every fact a fixed
question asks for was in the training split of the right batch: "old" facts in v1's,
"new" facts in v2's (and not taught by v1 already).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from benchmarks.demo_facts import row_tokens, subject, teaches

from loraship import config as config_mod
from loraship import demo
from loraship.data.load import read_input
from loraship.data.prepare import EarlierVersion, load_rows, prepare
from loraship.evaluate.compare import load_questions
from loraship.evaluate.scoring import fact_found, tokens

REPO = Path(__file__).resolve().parents[2]
BATCH1, BATCH2 = ([REPO / f for f in files] for files in demo.BATCHES)  # what `make demo` trains on
QUESTIONS = REPO / "ollama" / "questions" / "demo.yaml"
CONFIG = REPO / "train" / "demo.yaml"
TOPICS = {"v1": {"minerals", "sites"}, "v2": {"survey-methods", "history"}}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """v1 from batch 1, then v2 from batch 2 on top of it, with the demo model's own data config."""
    cfg = config_mod.load(CONFIG).data
    root = tmp_path_factory.mktemp("demo-data")
    v1 = prepare(BATCH1, [], cfg, root / "v1", version_id="v1", strict=True)
    v2 = prepare(BATCH2, [EarlierVersion("v1", root / "v1", True)], cfg, root / "v2",
                 version_id="v2", strict=True)
    return {"v1": (v1, root / "v1"), "v2": (v2, root / "v2")}


def answers(path: Path) -> list[list[str]]:
    """Assistant turns of a normalised JSONL, tokenised the way the scorer reads answers."""
    return [tokens(m["content"]) for r in load_rows(path) for m in r["messages"] if m["role"] == "assistant"]


def rows(path: Path) -> list[tuple[list[str], list[str]]]:
    """(all tokens of the row, assistant tokens) per row of a normalised JSONL."""
    return [row_tokens(r) for r in load_rows(path)]


@pytest.mark.parametrize("version,prefix", [("v1", "b1-"), ("v2", "b2-")])
def test_batches_are_clean_and_sized(prepared, version, prefix):
    summary, _ = prepared[version]
    c = summary["counts"]
    assert c["invalid"] == 0
    assert c["duplicates_in_new"] == c["duplicates_vs_earlier"] == c["leaked_test_rows_dropped"] == 0
    assert 110 <= c["new_kept"] <= 140  # 2-3 rows per fact in the batch, 2 more in its paraphrases
    new_topics = {t["topic"] for t in summary["per_topic"] if t["train"] + t["val"] + t["test"]}
    assert new_topics == TOPICS[version]
    assert all(t["train"] and t["test"] for t in summary["per_topic"] if t["topic"] in TOPICS[version])
    # The demo shows all three input formats being accepted.
    assert set(summary["formats"]) == {"qa", "instruction", "chat"}
    assert summary["formats"]["qa"] > summary["formats"]["instruction"] > 0
    ids = [r["id"] for r in load_rows(prepared[version][1] / "incremental_replay_final.jsonl")
           if r["origin"] == "new"]
    assert ids and all(i.startswith(prefix) for i in ids)


def test_v2_replays_v1_rows(prepared):
    summary, _ = prepared["v2"]
    assert summary["counts"]["replayed"] > 0
    assert summary["replay"]["per_version"] == {"v1": summary["counts"]["replayed"]}
    assert summary["counts"]["old_test"] == prepared["v1"][0]["counts"]["test"]


def test_question_set_has_old_and_new():
    qs = load_questions(QUESTIONS)
    # 30 per side: one question then moves a side's accuracy by ~3 points, not 14.
    assert sum(q.knowledge == "old" for q in qs) >= 30
    assert sum(q.knowledge == "new" for q in qs) >= 30
    assert len({q.question.lower() for q in qs}) == len(qs), "a question is asked twice"
    assert all(q.facts and q.reference and q.domain for q in qs)
    for q in qs:  # the reference answer itself must score full marks
        assert all(fact_found(f, tokens(q.reference)) for f in q.facts), q.id
    domains = {q.domain for q in qs}
    assert domains == TOPICS["v1"] | TOPICS["v2"]


def test_every_fixed_fact_is_taught_by_the_right_version(prepared):
    """old -> in v1's training split; new -> in v2's own training split and nowhere in batch 1.

    The teaching row must name the question's subject too: "6" in a row about orvalite does
    not teach kessrite's hardness.
    """
    v1_dir, v2_dir = prepared["v1"][1], prepared["v2"][1]
    taught = {"old": rows(v1_dir / "train.jsonl"), "new": rows(v2_dir / "train.jsonl")}
    batch1 = [a for split in ("train", "val", "test") for a in answers(v1_dir / f"{split}.jsonl")]
    problems = []
    for q in load_questions(QUESTIONS):
        about = subject(q.question)
        for fact in q.facts:
            if not any(fact_found(fact, said) and about <= set(text) for text, said in taught[q.knowledge]):
                problems.append(f"{q.id}: no row of the {q.knowledge} training split says {fact!r} about {sorted(about)}")
            if q.knowledge == "new" and any(fact_found(fact, a) for a in batch1):
                problems.append(f"{q.id}: {fact!r} is already in batch 1, so v1 knows it too")
    assert not problems, problems


def test_config_points_at_the_demo_files():
    cfg = config_mod.load(CONFIG)
    assert cfg.base_model == "bases/smollm2-135m-instruct"
    assert cfg.compare.questions == "demo"
    assert cfg.export.quants == ["Q4_K_M"]
    assert cfg.ollama.system and "Varnholt Basin" in cfg.ollama.system
    assert CONFIG.read_text(encoding="utf-8").startswith("# make demo")


def test_every_fixed_fact_is_stated_by_several_rows_in_more_than_one_wording():
    """A fact stated by two rows can land wholly in val or test, and a 135M model answers a fact
    mostly in the direction and wording it was taught (bench-learning: 56% of v1's facts from
    2-3 rows a fact, 85% with the paraphrases). So each fact has at least 3 rows naming its
    subject, asked in at least 3 different questions."""
    rows_of = {side: [p.row for i, f in enumerate(files) for p in read_input(f, i, f.stem, 100_000, "v")[0]]
               for side, files in (("old", BATCH1), ("new", BATCH2))}
    problems = []
    for q in load_questions(QUESTIONS):
        about = subject(q.question)
        rows = rows_of[q.knowledge]
        stating = [r for r in rows if all(fact_found(fact, tokens(turns(r, "assistant"))) for fact in q.facts)
                   and about <= set(tokens(turns(r, "user") + " " + turns(r, "assistant")))]
        if len(stating) < 3 or len({turns(r, "user").lower() for r in stating}) < 3:
            problems.append(f"{q.id}: {len(stating)} rows state {q.facts} about {sorted(about)}")
    assert not problems, problems


def turns(row: dict, role: str) -> str:
    """A normalised row's turns of one role, joined."""
    return " ".join(m["content"] for m in row["messages"] if m["role"] == role)


def test_diverse_replay_carries_a_row_of_almost_every_old_fact(prepared, tmp_path):
    """v2's replay budget (30%: 36 of v1's 95 training rows) spent on distinct facts: the old
    facts an increment forgets are those none of whose rows it replays (`make bench-gate`)."""
    from dataclasses import replace

    cfg = config_mod.load(CONFIG).data
    old = [q for q in load_questions(QUESTIONS) if q.knowledge == "old"]
    covered = {}
    for selection in ("random", "diverse"):
        out = tmp_path / selection
        prepare(BATCH2, [EarlierVersion("v1", prepared["v1"][1], True)], replace(cfg, replay_selection=selection),
                out, version_id="v2", strict=True)
        taught = [row_tokens(r) for r in load_rows(out / "incremental_replay_final.jsonl") if r["origin"] == "replay"]
        covered[selection] = sum(any(teaches(q.question, q.facts, t) for t in taught) for q in old)
    assert covered["diverse"] >= len(old) - 1 and covered["diverse"] > covered["random"], covered


def test_the_demo_compares_on_every_held_out_row(prepared):
    """The gate's intervals narrow with questions, so every row the demo holds out of training as a
    test row is asked (none is dropped by compare.max_test_rows), and the val split, which only the
    export's quantization check reads (the demo keeps its last epoch), still has rows for it."""
    cfg = config_mod.load(CONFIG)
    assert not cfg.train.load_best_epoch and cfg.train.early_stopping_patience == 0
    for version in ("v1", "v2"):
        counts = prepared[version][0]["counts"]
        assert 0 < counts["test"] <= cfg.compare.max_test_rows, (version, counts["test"])
        assert counts["val"] >= 5, (version, counts["val"])
