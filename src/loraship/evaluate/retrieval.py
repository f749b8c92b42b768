"""Retrieval over a version's training material: the baseline a fine-tune has to beat.

Passages are training rows (the last user turn and the last assistant turn of each
row of the lineage's train splits; never val or test rows). BM25 ranks them through
`bm25s`; when an Ollama embedding model is configured, its `/api/embed` ranking is fused
with BM25's by reciprocal rank fusion (Cormack et al. 2009, k = 60), which needs no
score calibration between the two.

Tokens are scoring's content tokens (NFKC, lowercase, numbers kept whole, stopwords
dropped), so retrieval and the accuracy rules read text the same way.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from loraship.errors import ConfigError, OllamaError
from loraship.evaluate import scoring

RRF_K = 60
EMBED_BATCH = 32


@dataclass(frozen=True)
class Passage:
    id: str  # the row id, made unique across the lineage ("v2:row-1" when two versions share one)
    question: str
    answer: str
    source: str | None = None  # the row's `source` field (a citation), if it had one
    topic: str | None = None

    @property
    def text(self) -> str:
        return f"{self.question}\n{self.answer}"


class Retriever(Protocol):
    name: str

    def search(self, query: str, k: int) -> list[tuple[Passage, float]]: ...


def _last(messages: list[dict], role: str) -> str | None:
    for m in reversed(messages):
        if m.get("role") == role and str(m.get("content") or "").strip():
            return str(m["content"]).strip()
    return None


def prompt_key(text: str | None) -> str:
    """How two questions are recognised as the same question (case, spacing, punctuation aside)."""
    return " ".join(scoring.tokens(text))


def passages_from_rows(rows: Iterable[dict], exclude_prompts: set[str] = frozenset()) -> list[Passage]:
    """Training rows as passages; a row asking a question in `exclude_prompts` (a test question) is left out."""
    out: list[Passage] = []
    seen_ids: set[str] = set()
    seen_hashes: set[str] = set()
    for row in rows:
        msgs = row.get("messages") or []
        question, answer = _last(msgs, "user"), _last(msgs, "assistant")
        if question is None or answer is None or prompt_key(question) in exclude_prompts:
            continue
        if row.get("hash") and row["hash"] in seen_hashes:
            continue
        seen_hashes.add(row.get("hash") or "")
        pid = str(row.get("id"))
        if pid in seen_ids:
            pid = f"{row.get('from_version')}:{pid}"
        seen_ids.add(pid)
        out.append(Passage(pid, question, answer, row.get("source"), row.get("topic")))
    return out


class BM25Retriever:
    """BM25 (Lucene's variant, k1 1.5, b 0.75: bm25s's defaults) over the passages."""

    name = "bm25"

    def __init__(self, passages: list[Passage]):
        import bm25s

        if not passages:
            raise ConfigError("retrieval has no passages: the version's train split is empty")
        self.passages = passages
        self._index = bm25s.BM25()
        self._index.index([scoring.content_tokens(p.text) for p in passages], show_progress=False)
        self._lock = threading.Lock()  # compare asks from several threads; the index is not documented as thread-safe

    def scores(self, query: str) -> np.ndarray:
        """BM25 score of every passage (0 where the passage shares no word with the query)."""
        toks = scoring.content_tokens(query)
        n = len(self.passages)
        with self._lock:
            docs, scores = self._index.retrieve([toks], k=n, show_progress=False)
        out = np.zeros(n, dtype=np.float64)
        out[docs[0]] = scores[0]
        return out

    def search(self, query: str, k: int) -> list[tuple[Passage, float]]:
        s = self.scores(query)
        order = [int(i) for i in np.argsort(-s, kind="stable") if s[i] > 0][:k]
        return [(self.passages[i], round(float(s[i]), 4)) for i in order]


class OllamaEmbedder:
    """Embeddings through the official client's `embed` (Ollama's /api/embed), L2-normalised here too."""

    def __init__(self, host: str, model: str, timeout: float = 600.0, client: Any = None):
        from loraship.serve import ollama_client

        self.host, self.model = host, model
        self._call = ollama_client.call
        self._client = client or ollama_client.client(host, timeout)

    def check(self) -> None:
        """Refuse a model the server lacks, or one whose /api/show says it cannot embed."""
        shown = self._call(self.host, f"looking up embedding model {self.model}",
                           lambda: self._client.show(self.model))
        caps = getattr(shown, "capabilities", None)
        if caps is not None and "embedding" not in caps:
            raise OllamaError(f"{self.model} on {self.host} is not an embedding model (capabilities: "
                              f"{', '.join(caps) or 'none'}): set compare.retrieval_embed_model to one, "
                              "e.g. `ollama pull nomic-embed-text`")

    def embed(self, texts: list[str]) -> np.ndarray:
        vectors: list[list[float]] = []
        for start in range(0, len(texts), EMBED_BATCH):
            batch = texts[start:start + EMBED_BATCH]
            resp = self._call(self.host, f"embedding with {self.model}",
                              lambda b=batch: self._client.embed(model=self.model, input=b))
            got = list(resp.embeddings or [])
            if len(got) != len(batch) or any(not v for v in got):
                raise OllamaError(f"{self.model} on {self.host} returned {len(got)} embeddings for "
                                  f"{len(batch)} texts: it cannot embed; choose an embedding model")
            vectors.extend(got)
        arr = np.asarray(vectors, dtype=np.float64)
        norms = np.linalg.norm(arr, axis=1, keepdims=True)
        return arr / np.where(norms == 0, 1.0, norms)


class HybridRetriever:
    """BM25 and embedding rankings fused: score = sum over rankings of 1 / (RRF_K + rank)."""

    def __init__(self, bm25: BM25Retriever, embedder: OllamaEmbedder):
        self.bm25, self.embedder = bm25, embedder
        self.passages = bm25.passages
        self.name = f"bm25+{embedder.model}"
        self._matrix = embedder.embed([p.text for p in self.passages])

    def search(self, query: str, k: int) -> list[tuple[Passage, float]]:
        lexical = self.bm25.scores(query)
        dense = self._matrix @ self.embedder.embed([query])[0]
        fused = np.zeros(len(self.passages))
        for ranking in (_ranks(lexical, only_positive=True), _ranks(dense)):
            for rank, i in enumerate(ranking, 1):
                fused[i] += 1.0 / (RRF_K + rank)
        order = np.argsort(-fused, kind="stable")[:k]
        return [(self.passages[int(i)], round(float(fused[i]), 6)) for i in order if fused[i] > 0]


def _ranks(scores: np.ndarray, only_positive: bool = False) -> list[int]:
    order = [int(i) for i in np.argsort(-scores, kind="stable")]
    return [i for i in order if scores[i] > 0] if only_positive else order


# ---------------------------------------------------------------- prompts and grounding

PROMPT_HEAD = ("Passages from the training material that may help. When you use one, "
               "cite its id in square brackets.")


def build_prompt(question: str, hits: list[tuple[Passage, float]]) -> str:
    """The user turn of a retrieval arm: the passages, then the question, as one message."""
    if not hits:
        return question
    lines = [PROMPT_HEAD, ""]
    for p, _ in hits:
        cite = f" (source: {p.source})" if p.source else ""
        lines.append(f"[{p.id}]{cite} {p.question} {p.answer}")
    return "\n".join(lines + ["", f"Question: {question}"])


def _cites_id(pid: str, answer_tokens: list[str]) -> bool:
    # An id is cited only as a whole phrase: "b1-004" must not be found in "1 b ... 004".
    want = scoring.tokens(pid)
    n = len(want)
    return bool(want) and any(answer_tokens[i:i + n] == want for i in range(len(answer_tokens) - n + 1))


def grounding(answer: str, sources: list[str], passages: list[Passage]) -> float | None:
    """Share of the question's sources the answer cites, by name or through a retrieved passage.

    A source counts as cited when the answer names it (scoring.source_cited), or cites the
    id of a retrieved passage that is that source (its row id) or carries it (its `source`).
    """
    if not sources:
        return None
    toks = scoring.tokens(answer)
    cited = [p for p in passages if _cites_id(p.id, toks)]
    hit = 0
    for s in sources:
        key = prompt_key(s)
        via = any(prompt_key(p.id) == key or (p.source and prompt_key(p.source) == key) for p in cited)
        hit += bool(via or scoring.source_cited(s, toks))
    return 100.0 * hit / len(sources)


def sources_retrieved(sources: list[str], passages: list[Passage]) -> float | None:
    """Share of the question's sources among the retrieved passages (the retriever's recall)."""
    if not sources:
        return None
    have = {prompt_key(p.id) for p in passages} | {prompt_key(p.source) for p in passages if p.source}
    return 100.0 * sum(prompt_key(s) in have for s in sources) / len(sources)
