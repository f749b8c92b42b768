"""The retrieval arms of a comparison: is the fine-tune better than retrieving its own data?

Rows added to the report (keyed like tags in `aggregates`, answers and the HTML):

    base+retrieval   the base model answering with retrieved passages: the baseline
    vN               the fine-tune alone (the ordinary candidate row)
    vN+retrieval     the fine-tune answering with retrieved passages: the hybrid

Each arm retrieves from its own lineage's training rows (vN+retrieval from vN's and its
ancestors' train splits, base+retrieval from the newest candidate's), never from rows
asked as questions. Grounding of an arm's answer also counts a cited passage id (see
retrieval.grounding). `gain_check` is the gate's `min_gain_over_retrieval` check, added to
the verdict with gate.add_check.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loraship.config import Config, GateConfig
from loraship.errors import ConfigError, OllamaError
from loraship.evaluate import gate as gating
from loraship.evaluate import retrieval, scoring, stats
from loraship.evaluate.backends import Backend
from loraship.evaluate.candidate import Candidate
from loraship.evaluate.concurrency import run_keyed

BASE_LABEL = "base+retrieval"
SUFFIX = "+retrieval"


@dataclass
class Arm:
    label: str  # "base+retrieval" or "<tag>+retrieval"
    candidate: Candidate  # whose weights answer
    backend: Backend
    retriever: retrieval.Retriever
    of: str | None = None  # the compared tag this arm adds retrieval to; None for the base


@dataclass
class Plan:
    arms: list[Arm]
    top_k: int
    base: str  # how base+retrieval answers, for the report
    owned: list[Any] = field(default_factory=list)  # backends opened for the plan, closed by close()

    def close(self) -> None:
        for b in self.owned:
            b.close()


# ---------------------------------------------------------------- asking and scoring


def _search_all(plan: Plan, questions: list) -> dict[tuple[str, str], list]:
    cache: dict[tuple[int, str], list] = {}  # the base shares the newest's retriever
    hits = {}
    for arm in plan.arms:
        for q in questions:
            key = (id(arm.retriever), q.id)
            if key not in cache:
                cache[key] = arm.retriever.search(q.question, plan.top_k)
            hits[(arm.label, q.id)] = cache[key]
    return hits


def _ask(plan: Plan, questions: list, hits: dict, options: dict, system: str | None,
         concurrency: int, progress: Callable[[int, int], None] | None) -> dict:
    def one(arm: Arm, q) -> tuple[str, float]:
        msgs = [{"role": "system", "content": system}] if system else []
        msgs.append({"role": "user", "content": retrieval.build_prompt(q.question, hits[(arm.label, q.id)])})
        start = time.monotonic()
        text = arm.backend.answer(arm.candidate, msgs, dict(options))
        return text or "", time.monotonic() - start

    jobs = {(a.label, q.id): (lambda a=a, q=q: one(a, q)) for a in plan.arms for q in questions}
    return run_keyed(jobs, concurrency, progress)


def run_arms(plan: Plan, questions: list, options: dict, system: str | None, concurrency: int,
             index: scoring.RelevanceIndex, progress: Callable[[int, int], None] | None = None,
             ) -> tuple[list[dict], dict[str, dict]]:
    """Every arm's answers (report entries) and aggregates, scored by the candidates' rules."""
    hits = _search_all(plan, questions)
    raw = _ask(plan, questions, hits, options, system, concurrency, progress)
    answers, per_arm = [], {}
    for arm in plan.arms:
        scored, recall = [], []
        for q in questions:
            text, seconds = raw[(arm.label, q.id)]
            found = [p for p, _ in hits[(arm.label, q.id)]]
            s = scoring.score_answer(text, q, index)
            g = retrieval.grounding(text, q.sources, found)
            s["grounding"] = None if g is None else round(g, 2)
            recall.append(retrieval.sources_retrieved(q.sources, found))
            scored.append((q, s))
            answers.append({"tag": arm.label, "question_id": q.id, "answer": text, "seconds": round(seconds, 3),
                            "scores": s, "retrieved": [{"id": p.id, "score": sc, "source": p.source}
                                                       for p, sc in hits[(arm.label, q.id)]]})
        agg = scoring.aggregate(scored)
        agg["empty_answers"] = sum(not raw[(arm.label, q.id)][0].strip() for q in questions)
        agg["mean_seconds"] = round(sum(raw[(arm.label, q.id)][1] for q in questions) / len(questions), 3)
        r = scoring.mean(recall)
        agg["sources_retrieved"] = None if r is None else round(r, 2)
        per_arm[arm.label] = agg
    return answers, per_arm


def served(plan: Plan) -> dict[str, str | None]:
    """The digest each arm's weights are served at (the base's is checked here for the first time)."""
    out = {}
    for arm in plan.arms:
        try:
            out[arm.label] = arm.backend.served_digest(arm.candidate)
        except OllamaError as e:
            if arm.of is not None:
                raise
            raise OllamaError(f"the base for base+retrieval ({arm.candidate.tag}) cannot be used: {e}; set "
                              "compare.retrieval_base to a tag the server has (`ollama pull` it), "
                              "or leave it unset to use the base GGUF") from None
    return out


def describe(plan: Plan, digests: dict[str, str | None]) -> dict[str, Any]:
    """The report's `retrieval` section: how each row was made."""
    return {
        "top_k": plan.top_k,
        "base": plan.base,
        "prompt_head": retrieval.PROMPT_HEAD,
        "arms": [{"label": a.label, "of": a.of, "weights": a.candidate.tag,
                  "version": None if a.of is None else a.candidate.version, "backend": a.backend.name,
                  "retriever": a.retriever.name, "passages": len(a.retriever.passages),
                  "served_digest": digests.get(a.label)} for a in plan.arms],
    }


def order_rows(per_tag: dict[str, dict], candidates: list[Candidate]) -> dict[str, dict]:
    """base+retrieval first, then each tag followed by its hybrid: the order the issue's matrix reads."""
    out = {BASE_LABEL: per_tag[BASE_LABEL]} if BASE_LABEL in per_tag else {}
    for c in candidates:
        out[c.tag] = per_tag[c.tag]
        if c.tag + SUFFIX in per_tag:
            out[c.tag + SUFFIX] = per_tag[c.tag + SUFFIX]
    out.update({k: v for k, v in per_tag.items() if k not in out})
    return out


# ---------------------------------------------------------------- the gate


def gain_check(answers: list[dict], candidate_tag: str, gate: GateConfig) -> dict | None:
    """gate.min_gain_over_retrieval: the candidate's accuracy minus base+retrieval's, paired over
    all questions, decided on its interval like the gate's other checks (gate.py)."""
    threshold = gate.min_gain_over_retrieval
    if threshold is None:
        return None
    label = "accuracy gain over the retrieval baseline (base+retrieval)"
    base = {a["question_id"]: a["scores"]["accuracy"] for a in answers if a["tag"] == BASE_LABEL}
    mine = {a["question_id"]: a["scores"]["accuracy"] for a in answers if a["tag"] == candidate_tag}
    ids = [q for q in mine if q in base]
    if not ids:
        return _check(label, None, None, threshold, gating.FAIL, "not measured: the comparison ran without the "
                      "retrieval baseline; run it with --retrieval")
    interval = stats.paired_difference([base[q] for q in ids], [mine[q] for q in ids], gate.confidence,
                                       gate.resamples, gate.seed)
    iv, v = interval.to_json(), round(interval.estimate, 2)
    result = gating.decide(iv["low"], iv["high"], threshold, True)
    tail = {gating.PASS: f"even its lower bound is at least the required {threshold:g}",
            gating.FAIL: f"even its upper bound is below the required {threshold:g}",
            gating.INCONCLUSIVE: f"the interval straddles the required {threshold:g}: too few questions to tell"}
    why = (f"{candidate_tag} scores {v:+.1f} points of accuracy over base+retrieval "
           f"({round(gate.confidence * 100, 2):g}% interval {iv['low']:+.1f} to {iv['high']:+.1f}); {tail[result]}")
    need = (stats.questions_to_decide(interval, threshold, True, gate.confidence)
            if result == gating.INCONCLUSIVE else None)
    return _check(label, v, iv, threshold, result, why, len(ids), need)


def _check(label: str, value: float | None, interval: dict | None, threshold: float, result: str,
           reason: str, questions: int | None = None, to_decide: int | None = None) -> dict:
    # The keys of gate.py's checks, so the report and the verdict read this one like the others.
    return {"name": "retrieval_gain", "label": label, "value": value,
            "interval": [interval["low"], interval["high"]] if interval else None,
            "threshold": threshold, "result": result, "passed": result == gating.PASS,
            "reason": reason, "questions": questions, "questions_to_decide": to_decide}


# ---------------------------------------------------------------- building the plan


def lineage_passages(version: Any, exclude_prompts: set[str]) -> list[retrieval.Passage]:
    """The train split rows of the version and its ancestors, oldest first (never val or test)."""
    from loraship import paths
    from loraship.data.prepare import load_rows
    from loraship.store.versions import lineage

    rows = [r for v in lineage(version) for r in load_rows(v.path / paths.DATA_DIR / "train.jsonl")]
    return retrieval.passages_from_rows(rows, exclude_prompts)


def make_retriever(passages: list[retrieval.Passage], cfg: Config) -> retrieval.Retriever:
    bm25 = retrieval.BM25Retriever(passages)
    if not cfg.compare.retrieval_embed_model:
        return bm25
    from loraship.serve.ollama_client import resolve_host

    embedder = retrieval.OllamaEmbedder(resolve_host(cfg.ollama.host), cfg.compare.retrieval_embed_model,
                                        cfg.ollama.timeout_s)
    embedder.check()
    return retrieval.HybridRetriever(bm25, embedder)


def _base_arm(cfg: Config, newest: Any, backend_name: str, backend: Backend,
              log: Callable[[str], None]) -> tuple[Candidate, Backend, str, list[Any]]:
    from loraship.evaluate.base_gguf import build_base_gguf

    wanted = cfg.compare.retrieval_base
    if wanted and backend_name == "ollama":
        return Candidate(tag=wanted, version="base"), backend, f"Ollama tag {wanted}", []
    if wanted:
        path = Path(wanted).expanduser()
        if not path.is_file():
            raise ConfigError(f"config key 'compare.retrieval_base': {path} is not a GGUF file "
                              "(the llama.cpp backend needs a path; leave it unset to build the base's GGUF)")
        return Candidate(tag="base", version="base", gguf_path=path), backend, f"GGUF {path}", []
    gguf = build_base_gguf(cfg, newest, log)
    if backend_name == "llama.cpp":
        note = f"the training base as GGUF ({gguf.name}), via llama.cpp"
        return Candidate(tag="base", version="base", gguf_path=gguf), backend, note, []
    # One engine per comparison: the base is served as <model>:base like the versions, so its
    # answers come from the same server, sampler defaults and kind of TEMPLATE as the candidates'.
    from loraship.serve.registry import register_base, served_num_ctx

    tag = register_base(cfg, newest.model, gguf, served_num_ctx(cfg, newest.stage("train")), log=log)
    return Candidate(tag=tag, version="base"), backend, f"the training base as GGUF ({gguf.name}), served as {tag}", []


def build_plan(cfg: Config, versions: list[Any], candidates: list[Candidate], questions: list,
               backend_name: str, backend: Backend, log: Callable[[str], None] = lambda s: None) -> Plan:
    """One arm per candidate plus the base's; `versions` are the candidates' store versions, oldest first."""
    exclude = {retrieval.prompt_key(q.question) for q in questions if q.origin != "fixed"}
    retrievers = {v.id: make_retriever(lineage_passages(v, exclude), cfg) for v in versions}
    base_c, base_backend, note, owned = _base_arm(cfg, versions[-1], backend_name, backend, log)
    arms = [Arm(BASE_LABEL, base_c, base_backend, retrievers[versions[-1].id])]
    arms += [Arm(c.tag + SUFFIX, c, backend, retrievers[c.version], of=c.tag) for c in candidates]
    return Plan(arms, cfg.compare.retrieval_top_k, note, owned)

