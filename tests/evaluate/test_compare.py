"""Question loading, the comparison run, the digest check and every way the gate decides."""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path

import pytest

from loraship.config import CompareConfig, GateConfig
from loraship.errors import ConfigError, OllamaError, VersionError
from loraship.evaluate import scoring
from loraship.evaluate.backends import LlamaCppBackend, OllamaBackend
from loraship.evaluate.compare import (
    Candidate,
    Question,
    answer_facts,
    load_questions,
    questions_from_rows,
    run_compare,
)
from loraship.store.hashing import sha256_file

REPO = Path(__file__).resolve().parents[2]
CORPUS = {
    "coop": [
        "The cooperative was founded in 1987 by 12 growers.",
        "Fruit is delivered within 48 hours.",
    ]
}


class ScriptedBackend:
    """Deterministic answers per (tag, question): the input the scoring logic is tested on.

    Each answer waits a different, fixed time so that with several workers answers finish
    out of order; the report must not depend on that order.
    """

    name = "scripted"

    def __init__(self, answers: dict[str, dict[str, str]], digests: dict[str, str] | None = None):
        self.answers, self.digests = answers, digests or {}
        self.calls: list[tuple[str, list[dict], dict]] = []
        self.threads: set[int] = set()
        self._lock = threading.Lock()

    def served_digest(self, c: Candidate) -> str | None:
        return self.digests.get(c.tag, "sha256:" + hashlib.sha256(c.tag.encode()).hexdigest())

    def answer(self, c: Candidate, messages: list[dict], options: dict) -> str:
        question = messages[-1]["content"]
        with self._lock:
            self.calls.append((c.tag, messages, options))
            self.threads.add(threading.get_ident())
        time.sleep((hashlib.sha256((c.tag + question).encode()).digest()[0] % 5) / 1000)
        return self.answers[c.tag].get(question, "")


def questions(grounded: bool = True) -> list[Question]:
    src = ["Coop Charter"] if grounded else []
    return [
        Question(
            "n1",
            "When was the coop founded?",
            "It was founded in 1987.",
            ["1987"],
            "coop",
            "new",
            src,
        ),
        Question(
            "n2",
            "How many founding growers?",
            "12 growers founded it.",
            ["12 growers"],
            "coop",
            "new",
        ),
        Question("n3", "Delivery window?", "Within 48 hours.", ["48 hours"], "coop", "new"),
        Question(
            "o1", "Gas for photosynthesis?", "Carbon dioxide.", ["carbon dioxide"], None, "old"
        ),
        Question("o2", "Boiling point of water?", "100 degrees Celsius.", ["100"], None, "old"),
    ]


GOOD_OLD = {
    "Gas for photosynthesis?": "Carbon dioxide.",
    "Boiling point of water?": "At 100 degrees.",
}
V1 = {"When was the coop founded?": "In 1990.", **GOOD_OLD}
V2 = {
    "When was the coop founded?": "In 1987, per the Coop Charter.",
    "How many founding growers?": "It had 12 growers.",
    "Delivery window?": "Within 48 hours of picking.",
    **GOOD_OLD,
}


def cands(with_parent: bool = True) -> list[Candidate]:
    v2 = Candidate("demo:v2", "v2", "v1")
    return [Candidate("demo:v1", "v1", None), v2] if with_parent else [v2]


def compare(answers, cands_, qs=None, gate=None, concurrency=2, **kw):
    backend = ScriptedBackend(answers)
    report = run_compare(
        cands_,
        qs or questions(),
        backend,
        CompareConfig(concurrency=concurrency, seed=11),
        gate or GateConfig(),
        domain_corpus=CORPUS,
        system=kw.pop("system", None),
        **kw,
    )
    return report, backend


def failed(report) -> dict[str, str]:
    return {c["name"]: c["reason"] for c in report["gate"]["checks"] if c["passed"] is False}


# ---------------------------------------------------------------- questions


def test_default_question_set_loads_with_both_kinds_of_knowledge():
    qs = load_questions(REPO / "ollama" / "questions" / "default.yaml")
    assert len(qs) >= 5
    assert {q.knowledge for q in qs} == {"new", "old"}
    assert all(q.reference or q.facts for q in qs) and all(q.origin == "fixed" for q in qs)
    assert any(q.sources for q in qs)


def _write_set(tmp_path: Path, items: list[str]) -> Path:
    path = tmp_path / "set.yaml"
    path.write_text("name: t\nversion: 1\nquestions:\n" + "".join(items), encoding="utf-8")
    return path


def _item(i: int, extra: str = "", knowledge: str = "new") -> str:
    return f"  - id: q{i}\n    question: Question {i}?\n    reference: Answer {i}.\n    knowledge: {knowledge}\n{extra}"


def test_question_errors_name_file_line_id_and_field(tmp_path):
    path = _write_set(
        tmp_path, [_item(i) for i in range(1, 4)] + [_item(4, knowledge="neww"), _item(5)]
    )
    with pytest.raises(ConfigError) as e:
        load_questions(path)
    msg = str(e.value)
    assert (
        str(path) in msg
        and "line 16" in msg
        and "q4" in msg
        and "'knowledge'" in msg
        and "\n" not in msg
    )


@pytest.mark.parametrize(
    "items, needle",
    [
        ([_item(i) for i in range(1, 5)], "at least 5"),
        ([_item(i) for i in range(1, 6)] + [_item(2)], "duplicate id"),
        (
            [_item(i) for i in range(1, 6)]
            + ["  - id: q9\n    question: Q?\n    knowledge: old\n"],
            "'reference' or 'facts'",
        ),
        ([_item(i) for i in range(1, 6)] + [_item(9, "    fact: [x]\n")], "unknown field 'fact'"),
        (
            [_item(i) for i in range(1, 6)] + [_item(9, "    facts: x\n")],
            "field 'facts' must be a list",
        ),
    ],
)
def test_question_set_validation(tmp_path, items, needle):
    with pytest.raises(ConfigError, match=needle):
        load_questions(_write_set(tmp_path, items))


def test_missing_question_set_lists_the_available_ones(tmp_path):
    (tmp_path / "mining.yaml").write_text("questions: []\n")
    with pytest.raises(ConfigError, match="available: mining"):
        load_questions(tmp_path / "nope.yaml")


def test_questions_from_rows_takes_last_turns_and_samples_reproducibly():
    rows = [
        {
            "id": f"r{i:02d}",
            "topic": "coop",
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": f"first {i}"},
                {"role": "assistant", "content": f"early {i}"},
                {"role": "user", "content": f"ask {i}"},
                {"role": "assistant", "content": f"reply {i}"},
            ],
        }
        for i in range(30)
    ] + [
        {
            "id": "dangling",
            "messages": [{"role": "assistant", "content": "hi"}, {"role": "user", "content": "?"}],
        }
    ]
    a = questions_from_rows(rows, "new", "test:v3", limit=5, seed=1)
    b = questions_from_rows(list(reversed(rows)), "new", "test:v3", limit=5, seed=1)
    assert [q.id for q in a] == [q.id for q in b] and len(a) == 5
    q = a[0]
    n = q.id.rsplit("r", 1)[1]
    assert (q.question, q.reference) == (f"ask {int(n)}", f"reply {int(n)}")
    assert (q.knowledge, q.origin, q.domain, q.facts) == ("new", "test:v3", "coop", ["reply"])
    assert q.id.startswith("test:v3:r")
    assert [q.id for q in questions_from_rows(rows, "old", "test:v1", limit=5, seed=2)] != [
        q.id for q in a
    ]
    assert (
        len(questions_from_rows(rows, "old", "test:v1", limit=100, seed=2)) == 30
    )  # dangling row skipped


# ---------------------------------------------------------------- the run


def test_every_candidate_gets_the_same_deterministic_prompts():
    seen = []
    report, backend = compare(
        {"demo:v1": V1, "demo:v2": V2},
        cands(),
        system="You are terse.",
        progress=lambda done, total: seen.append((done, total)),
        num_ctx=4096,
    )
    assert seen[-1] == (10, 10) and len(seen) == 10
    opts = {"temperature": 0, "seed": 11, "num_predict": 128, "num_ctx": 4096}
    assert all(o == opts for _, _, o in backend.calls) and report["options"] == opts
    prompts = {
        tag: sorted(m[-1]["content"] for t, m, _ in backend.calls if t == tag)
        for tag in ("demo:v1", "demo:v2")
    }
    assert prompts["demo:v1"] == prompts["demo:v2"]
    assert all(m[0] == {"role": "system", "content": "You are terse."} for _, m, _ in backend.calls)


def many(n_new: int, n_old: int, cite: bool = False) -> list[Question]:
    """Enough questions for the gate to decide: one number to know per question."""
    src = ["Site Register"] if cite else []
    return [
        Question(f"{side}{i}", f"What is the code of {side} site {i}?", f"Code {base + i}.",
                 [str(base + i)], "coop", side, src if side == "new" else [])
        for side, n, base in (("new", n_new, 1000), ("old", n_old, 5000))
        for i in range(n)
    ]


def knows(qs: list[Question], ids: set[str], cite: bool = False) -> dict[str, str]:
    tail = " (Site Register)" if cite else ""
    return {q.question: (f"Code {q.facts[0]}{tail}." if q.id in ids else "I do not know.") for q in qs}


def ids(side: str, n: int) -> set[str]:
    return {f"{side}{i}" for i in range(n)}


def test_gate_passes_when_new_knowledge_improves_and_old_is_kept():
    qs = many(40, 40)
    v1, v2 = knows(qs, ids("old", 40)), knows(qs, ids("new", 40) | ids("old", 40))
    report, _ = compare({"demo:v1": v1, "demo:v2": v2}, cands(), qs=qs,
                        gate=GateConfig(max_old_loss=10))
    g = report["gate"]
    assert g["verdict"] == "PASS" and g["passed"] is True
    assert g["candidate"] == "demo:v2" and g["parent"] == "demo:v1"
    agg = report["aggregates"]["demo:v2"]
    assert agg["accuracy_new"] == 100.0 and agg["new_gain"] == 100.0 and agg["old_loss"] == 0.0
    assert agg["retention"] == 100.0 and report["aggregates"]["demo:v1"]["retention"] is None
    assert agg["intervals"]["old_loss"]["high"] <= 10 < 15  # 40 unchanged answers: within 10, not 2
    assert {c["name"]: c["result"] for c in g["checks"]} == {
        "parent_compared": "PASS",
        "new_gain": "PASS",
        "old_loss": "PASS",
        "grounding": "n/a",
    }
    assert report["warnings"] == []


def test_gate_on_five_questions_is_inconclusive_and_says_how_many_would_decide():
    """The point estimates pass (+100 new, no old lost): 3 + 2 questions cannot show it."""
    report, _ = compare({"demo:v1": V1, "demo:v2": V2}, cands())
    g, agg = report["gate"], report["aggregates"]["demo:v2"]
    assert agg["new_gain"] == 100.0 and agg["old_loss"] == 0.0
    assert g["verdict"] == "INCONCLUSIVE" and g["passed"] is False
    assert g["reason"].startswith("old-knowledge accuracy did not drop")
    assert "old-knowledge questions (now 2)" in g["decide"] and "would decide it" in g["decide"]
    assert [w.split(";")[0] for w in report["warnings"]] == [
        "only 3 new-knowledge questions (fixed set plus held-out test rows)",
        "only 2 old-knowledge questions (fixed set plus held-out test rows)",
    ]


def test_gate_fails_on_too_small_gain():
    qs = many(40, 40)
    v1, v2 = knows(qs, ids("old", 40)), knows(qs, ids("new", 4) | ids("old", 40))
    report, _ = compare({"demo:v1": v1, "demo:v2": v2}, cands(), qs=qs,
                        gate=GateConfig(min_new_gain=40, max_old_loss=10))
    assert report["gate"]["verdict"] == "FAIL"
    assert set(failed(report)) == {"new_gain"}
    assert "even its upper bound is below the required 40" in failed(report)["new_gain"]


def test_gate_fails_when_old_knowledge_is_forgotten():
    qs = many(40, 40)
    v1, v2 = knows(qs, ids("old", 40)), knows(qs, ids("new", 40) | ids("old", 20))
    report, _ = compare({"demo:v1": v1, "demo:v2": v2}, cands(), qs=qs)
    assert set(failed(report)) == {"old_loss"} and report["gate"]["verdict"] == "FAIL"
    agg = report["aggregates"]["demo:v2"]
    assert agg["old_loss"] == 50.0 and agg["intervals"]["old_loss"]["low"] > 2
    assert agg["retention"] == 50.0


def test_gate_fails_on_ungrounded_answers_and_skips_grounding_without_sources():
    qs = many(40, 40, cite=True)
    v1 = knows(qs, ids("old", 40))
    v2 = knows(qs, ids("new", 40) | ids("old", 40))  # right, but never cites the register
    report, _ = compare({"demo:v1": v1, "demo:v2": v2}, cands(), qs=qs,
                        gate=GateConfig(max_old_loss=10))
    assert set(failed(report)) == {"grounding"} and report["gate"]["verdict"] == "FAIL"
    assert "even its upper bound is below the required 35" in failed(report)["grounding"]
    report, _ = compare({"demo:v1": v1, "demo:v2": v2}, cands(), qs=many(40, 40),
                        gate=GateConfig(max_old_loss=10))
    check = next(c for c in report["gate"]["checks"] if c["name"] == "grounding")
    assert report["gate"]["passed"] is True and check["passed"] is None
    assert check["result"] == "n/a" and "not applicable" in check["reason"]


def test_too_few_questions_per_side_is_a_warning_in_the_report():
    qs = many(40, 40)
    answers = {"demo:v1": knows(qs, set()), "demo:v2": knows(qs, set())}
    backend = ScriptedBackend(answers)
    report = run_compare(cands(), qs, backend, CompareConfig(min_questions_per_side=41), GateConfig(),
                         domain_corpus=CORPUS, system=None)
    assert len(report["warnings"]) == 2 and "only 40 old-knowledge questions" in report["warnings"][1]
    assert "compare.min_questions_per_side is 41" in report["warnings"][0]


def test_gate_fails_without_a_compared_parent():
    report, _ = compare({"demo:v2": V2}, cands(with_parent=False))
    assert report["gate"]["passed"] is False
    assert report["gate"]["reason"].startswith(
        "no parent compared: its parent v1 is not among the candidates"
    )
    report, _ = compare({"demo:v1": V1}, [Candidate("demo:v1", "v1", None)])
    assert report["gate"]["passed"] is False and "no parent compared" in report["gate"]["reason"]


def test_gate_fails_when_one_kind_of_knowledge_has_no_questions():
    only_new = [q for q in questions() if q.knowledge == "new"]
    report, _ = compare({"demo:v1": V1, "demo:v2": V2}, cands(), qs=only_new)
    assert "no question has knowledge: old" in failed(report)["old_loss"]


def test_digest_mismatch_refuses_before_any_answer():
    c = cands()
    c[1].expected_digest = "sha256:" + "a" * 64
    backend = ScriptedBackend({"demo:v1": V1, "demo:v2": V2}, digests={"demo:v2": "b" * 64})
    with pytest.raises(
        VersionError, match=r"demo:v2 serves digest b{64} but version v2 registered sha256:a{64}"
    ):
        run_compare(
            c,
            questions(),
            backend,
            CompareConfig(),
            GateConfig(),
            domain_corpus=CORPUS,
            system=None,
        )
    assert backend.calls == []
    # the same digest written with or without the prefix, in any case, is accepted
    backend.digests["demo:v2"] = "A" * 64
    run_compare(
        c, questions(), backend, CompareConfig(), GateConfig(), domain_corpus=CORPUS, system=None
    )


def test_concurrency_gives_the_same_report_as_one_worker():
    def stable(report):
        report = {k: v for k, v in report.items() if k not in ("created_at", "concurrency")}  # how, not what
        report["answers"] = [
            {k: v for k, v in a.items() if k != "seconds"} for a in report["answers"]
        ]
        report["aggregates"] = {
            t: {k: v for k, v in a.items() if k != "mean_seconds"}
            for t, a in report["aggregates"].items()
        }
        return report

    one, _ = compare({"demo:v1": V1, "demo:v2": V2}, cands(), concurrency=1)
    many, backend = compare({"demo:v1": V1, "demo:v2": V2}, cands(), concurrency=4)
    assert len(backend.threads) > 1
    assert stable(one) == stable(many)


def test_bad_min_grounding_is_refused_as_a_fraction():
    with pytest.raises(ConfigError, match="gate.min_grounding"):
        compare({"demo:v1": V1, "demo:v2": V2}, cands(), gate=GateConfig(min_grounding=35))


# ---------------------------------------------------------------- Ollama backend errors


def test_ollama_backend_names_the_unreachable_host_and_the_fix():
    if not hasattr(pytest.importorskip("ollama"), "Client"):
        pytest.skip("the ollama client package is not installed")
    backend = OllamaBackend(host="http://127.0.0.1:9", timeout=2)
    with pytest.raises(OllamaError, match=r"127\.0\.0\.1:9.*make ollama-up.*OLLAMA_HOST"):
        backend.served_digest(Candidate("demo:v1", "v1"))


class _ListedOnly:
    """The client surface OllamaBackend reads: list() as returned by /api/tags."""

    def list(self):
        return {
            "models": [
                {"model": "Demo:V1", "digest": "abc"},
                {"model": "other:latest", "digest": "def"},
            ]
        }


def test_ollama_backend_finds_tags_case_insensitively_and_explains_missing_ones():
    backend = OllamaBackend(host="http://h:1", client=_ListedOnly())
    assert backend.served_digest(Candidate("demo:v1", "v1")) == "abc"
    assert backend.served_digest(Candidate("other", "v1")) == "def"
    with pytest.raises(
        OllamaError, match=r"tag demo:v2 is not served by http://h:1: run `loraship register"
    ):
        backend.served_digest(Candidate("demo:v2", "v2"))


# ---------------------------------------------------------------- llama.cpp backend


def test_llamacpp_backend_explains_a_missing_gguf(tmp_path):
    backend = LlamaCppBackend()
    with pytest.raises(ConfigError, match="demo:v1 has no GGUF path"):
        backend.served_digest(Candidate("demo:v1", "v1"))
    with pytest.raises(VersionError, match="does not exist: run `loraship export` for v2"):
        backend.served_digest(Candidate("demo:v2", "v2", gguf_path=tmp_path / "gone.gguf"))


def _smollm2_gguf() -> Path:
    from loraship.base.smollm2 import smollm2_gguf

    return smollm2_gguf()


@pytest.mark.slow
def test_llamacpp_backend_answers_deterministically_from_a_real_gguf():
    gguf = _smollm2_gguf()
    qs = [
        Question(f"q{i}", text, ref, [], None, k)
        for i, (text, ref, k) in enumerate(
            [
                ("What is 2 plus 2?", "4", "new"),
                ("What gas do plants take in?", "Carbon dioxide.", "old"),
            ]
        )
    ]
    cands_ = [Candidate("a", "v1", gguf_path=gguf), Candidate("b", "v2", "v1", gguf_path=gguf)]
    with LlamaCppBackend(n_ctx=512) as backend:
        cands_[1].expected_digest = "sha256:" + sha256_file(gguf)
        report = run_compare(
            cands_,
            qs,
            backend,
            CompareConfig(concurrency=2, num_predict=16),
            GateConfig(),
            domain_corpus={},
            system=None,
        )
        again = backend.answer(
            cands_[0], [{"role": "user", "content": "What is 2 plus 2?"}], report["options"]
        )
    by_tag = {t: [a["answer"] for a in report["answers"] if a["tag"] == t] for t in ("a", "b")}
    assert all(by_tag["a"]) and by_tag["a"] == by_tag["b"]  # same weights, same greedy answers
    assert again == by_tag["a"][0]
    assert report["candidates"][0]["served_digest"] == cands_[1].expected_digest
    assert backend._models == {}  # closed


def test_two_tags_of_one_version_are_refused():
    twins = [Candidate("demo:v2", "v2", "v1"), Candidate("demo:v2b", "v2", "v1")]
    with pytest.raises(ConfigError, match="duplicate version 'v2'"):
        compare({"demo:v2": V2, "demo:v2b": V2}, twins)


def test_held_out_rows_are_scored_on_what_the_answer_adds_to_the_question():
    facts = answer_facts("How many metres deep is the Ebbrook Mine?", "The Ebbrook Mine is 610 metres deep.")
    assert facts == ["610"]
    right, _ = scoring.accuracy("It is 610 metres deep.", "The Ebbrook Mine is 610 metres deep.", facts)
    echo, _ = scoring.accuracy("The Ebbrook Mine is 10 metres deep.", "The Ebbrook Mine is 610 metres deep.", facts)
    assert (right, echo) == (100.0, 0.0)
    assert scoring.token_f1("The Ebbrook Mine is 10 metres deep.", "The Ebbrook Mine is 610 metres deep.") > 70
