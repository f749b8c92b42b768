"""Compare: the same fixed questions to every candidate tag, scores, and the gate verdict.

`run_compare` checks every served digest before asking anything (a tag overwritten
outside loraship must not be scored under the version's name), asks each candidate the
same prompts with deterministic options (one greedy answer, and with compare.samples k
answers sampled at the served temperature with fixed seeds: sampling.py), scores the
answers (see scoring.py for the rules) and judges the newest candidate against its parent
with the GateConfig: paired per-question scores of the measure, intervals, PASS / FAIL /
INCONCLUSIVE (gate.py, stats.py).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from loraship.config import CompareConfig, GateConfig, check_gate_statistics
from loraship.errors import ConfigError, VersionError
from loraship.evaluate import arms, concurrency, sampling, scoring
from loraship.evaluate import gate as gating
from loraship.evaluate.backends import Backend
from loraship.evaluate.candidate import Candidate  # noqa: F401  (re-exported for callers of compare)
from loraship.paths import parse_version_id
from loraship.serve.ollama_client import same_digest
from loraship.store.manifest import now_iso

MIN_QUESTIONS = 5
KNOWLEDGE = ("new", "old")
_QUESTION_KEYS = {"id", "question", "reference", "facts", "domain", "knowledge", "sources"}
REPORT_SCHEMA = 1


@dataclass
class Question:
    id: str
    question: str
    reference: str | None = None
    facts: list[str] = field(default_factory=list)
    domain: str | None = None
    knowledge: str = "new"  # "new": taught by this version; "old": must survive it
    sources: list[str] = field(default_factory=list)  # grounding applies only where non-empty
    origin: str = "fixed"  # "fixed" | "test:v3" (held-out test row of version v3)




# ---------------------------------------------------------------- questions


def _line_numbers(text: str) -> list[int]:
    """1-based line of each entry under `questions:`, so errors can point into the file."""
    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return []
    if not isinstance(root, yaml.MappingNode):
        return []
    for key, value in root.value:
        if key.value == "questions" and isinstance(value, yaml.SequenceNode):
            return [item.start_mark.line + 1 for item in value.value]
    return []


def _str_list(value: Any, where: str, name: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise ConfigError(f"{where}: field '{name}' must be a list of non-empty strings")
    return [v.strip() for v in value]


def _opt_str(value: Any, where: str, name: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}: field '{name}' must be a non-empty string")
    return value.strip()


def _parse_question(raw: Any, where: str) -> Question:
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{where}: each question must be a mapping with id, question, knowledge, ..."
        )
    qid = raw.get("id")
    if isinstance(qid, int) and not isinstance(qid, bool):
        qid = str(qid)
    if not isinstance(qid, str) or not qid.strip():
        raise ConfigError(f"{where}: field 'id' is missing; give every question a unique id")
    where = f"{where} (id {qid})"
    unknown = set(raw) - _QUESTION_KEYS
    if unknown:
        raise ConfigError(
            f"{where}: unknown field '{sorted(unknown)[0]}' (known: {', '.join(sorted(_QUESTION_KEYS))})"
        )
    text = _opt_str(raw.get("question"), where, "question")
    if text is None:
        raise ConfigError(f"{where}: field 'question' is missing")
    knowledge = raw.get("knowledge")
    if knowledge not in KNOWLEDGE:
        raise ConfigError(f"{where}: field 'knowledge' must be 'new' or 'old', got {knowledge!r}")
    q = Question(
        id=qid.strip(),
        question=text,
        reference=_opt_str(raw.get("reference"), where, "reference"),
        facts=_str_list(raw.get("facts"), where, "facts"),
        domain=_opt_str(raw.get("domain"), where, "domain"),
        knowledge=knowledge,
        sources=_str_list(raw.get("sources"), where, "sources"),
    )
    if q.reference is None and not q.facts:
        raise ConfigError(
            f"{where}: needs field 'reference' or 'facts' (what a right answer contains)"
        )
    return q


def load_questions(path: Path) -> list[Question]:
    """Read a question set: {name, version, questions: [{id, question, reference?, facts?, ...}]}."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        sets = sorted(p.stem for p in path.parent.glob("*.yaml")) if path.parent.is_dir() else []
        raise ConfigError(
            f"{path}: question set not found (available: {', '.join(sets) or 'none'}); write one or pick another"
        ) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{where}: not valid YAML: {getattr(e, 'problem', e)}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("questions"), list):
        raise ConfigError(
            f"{path}: expected a mapping with a 'questions' list (and optional name, version)"
        )
    lines = _line_numbers(text)
    questions, seen = [], {}
    for i, item in enumerate(raw["questions"]):
        where = f"{path} line {lines[i]}" if i < len(lines) else f"{path} questions[{i}]"
        q = _parse_question(item, where)
        if q.id in seen:
            raise ConfigError(
                f"{where} (id {q.id}): duplicate id; first used at question {seen[q.id] + 1}"
            )
        seen[q.id] = i
        questions.append(q)
    if len(questions) < MIN_QUESTIONS:
        raise ConfigError(
            f"{path}: has {len(questions)} questions; a comparison needs at least {MIN_QUESTIONS} to mean anything"
        )
    return questions


def _last(messages: list[dict], role: str) -> int | None:
    for i in range(len(messages) - 1, -1, -1):
        if messages[i].get("role") == role and str(messages[i].get("content") or "").strip():
            return i
    return None


MAX_DERIVED_FACTS = 4


def answer_facts(question: str, reference: str) -> list[str]:
    """What a held-out row's answer adds to its question: the reference's content words the
    question does not already contain ("How deep is the Ebbrook Mine?" / "The Ebbrook Mine is
    610 metres deep." -> ["610"]). Token F1 would give a wrong number most of its points for
    echoing the question; these words are what makes an answer right."""
    asked = set(scoring.tokens(question))
    novel = [t for t in dict.fromkeys(scoring.content_tokens(reference)) if t not in asked]
    return novel[:MAX_DERIVED_FACTS]


def questions_from_rows(
    rows: list[dict], knowledge: str, origin: str, limit: int, seed: int
) -> list[Question]:
    """Held-out data rows as questions: the last user turn asks, the last assistant turn answers.

    Earlier turns are dropped (the fixed questions are single-turn too, so both kinds are
    asked the same way). Rows are sampled with `seed` from the id-sorted list, so the same
    rows are asked whatever order the file had.
    """
    if knowledge not in KNOWLEDGE:
        raise ValueError(f"knowledge must be 'new' or 'old', got {knowledge!r}")
    usable = []
    for row in sorted(rows, key=lambda r: str(r.get("id"))):
        msgs = row.get("messages") or []
        u, a = _last(msgs, "user"), _last(msgs, "assistant")
        if u is not None and a is not None and a > u:
            usable.append((row, msgs[u]["content"].strip(), msgs[a]["content"].strip()))
    picked = random.Random(seed).sample(usable, min(max(limit, 0), len(usable)))
    picked.sort(key=lambda item: str(item[0].get("id")))
    return [
        Question(
            id=f"{origin}:{row.get('id')}",
            question=question,
            reference=reference,
            facts=answer_facts(question, reference),
            domain=row.get("topic"),
            knowledge=knowledge,
            sources=[s for s in row.get("sources") or [] if isinstance(s, str) and s.strip()],
            origin=origin,
        )
        for row, question, reference in picked
    ]


# ---------------------------------------------------------------- running


def _validate_inputs(
    candidates: list[Candidate], questions: list[Question], gate: GateConfig
) -> None:
    if not candidates:
        raise ConfigError("nothing to compare: give at least one candidate tag")
    if not questions:
        raise ConfigError("nothing to ask: the question set is empty")
    for name, items in (
        ("tag", [c.tag.lower() for c in candidates]),
        ("version", [c.version for c in candidates]),
        ("question id", [q.id for q in questions]),
    ):
        dupes = sorted({x for x in items if items.count(x) > 1})
        if dupes:
            raise ConfigError(
                f"duplicate {name} {dupes[0]!r} in the comparison; each must appear once"
            )
    for c in candidates:
        parse_version_id(c.version)
    if not 0.0 <= gate.min_grounding <= 1.0:
        raise ConfigError(
            f"config key 'gate.min_grounding' is a fraction 0..1, got {gate.min_grounding}"
        )
    check_gate_statistics(gate)


def question_warnings(questions: list[Question], minimum: int) -> list[str]:
    """A line per knowledge side with fewer questions than compare.min_questions_per_side.

    Fixed questions and held-out test rows both count. Below ~30 a side's interval is
    too wide for the gate to decide (one answer moves the score by several points).
    """
    out = []
    for side in KNOWLEDGE:
        n = sum(q.knowledge == side for q in questions)
        if n < minimum:
            out.append(
                f"only {n} {side}-knowledge questions (fixed set plus held-out test rows); "
                f"compare.min_questions_per_side is {minimum}: with so few the gate's intervals "
                "are wide and it may be INCONCLUSIVE; add questions to the set or raise "
                "compare.max_test_rows"
            )
    return out


def check_digests(candidates: list[Candidate], backend: Backend) -> dict[str, str | None]:
    """The served digest of every candidate; refuses before any answer if one differs."""
    served = {}
    for c in candidates:
        got = backend.served_digest(c)
        if c.expected_digest and not same_digest(got, c.expected_digest):
            raise VersionError(
                f"{c.tag} serves digest {got or 'unknown'} but version {c.version} registered "
                f"{c.expected_digest}: the tag was changed outside loraship; register {c.version} again"
            )
        served[c.tag] = got
    return served


def options_for(cfg: CompareConfig, num_ctx: int | None = None) -> dict[str, Any]:
    opts: dict[str, Any] = {"temperature": 0, "seed": cfg.seed, "num_predict": cfg.num_predict}
    if num_ctx:
        opts["num_ctx"] = num_ctx
    return opts


def _messages(q: Question, system: str | None) -> list[dict]:
    msgs = [{"role": "system", "content": system}] if system else []
    return msgs + [{"role": "user", "content": q.question}]


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.monotonic()
    return fn(), time.monotonic() - start


def _ask_all(candidates, questions, backend, options, system, n_workers, progress, measure=None,
             interleave=False):
    """Every answer: greedy ones keyed (tag, question id) -> (text, seconds), a question's k
    sampled ones (tag, question id, "samples") -> (texts, seconds), asked in one call
    (`_samples`).

    Jobs are submitted candidate by candidate so a server swaps models as rarely as
    possible, or with `interleave` question by question across the candidates (models in
    this process, each with its own lock and share of the cores: workers taking one
    candidate's jobs in turn would wait on one lock while the other models idle). Results
    are keyed, so completion order never changes the report.
    """
    jobs: dict[tuple, Callable[[], tuple[Any, float]]] = {}
    sample_opts = sampling.options(options, measure) if measure and measure.samples else None
    pairs = ([(c, q) for q in questions for c in candidates] if interleave
             else [(c, q) for c in candidates for q in questions])
    for c, q in pairs:
        msgs = _messages(q, system)
        jobs[(c.tag, q.id)] = lambda c=c, m=msgs: _timed(lambda: backend.answer(c, m, dict(options)) or "")
        if sample_opts is not None:
            jobs[(c.tag, q.id, "samples")] = lambda c=c, m=msgs: _timed(
                lambda: _samples(backend, c, m, sample_opts, list(measure.seeds)))
    return concurrency.run_keyed(jobs, n_workers, progress)


def _samples(backend: Backend, c: Candidate, msgs: list[dict], options: dict, seeds: list[int]) -> list[str]:
    """k answers, one per seed, through the backend's `samples` (batched or fanned out), or
    for a backend without one, its `answer` once per seed, all at once (concurrency.fan_out)."""
    ask = getattr(backend, "samples", None)
    texts = (ask(c, msgs, dict(options), seeds) if ask else
             concurrency.fan_out(lambda seed: backend.answer(c, msgs, {**options, "seed": seed}), seeds))
    return [t or "" for t in texts]


def run_compare(
    candidates: list[Candidate],
    questions: list[Question],
    backend: Backend,
    cfg: CompareConfig,
    gate: GateConfig,
    *,
    domain_corpus: dict[str, list[str]],
    system: str | None,
    progress: Callable[[int, int], None] | None = None,
    num_ctx: int | None = None,
    retrieval_plan: Any = None,
    served_temperature: float | None = None,
) -> dict:
    """Ask, score, judge; returns the JSON-serialisable report (see write_reports).

    `served_temperature` is the temperature the tags are served at (the Modelfile's): the
    sampled measure draws its answers there unless compare.sample_temperature says otherwise.
    With a `retrieval_plan` (arms.build_plan) the retrieval rows are asked too (arms.py)."""
    _validate_inputs(candidates, questions, gate)
    served = check_digests(candidates, backend)
    options = options_for(cfg, num_ctx)
    measure = sampling.choose(cfg, served_temperature)
    workers = concurrency.for_backend(cfg.concurrency, cfg.num_thread, backend, candidates)
    if workers.num_thread:
        options["num_thread"] = workers.num_thread
    # One progress bar over every job: greedy answers, a question's samples, retrieval arms.
    plain = len(candidates) * len(questions) * (2 if measure.samples else 1)
    extra = len(retrieval_plan.arms) * len(questions) if retrieval_plan else 0
    arm_digests = arms.served(retrieval_plan) if retrieval_plan else {}
    one_bar = (lambda d, t: progress(d, plain + extra)) if progress else None
    interleave = workers.workers > 1 and bool(workers.server.get("split_cores"))
    raw = _ask_all(candidates, questions, backend, options, system, workers.workers, one_bar, measure, interleave)
    index = scoring.RelevanceIndex(domain_corpus)
    answers, per_tag, scored_by_tag = [], {}, {}
    for c in candidates:
        scored = scored_by_tag[c.tag] = []
        for q in questions:
            text, seconds = raw[(c.tag, q.id)]
            s = scoring.score_answer(text, q, index)
            record = {"tag": c.tag, "question_id": q.id, "answer": text, "seconds": round(seconds, 3), "scores": s}
            if measure.samples:
                texts, sample_seconds = raw[(c.tag, q.id, "samples")]
                s.update(sampling.score(texts, q))
                record.update(samples=texts, samples_seconds=round(sample_seconds, 3))
            scored.append((q, s))
            answers.append(record)
        agg = scoring.aggregate(scored)
        agg["empty_answers"] = sum(not raw[(c.tag, q.id)][0].strip() for q in questions)
        agg["mean_seconds"] = round(
            sum(raw[(c.tag, q.id)][1] for q in questions) / len(questions), 3
        )
        per_tag[c.tag] = agg
    gating.add_parent_deltas(candidates, per_tag, scored_by_tag, gate, measure)
    if retrieval_plan:
        arm_bar = (lambda d, t: progress(plain + d, plain + extra)) if progress else None
        arm_answers, arm_aggs = arms.run_arms(retrieval_plan, questions, options, system, workers.workers,
                                              index, arm_bar)
        answers += arm_answers
        per_tag = arms.order_rows({**per_tag, **arm_aggs}, candidates)
    report = {
        "schema": REPORT_SCHEMA,
        "created_at": now_iso(),
        "backend": backend.name,
        "options": options,
        "measure": measure.record(),  # what the gate judged: sampled answers or the greedy one
        "concurrency": workers.record(),  # requests at once and threads each, with the reason
        "system": system,
        "scoring_rules": scoring.RULES_VERSION,
        "warnings": question_warnings(questions, cfg.min_questions_per_side),
        "candidates": [
            {
                **asdict(c),
                "gguf_path": str(c.gguf_path) if c.gguf_path else None,
                "served_digest": served[c.tag],
            }
            for c in candidates
        ],
        "questions": [asdict(q) for q in questions],
        "answers": answers,
        "aggregates": per_tag,
        "gate": gating.judge(candidates, per_tag, gate, measure),
    }
    gating.add_check(report["gate"], arms.gain_check(answers, report["gate"]["candidate"], gate))
    if retrieval_plan:
        report["retrieval"] = arms.describe(retrieval_plan, arm_digests)
    return report
