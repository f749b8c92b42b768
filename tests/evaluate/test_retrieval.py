"""Retrieval arms: BM25 (and embeddings through /api/embed), prompts, grounding against
retrieved passage ids, the report's rows, and the gate's margin over the retrieval baseline."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from loraship import config as config_mod
from loraship.config import CompareConfig, GateConfig
from loraship.errors import ConfigError, OllamaError
from loraship.evaluate import arms, retrieval
from loraship.evaluate.compare import Candidate, Question, run_compare
from loraship.evaluate.report import render_html, render_markdown

ROWS = [
    {"id": "s1", "messages": [{"role": "user", "content": "How deep is the Ebbrook Mine?"},
                              {"role": "assistant", "content": "The Ebbrook Mine is 610 metres deep."}],
     "source": "Survey Atlas", "from_version": "v1", "hash": "h1"},
    {"id": "s2", "messages": [{"role": "user", "content": "Which mineral comes out of the Harrow Shaft?"},
                              {"role": "assistant", "content": "The Harrow Shaft mines orvalite."}],
     "from_version": "v1", "hash": "h2"},
    {"id": "s3", "messages": [{"role": "system", "content": "Be brief."},
                              {"role": "user", "content": "What colour is kessrite?"},
                              {"role": "assistant", "content": "Kessrite is green."}],
     "from_version": "v1", "hash": "h3"},
]


def passages(rows=ROWS, exclude=frozenset()):
    return retrieval.passages_from_rows(rows, set(exclude))


# ---------------------------------------------------------------- passages and BM25


def test_bm25_ranks_the_row_that_answers_first_and_skips_rows_sharing_no_word():
    r = retrieval.BM25Retriever(passages())
    hits = r.search("What is the depth of the Ebbrook mine?", 3)
    assert [p.id for p, _ in hits] == ["s1"]  # the others share no content word: not retrieved
    assert hits[0][1] > 0 and hits[0][0].source == "Survey Atlas"
    assert [p.id for p, _ in r.search("kessrite colour", 1)] == ["s3"]
    assert r.search("what is the", 3) == []  # stopwords only: nothing to rank on


def test_passages_leave_out_test_questions_and_keep_ids_unique_across_versions():
    again = {**ROWS[1], "id": "s1", "from_version": "v2", "hash": "h9"}
    assert [p.id for p in passages(ROWS + [again])] == ["s1", "s2", "s3", "v2:s1"]
    ps = passages(ROWS, exclude={retrieval.prompt_key("  how DEEP is the ebbrook mine ")})
    assert [p.id for p in ps] == ["s2", "s3"]
    assert ps[1].question == "What colour is kessrite?"  # the system turn is not part of a passage


def test_prompt_puts_the_passages_with_ids_and_sources_before_the_question():
    r = retrieval.BM25Retriever(passages())
    text = retrieval.build_prompt("How deep is the Ebbrook Mine?", r.search("Ebbrook depth", 2))
    head, _, question = text.partition("\n\nQuestion: ")
    assert "[s1] (source: Survey Atlas) How deep is the Ebbrook Mine? The Ebbrook Mine is 610" in head
    assert question == "How deep is the Ebbrook Mine?" and head.startswith(retrieval.PROMPT_HEAD)
    assert retrieval.build_prompt("Q?", []) == "Q?"  # nothing retrieved: the plain question


def test_grounding_counts_sources_named_or_cited_through_a_retrieved_passage_id():
    ps = passages()
    assert retrieval.grounding("It is 610 m deep [s1].", ["Survey Atlas"], ps) == 100.0
    assert retrieval.grounding("Per the Survey Atlas it is 610 m.", ["Survey Atlas"], []) == 100.0
    assert retrieval.grounding("It is 610 m deep [s2].", ["Survey Atlas"], ps) == 0.0  # wrong passage
    assert retrieval.grounding("It is 610 m deep [s1].", ["Survey Atlas"], ps[1:]) == 0.0  # s1 not retrieved
    assert retrieval.grounding("Orvalite [s2].", ["s2", "Mining Act"], ps) == 50.0  # a row id as the source
    assert retrieval.grounding("anything", [], ps) is None
    assert retrieval.sources_retrieved(["Survey Atlas", "Mining Act"], ps) == 50.0


def test_ids_are_cited_only_as_a_whole():
    ps = [retrieval.Passage("b1-004", "q", "a", "Handbook")]
    assert retrieval.grounding("see [b1-004]", ["Handbook"], ps) == 100.0
    assert retrieval.grounding("b 1 and later 004", ["Handbook"], ps) == 0.0


# ---------------------------------------------------------------- embeddings through /api/embed


class EmbedServer:
    """Ollama's /api/show and /api/embed as a real server answers them (OLLAMA_API.md): one
    embedding model whose vectors put synonyms together (what an embedding model is for)."""

    CONCEPTS = {"deep": 0, "depth": 0, "metres": 0, "mineral": 1, "orvalite": 1, "colour": 2, "green": 2}

    def __init__(self):
        self.calls: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.calls.append({"path": self.path, **body})
                status, reply = outer.reply(self.path, body)
                data = json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def reply(self, path, body):
        models = {"embedder:latest": ["embedding"], "chatty:latest": ["completion"]}
        name = body["model"] if ":" in body["model"] else body["model"] + ":latest"
        if name not in models:
            return 404, {"error": f"model '{body['model']}' not found"}
        if path == "/api/show":
            return 200, {"modelfile": "", "parameters": "", "template": "", "modified_at": "2025-01-01T00:00:00Z",
                         "details": {"format": "gguf", "family": "bert"},
                         "model_info": {"general.architecture": "bert"}, "capabilities": models[name]}
        if "embedding" not in models[name]:
            return 400, {"error": "this model does not support embeddings"}
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        return 200, {"model": body["model"], "embeddings": [self.vector(t) for t in inputs]}

    def vector(self, text):
        v = [0.0, 0.0, 0.0, 0.1]
        for t in text.lower().replace("?", " ").replace(".", " ").split():
            if t in self.CONCEPTS:
                v[self.CONCEPTS[t]] += 1.0
        return v

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def embed_server():
    s = EmbedServer()
    yield s
    s.close()


def test_embeddings_through_the_official_client_find_what_bm25_cannot(embed_server):
    bm25 = retrieval.BM25Retriever(passages())
    query = "Which shaft gives the mineral?"  # no word of s2's answer; "mineral" only in its question
    hybrid = retrieval.HybridRetriever(bm25, retrieval.OllamaEmbedder(embed_server.url, "embedder"))
    assert hybrid.name == "bm25+embedder"
    assert [p.id for p, _ in hybrid.search("Tell me about the depth", 1)] == ["s1"]  # "depth" ~ "deep"
    assert bm25.search("Tell me about the depth", 1) == []
    assert hybrid.search(query, 1)[0][0].id == "s2"
    embeds = [c for c in embed_server.calls if c["path"] == "/api/embed"]
    assert isinstance(embeds[0]["input"], list) and len(embeds[0]["input"]) == 3  # passages in one batch


def test_a_missing_or_non_embedding_model_is_one_line_naming_the_fix(embed_server):
    with pytest.raises(OllamaError, match=r"refused looking up embedding model nope.*not found.*HTTP 404"):
        retrieval.OllamaEmbedder(embed_server.url, "nope").check()
    with pytest.raises(OllamaError, match="chatty on .* is not an embedding model .*completion.*ollama pull"):
        retrieval.OllamaEmbedder(embed_server.url, "chatty").check()
    retrieval.OllamaEmbedder(embed_server.url, "embedder").check()


# ---------------------------------------------------------------- arms in a comparison

QS = [
    Question("n1", "How deep is the Ebbrook Mine?", None, ["610"], None, "new", ["Survey Atlas"]),
    Question("n2", "Which mineral comes out of the Harrow Shaft?", None, ["orvalite"], None, "new"),
    Question("o1", "What colour is kessrite?", None, ["green"], None, "old"),
    Question("o2", "Boiling point of water?", None, ["100"], None, "old"),
    Question("test:v2:x", "How old is the Tallis Cut?", None, ["300"], None, "new", origin="test:v2"),
]


class ArmBackend:
    """Answers by (weights, question): with passages in the prompt the base reads them back."""

    name = "scripted"

    def __init__(self, plain: dict[str, dict[str, str]], with_passages: dict[str, dict[str, str]]):
        self.plain, self.with_passages, self.prompts = plain, with_passages, []
        self._lock = threading.Lock()

    def served_digest(self, c):
        return "sha256:" + "0" * 64

    def answer(self, c, messages, options):
        text = messages[-1]["content"]
        with self._lock:
            self.prompts.append((c.tag, text))
        head, sep, question = text.partition("\n\nQuestion: ")
        # nothing retrieved: the arm asks the plain question (the base has no plain table)
        table = self.with_passages if sep or c.tag not in self.plain else self.plain
        return table.get(c.tag, {}).get(question if sep else head, "")


def plan_for(backend, rows=ROWS, top_k=2):
    ps = passages(rows, exclude={retrieval.prompt_key(q.question) for q in QS if q.origin != "fixed"})
    r = retrieval.BM25Retriever(ps)
    base = Candidate("base", "base")
    cands = [Candidate("demo:v1", "v1"), Candidate("demo:v2", "v2", "v1")]
    plan = arms.Plan([arms.Arm(arms.BASE_LABEL, base, backend, r)]
                     + [arms.Arm(c.tag + arms.SUFFIX, c, backend, r, of=c.tag) for c in cands], top_k, "test base")
    return plan, cands


def run(backend, gate=None, rows=ROWS):
    plan, cands = plan_for(backend, rows)
    report = run_compare(cands, QS, backend, CompareConfig(concurrency=2), gate or GateConfig(min_grounding=0),
                         domain_corpus={}, system="Be brief.", retrieval_plan=plan)
    return report


RIGHT = {"How deep is the Ebbrook Mine?": "610 metres [s1]", "Which mineral comes out of the Harrow Shaft?": "orvalite",
         "What colour is kessrite?": "green", "Boiling point of water?": "100 degrees", "How old is the Tallis Cut?": "300"}


def test_retrieval_rows_are_asked_scored_and_reported_in_the_matrix_order():
    v2 = {**RIGHT, "How deep is the Ebbrook Mine?": "610 metres"}
    backend = ArmBackend({"demo:v1": {}, "demo:v2": v2}, {"base": RIGHT, "demo:v1": {}, "demo:v2": RIGHT})
    report = run(backend)
    assert list(report["aggregates"]) == ["base+retrieval", "demo:v1", "demo:v1+retrieval", "demo:v2",
                                          "demo:v2+retrieval"]
    base = report["aggregates"]["base+retrieval"]
    assert base["accuracy"] == 100.0 and base["grounding"] == 100.0 and base["sources_retrieved"] == 100.0
    assert report["aggregates"]["demo:v2"]["grounding"] == 0.0  # no passage to cite without retrieval
    by = {(a["tag"], a["question_id"]): a for a in report["answers"]}
    assert [p["id"] for p in by[("base+retrieval", "n1")]["retrieved"]] == ["s1"]
    assert "retrieved" not in by[("demo:v2", "n1")]
    arm_prompts = [t for tag, t in backend.prompts if "\n\nQuestion: " in t]
    # 3 arms x the 3 questions with passages; the other 2 (nothing retrieved) are asked plainly
    assert len(backend.prompts) == 5 * len(QS) and len(arm_prompts) == 3 * 3
    assert all(t.startswith(retrieval.PROMPT_HEAD) for t in arm_prompts)
    assert [a["label"] for a in report["retrieval"]["arms"]] == ["base+retrieval", "demo:v1+retrieval",
                                                                 "demo:v2+retrieval"]
    html, md = render_html(report), render_markdown(report)
    assert "<th>demo:v2+retrieval</th>" in html and "retrieved: s1" in html
    assert "| base+retrieval | 610 metres [s1] |" in md
    assert "Retrieval rows: the top 2 training passages (bm25) placed before each question; base+retrieval is " \
           "test base." in md and "Retrieval rows: the top 2" in html


def test_a_test_question_never_finds_its_own_row():
    leak = {"id": "t1", "messages": [{"role": "user", "content": "How old is the Tallis Cut?"},
                                     {"role": "assistant", "content": "The Tallis Cut is 300 years old."}],
            "from_version": "v2", "hash": "h7"}
    backend = ArmBackend({}, {"base": RIGHT})
    report = run(backend, rows=ROWS + [leak])
    found = [p["id"] for a in report["answers"] if a.get("retrieved") for p in a["retrieved"]]
    assert "t1" not in found and "s1" in found


# ---------------------------------------------------------------- the gate's margin over retrieval


def answers_for(tag: str, scores: list[float]) -> list[dict]:
    return [{"tag": tag, "question_id": f"q{i}", "scores": {"accuracy": s}} for i, s in enumerate(scores)]


def test_gain_over_retrieval_passes_fails_and_is_inconclusive_on_constructed_scores():
    gate = GateConfig(min_gain_over_retrieval=5.0)
    base = answers_for("base+retrieval", [0.0] * 40)
    check = arms.gain_check(base + answers_for("m:v2", [100.0] * 30 + [0.0] * 10), "m:v2", gate)
    assert check["result"] == "PASS" and check["value"] == 75.0 and check["interval"][0] >= 5.0
    check = arms.gain_check(answers_for("base+retrieval", [100.0] * 40) + answers_for("m:v2", [0.0] * 40),
                            "m:v2", gate)
    assert check["result"] == "FAIL" and check["passed"] is False and "-100.0 points" in check["reason"]
    # the point estimate clears +5 but 8 questions cannot tell: INCONCLUSIVE, with a question count
    few = answers_for("base+retrieval", [0.0] * 8) + answers_for("m:v2", [100.0] + [0.0] * 7)
    check = arms.gain_check(few, "m:v2", gate)
    assert check["value"] == 12.5 and check["result"] == "INCONCLUSIVE" and check["questions_to_decide"] > 8
    missing = arms.gain_check(answers_for("m:v2", [100.0] * 5), "m:v2", gate)
    assert missing["result"] == "FAIL" and "--retrieval" in missing["reason"]
    assert arms.gain_check(few, "m:v2", GateConfig()) is None  # default off: no check at all


def test_the_margin_decides_the_verdict_of_a_comparison():
    strong = {"demo:v1": {}, "demo:v2": RIGHT}
    weak_base = ArmBackend(strong, {"base": {}})
    report = run(weak_base, GateConfig(min_gain_over_retrieval=5.0, min_new_gain=0, min_grounding=0))
    check = next(c for c in report["gate"]["checks"] if c["name"] == "retrieval_gain")
    assert check["value"] == 100.0
    strong_base = ArmBackend(strong, {"base": RIGHT})
    report = run(strong_base, GateConfig(min_gain_over_retrieval=5.0, min_new_gain=0, min_grounding=0))
    assert report["gate"]["passed"] is False
    assert "over base+retrieval" in report["gate"]["reason"]


def test_preset_beat_retrieval_sets_the_plans_bar_under_explicit_keys(tmp_path):
    cfg = config_mod.load(None, {"gate.preset": "beat-retrieval"})
    assert cfg.gate.min_gain_over_retrieval == 5.0 and cfg.gate.min_grounding == 0.35
    path = tmp_path / "m.yaml"
    path.write_text("gate:\n  preset: beat-retrieval\n  min_gain_over_retrieval: 8\n", encoding="utf-8")
    assert config_mod.load(path).gate.min_gain_over_retrieval == 8.0
    assert config_mod.load(None).gate.min_gain_over_retrieval is None
    with pytest.raises(ConfigError, match="'gate.preset' is 'beat-rag': known presets are beat-retrieval"):
        config_mod.load(None, {"gate.preset": "beat-rag"})
    with pytest.raises(ConfigError, match="compare.retrieval_top_k"):
        config_mod.load(None, {"compare.retrieval_top_k": "0"})


# ---------------------------------------------------------------- the real pipeline, tiny model


def _ids(path) -> set[str]:
    from loraship.data.prepare import load_rows

    return {r["id"] for r in load_rows(path)}


@pytest.mark.slow
def test_compare_with_retrieval_through_llamacpp_builds_the_base_gguf_once(project):
    from loraship import pipeline

    cfg = project.cfg()
    _, result, out = pipeline.stage_compare([project.tag("v1"), project.tag("v2")], cfg, backend_name="llama.cpp",
                                            retrieval=True)
    tags = [project.tag("v1"), project.tag("v2")]
    assert list(result["aggregates"]) == ["base+retrieval", tags[0], tags[0] + "+retrieval", tags[1],
                                          tags[1] + "+retrieval"]
    arms_ = {a["label"]: a for a in result["retrieval"]["arms"]}
    data1, data2 = (project.version(v).path / "data" for v in ("v1", "v2"))
    assert arms_[tags[0] + "+retrieval"]["passages"] == len(_ids(data1 / "train.jsonl"))
    assert arms_["base+retrieval"]["passages"] == len(_ids(data1 / "train.jsonl")) + len(_ids(data2 / "train.jsonl"))
    base = arms_["base+retrieval"]
    assert base["backend"] == "llama.cpp" and base["version"] is None and base["served_digest"].startswith("sha256:")
    gguf = next((project.home / "runs" / project.model / "base").glob("base-*-Q4_K_M.gguf"))
    held_out = _ids(data1 / "test.jsonl") | _ids(data2 / "test.jsonl") | _ids(data1 / "val.jsonl")
    retrieved = {p["id"] for a in result["answers"] for p in a.get("retrieved", [])}
    assert retrieved and not retrieved & held_out
    assert "base+retrieval" in out["html"].read_text(encoding="utf-8")
    stamp = gguf.stat().st_mtime_ns
    pipeline.stage_compare(tags, cfg, backend_name="llama.cpp", retrieval=True)
    assert gguf.stat().st_mtime_ns == stamp  # built once per base, then reused


@pytest.mark.slow
def test_with_ollama_the_base_answers_through_its_gguf_or_a_named_tag(project):
    from loraship import pipeline

    for v in ("v1", "v2"):
        project.register(v)
    tags = [project.tag("v1"), project.tag("v2")]
    cfg = project.cfg(**{"gate.preset": "beat-retrieval"})  # the preset turns the retrieval rows on
    _, result, _ = pipeline.stage_compare(tags, cfg)
    # One engine per comparison: the base is served as <model>:base and answers through Ollama too.
    backends_ = {a["label"]: a["backend"] for a in result["retrieval"]["arms"]}
    assert backends_ == {"base+retrieval": "ollama", tags[0] + "+retrieval": "ollama",
                         tags[1] + "+retrieval": "ollama"}
    base_tag = f"{project.model}:base"
    assert result["retrieval"]["arms"][0]["weights"] == base_tag and base_tag in result["retrieval"]["base"]
    served = project.server.tags()
    assert base_tag in served
    pipeline.stage_compare(tags, cfg)  # again: the served base is reused, not created anew
    assert project.server.tags()[base_tag] == served[base_tag]
    check = next(c for c in result["gate"]["checks"] if c["name"] == "retrieval_gain")
    assert check["threshold"] == 5.0 and check["questions"] == len(result["questions"])
    cfg = project.cfg(**{"compare.retrieval_base": tags[0]})  # a served tag standing for the base
    _, result, _ = pipeline.stage_compare(tags, cfg, retrieval=True)
    assert result["retrieval"]["arms"][0]["weights"] == tags[0] and result["retrieval"]["base"].startswith("Ollama tag")
    cfg = project.cfg(**{"compare.retrieval_base": "nope:1"})
    with pytest.raises(OllamaError, match=r"the base for base\+retrieval \(nope:1\) cannot be used: .*retrieval_base"):
        pipeline.stage_compare(tags, cfg, retrieval=True)
