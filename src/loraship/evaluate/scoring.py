"""Per-answer scores and per-candidate aggregates, all on a 0..100 "points" scale.

The rules, in one place so the report can cite them:

Text normalisation (every score): NFKC, lowercase, thousands separators between digits
removed ("2,140" -> "2140"), then tokens are runs of letters or numbers ("3.5" stays one
token); the articles a/an/the are dropped (as in SQuAD). "Content tokens" also drop a
short English stopword list.

- accuracy: with `facts`, the share of facts found in the answer. A fact is found when
  every one of its tokens occurs inside one window of the answer of 2*len(fact)+2 tokens
  (an exact phrase always qualifies; "Kessel mountain" also finds "mountain of Kessel").
  Write facts as the minimal words that must appear ("2140", not "2140 m"): numbers are
  not converted from words and negations are not detected. Held-out test rows get their
  facts derived: the reference's content words the question does not contain
  (compare.answer_facts). Without facts: SQuAD token F1 against the reference.
- detail: recall of the reference's unique content tokens in the answer (the facts when
  a question has no reference): how much of what the reference says the answer says.
- relevance: TF-IDF cosine (sublinear tf, smoothed idf, stopwords removed) between the
  answer and the training material of the question's domain, averaged over the 3 most
  similar texts of that domain (all texts when the domain is unknown). Words the corpus
  never uses still count in the answer's norm, so off-domain rambling scores low.
- grounding (only for questions with `sources`): the share of sources the answer cites.
  A source is cited when its tokens appear as a phrase, or when at least 2/3 of its
  content tokens appear anywhere in the answer ("Safety Act section 12" is cited by
  "under the Safety Act, s. 12").
- retention (per candidate): old-knowledge accuracy relative to the parent's,
  100 * candidate_old / parent_old, capped at 100 (gains on old knowledge do not make up
  for anything); 100 when the parent scored 0 (nothing to lose); None without a parent.

The gate that reads these scores, with intervals, is evaluate/gate.py.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable
from typing import Any, Protocol

import numpy as np

RULES_VERSION = 1
TOP_K = 3

_ARTICLES = frozenset({"a", "an", "the"})
STOPWORDS = _ARTICLES | frozenset(
    """
    about above after again against all also am and any are as at be because been before
    being below between both but by can could did do does doing down during each few for
    from further had has have having he her here hers herself him himself his how i if in
    into is it its itself just me more most my myself no nor not now of off on once only or
    other our ours ourselves out over own same she should so some such than that their
    theirs them themselves then there these they this those through to too under until up
    very was we were what when where which while who whom why will with would you your
    yours yourself yourselves s t
    """.split()
)

_THOUSANDS = re.compile(r"(?<=\d)[,_\u00a0\u202f](?=\d{3}(?!\d))")
_TOKEN = re.compile(r"\d+(?:\.\d+)*|[^\W\d_]+")


class QuestionLike(Protocol):
    reference: str | None
    facts: list[str]
    sources: list[str]
    domain: str | None
    knowledge: str


def tokens(text: str | None) -> list[str]:
    text = unicodedata.normalize("NFKC", text or "").lower()
    text = _THOUSANDS.sub("", text)
    return [t for t in _TOKEN.findall(text) if t not in _ARTICLES]


def content_tokens(text: str | None) -> list[str]:
    return [t for t in tokens(text) if t not in STOPWORDS]


def mean(values: Iterable[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def _is_phrase(needle: list[str], hay: list[str]) -> bool:
    n = len(needle)
    return any(hay[i : i + n] == needle for i in range(len(hay) - n + 1))


def fact_found(fact: str, answer_tokens: list[str]) -> bool:
    need = Counter(tokens(fact))
    if not need:
        return False
    width = 2 * sum(need.values()) + 2
    if len(answer_tokens) <= width:
        return not need - Counter(answer_tokens)
    window = Counter(answer_tokens[:width])
    for i in range(width, len(answer_tokens) + 1):
        if not need - window:
            return True
        if i < len(answer_tokens):
            window[answer_tokens[i]] += 1
            window[answer_tokens[i - width]] -= 1
    return False


def token_f1(answer: str, reference: str) -> float:
    pred, gold = tokens(answer), tokens(reference)
    if not pred or not gold:
        return 100.0 if pred == gold else 0.0
    common = sum((Counter(pred) & Counter(gold)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(gold)
    return 100.0 * 2 * precision * recall / (precision + recall)


def accuracy(
    answer: str, reference: str | None, facts: list[str]
) -> tuple[float, list[bool] | None]:
    """(points, which facts were found) — the second item is None for F1 scoring."""
    if facts:
        toks = tokens(answer)
        found = [fact_found(f, toks) for f in facts]
        return 100.0 * sum(found) / len(found), found
    return token_f1(answer, reference or ""), None


def detail(answer: str, reference: str | None, facts: list[str]) -> float | None:
    wanted = set(content_tokens(reference if reference else " ".join(facts)))
    if not wanted:
        return None
    have = set(tokens(answer))
    return 100.0 * len(wanted & have) / len(wanted)


def source_cited(source: str, answer_tokens: list[str]) -> bool:
    phrase = tokens(source)
    if phrase and _is_phrase(phrase, answer_tokens):
        return True
    key = set(content_tokens(source)) or set(phrase)
    if not key:
        return False
    have = set(answer_tokens)
    return len(key & have) >= math.ceil(2 * len(key) / 3)


def grounding(answer: str, sources: list[str]) -> float | None:
    if not sources:
        return None
    toks = tokens(answer)
    return 100.0 * sum(source_cited(s, toks) for s in sources) / len(sources)


class RelevanceIndex:
    """TF-IDF over the training texts, with an inverted index so scoring an answer
    touches only the postings of its own words (no dense docs x vocabulary matrix)."""

    def __init__(self, corpus: dict[str, list[str]]):
        docs: list[Counter] = []
        self._by_domain: dict[str, list[int]] = {}
        for domain, texts in corpus.items():
            for text in texts:
                counts = Counter(content_tokens(text))
                if counts:
                    self._by_domain.setdefault(domain, []).append(len(docs))
                    docs.append(counts)
        self._folded = {d.casefold(): d for d in self._by_domain}
        n = len(docs)
        self.size = n
        df = Counter(t for d in docs for t in d)
        self._idf = {t: math.log((1 + n) / (1 + c)) + 1 for t, c in df.items()}
        self._oov_idf = math.log(1 + n) + 1
        postings: dict[str, tuple[list[int], list[float]]] = {}
        for i, counts in enumerate(docs):
            weights = {t: (1 + math.log(c)) * self._idf[t] for t, c in counts.items()}
            norm = math.sqrt(sum(w * w for w in weights.values()))
            for t, w in weights.items():
                ids, ws = postings.setdefault(t, ([], []))
                ids.append(i)
                ws.append(w / norm)
        self._postings = {
            t: (np.array(i, dtype=np.int64), np.array(w)) for t, (i, w) in postings.items()
        }

    def _scope(self, domain: str | None) -> np.ndarray:
        key = domain if domain in self._by_domain else self._folded.get((domain or "").casefold())
        if key is not None:
            return np.array(self._by_domain[key], dtype=np.int64)
        return np.arange(self.size)

    def score(self, answer: str, domain: str | None) -> float | None:
        if self.size == 0:
            return None
        counts = Counter(content_tokens(answer))
        if not counts:
            return 0.0
        weights = {
            t: (1 + math.log(c)) * self._idf.get(t, self._oov_idf) for t, c in counts.items()
        }
        norm = math.sqrt(sum(w * w for w in weights.values()))
        sims = np.zeros(self.size)
        for t, w in weights.items():
            if t in self._postings:
                ids, ws = self._postings[t]
                sims[ids] += w * ws
        scoped = np.sort(sims[self._scope(domain)] / norm)[-TOP_K:]
        return float(100.0 * scoped.mean())


def score_answer(answer: str, q: QuestionLike, index: RelevanceIndex) -> dict[str, Any]:
    acc, found = accuracy(answer, q.reference, q.facts)
    scores: dict[str, Any] = {
        "accuracy": acc,
        "detail": detail(answer, q.reference, q.facts),
        "relevance": index.score(answer, q.domain),
        "grounding": grounding(answer, q.sources),
    }
    scores = {k: (round(v, 2) if isinstance(v, float) else v) for k, v in scores.items()}
    if found is not None:
        scores["facts_found"] = found
    return scores


def retention(candidate_old: float | None, parent_old: float | None) -> float | None:
    if candidate_old is None or parent_old is None:
        return None
    if parent_old <= 0:
        return 100.0
    return min(100.0, 100.0 * candidate_old / parent_old)


def aggregate(scored: list[tuple[QuestionLike, dict[str, Any]]]) -> dict[str, Any]:
    """Means for one candidate; accuracy split by knowledge (new / old)."""

    def m(key: str, knowledge: str | None = None) -> float | None:
        v = mean(s[key] for q, s in scored if knowledge is None or q.knowledge == knowledge)
        return None if v is None else round(v, 2)

    sampled = any("sampled" in s for _, s in scored)  # compare.samples > 0 (evaluate/sampling.py)
    return {
        "accuracy_new": m("accuracy", "new"),
        "accuracy_old": m("accuracy", "old"),
        "accuracy": m("accuracy"),
        **({"sampled_new": m("sampled", "new"), "sampled_old": m("sampled", "old"), "sampled": m("sampled")}
           if sampled else {}),
        "detail": m("detail"),
        "relevance": m("relevance"),
        "grounding": m("grounding"),
        "n_new": sum(q.knowledge == "new" for q, _ in scored),
        "n_old": sum(q.knowledge == "old" for q, _ in scored),
        "n_grounded": sum(bool(q.sources) for q, _ in scored),
    }
