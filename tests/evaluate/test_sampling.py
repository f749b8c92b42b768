"""The sampled measure: k answers per question at the served temperature, scored as the share
that is right (evaluate/sampling.py), its intervals (stats.py), and how compare asks for it."""

from __future__ import annotations

import math

import numpy as np
import pytest

from helpers import TableBackend
from loraship.config import CompareConfig, GateConfig, load
from loraship.errors import ConfigError
from loraship.evaluate import report_gate, sampling, stats
from loraship.evaluate.compare import Candidate, Question, run_compare

KESSRITE = Question("kessrite", "What colour is kessrite?", "Kessrite is green.", ["green"], "minerals", "old")


# ---------------------------------------------------------------- the measure


def test_samples_are_drawn_at_the_served_temperature_with_one_seed_each():
    m = sampling.choose(CompareConfig(samples=4, seed=7), served_temperature=0.7)
    assert (m.name, m.samples, m.temperature, m.seeds) == ("sampled", 4, 0.7, (8, 9, 10, 11))
    assert m.key == "sampled" and "served temperature 0.7" in m.reason
    own = sampling.choose(CompareConfig(samples=2, sample_temperature=1.0), served_temperature=0.7)
    assert own.temperature == 1.0 and "compare.sample_temperature" in own.reason


@pytest.mark.parametrize("cfg, served, why", [
    (CompareConfig(samples=0), 0.7, "compare.samples is 0"),
    (CompareConfig(samples=8), 0.0, "served temperature is 0"),
    (CompareConfig(samples=8), None, "no served temperature"),
])
def test_the_greedy_answer_is_the_measure_when_sampling_would_add_nothing(cfg, served, why):
    m = sampling.choose(cfg, served)
    assert (m.name, m.samples, m.key) == ("greedy", 0, "accuracy") and why in m.reason


def test_a_question_scores_the_share_of_its_samples_that_are_right():
    texts = ["Kessrite is green.", "It is blue.", "Green, like bottle glass.", ""]
    assert sampling.score(texts, KESSRITE) == {"sampled": 50.0, "sampled_right": 2}
    two = Question("k2", "Colour and hardness?", None, ["green", "6"], None, "old")
    assert sampling.score(["green, hardness 6", "green"], two) == {"sampled": 75.0, "sampled_right": 1}


@pytest.mark.parametrize("key, value, match", [
    ("samples", -1, "compare.samples' must be a whole number 0..64"),
    ("samples", 65, "compare.samples' must be a whole number 0..64"),
    ("samples", True, "compare.samples' must be a"),
    ("sample_temperature", 0, "compare.sample_temperature' must be a number in \\(0, 2\\]"),
    ("sample_temperature", "hot", "compare.sample_temperature' must be"),
])
def test_bad_sampling_settings_are_refused_in_one_line(tmp_path, key, value, match):
    with pytest.raises(ConfigError, match=match):
        load(None, {f"compare.{key}": value})


# ---------------------------------------------------------------- statistics


@pytest.mark.parametrize("df, exact", [(1, 12.7062), (3, 3.1824), (5, 2.5706), (10, 2.2281), (29, 2.0452), (60, 2.0003),
                                       (1000, 1.9623)])
def test_student_t_quantile_matches_the_table(df, exact):
    assert stats.t_value(0.95, df) == pytest.approx(exact, abs=1e-4)
    assert stats.t_value(0.99, 10) == pytest.approx(3.1693, abs=1e-4)


def test_sampled_shares_get_a_narrower_interval_than_wilson_would_give_them():
    rng = np.random.default_rng(3)
    parent = rng.choice([0.0, 12.5, 25.0, 87.5, 100.0], 40)
    cand = np.clip(parent + rng.choice([-12.5, 0.0, 12.5], 40), 0, 100)
    sampled = stats.paired_difference(parent, cand, 0.95, 4000, 1, samples=8)
    wilson = stats.paired_difference(parent, cand, 0.95, 4000, 1)
    assert sampled.high - sampled.low < 0.6 * (wilson.high - wilson.low)
    assert sampled.low <= sampled.estimate <= sampled.high
    back = stats.Interval.from_json(sampled.to_json())
    assert (back.samples, back.sd) == (8, pytest.approx(sampled.sd, abs=1e-6))


def test_identical_sampled_scores_still_get_the_width_of_one_sample_on_one_question():
    same = [0.0] * 20 + [100.0] * 20
    iv = stats.paired_difference(same, same, 0.95, 2000, 1, samples=8)
    assert iv.sd == pytest.approx(1 / (8 * math.sqrt(40)))
    assert iv.high == pytest.approx(-iv.low) == pytest.approx(100 * stats.t_value(0.95, 39) * iv.sd / math.sqrt(40))
    assert iv.high > 0


def _simulate(rng, n: int, k: int, shift: float) -> tuple[np.ndarray, np.ndarray, float]:
    """Questions with a spread of true probabilities; the candidate's moved by `shift` on some;
    each side's score is the share of k Bernoulli samples (what compare measures)."""
    p = rng.beta(0.6, 0.6, n)
    moved = np.clip(p + shift * (rng.random(n) < 0.5), 0, 1)
    a, b = rng.binomial(k, p) / k * 100, rng.binomial(k, moved) / k * 100
    return a, b, 100 * float((moved - p).mean())


@pytest.mark.parametrize("shift", [0.0, -0.3])
def test_sampled_paired_intervals_cover_the_true_difference(shift):
    """Coverage of the paired sampled interval at 40 questions x 8 samples, 400 runs: at least 93%
    for a nominal 95% (the expected difference here is over these questions' true rates)."""
    rng = np.random.default_rng(11)
    covered = 0
    for run in range(400):
        a, b, truth = _simulate(rng, 40, 8, shift)
        iv = stats.paired_difference(a, b, 0.95, 1000, run, samples=8)
        covered += iv.low <= truth <= iv.high
    assert covered / 400 >= 0.93


def test_more_questions_decide_a_sampled_interval_at_the_projected_count():
    parent = [50.0] * 4 + [100.0] * 13 + [0.0] * 13
    cand = [25.0] * 4 + [100.0] * 13 + [0.0] * 13
    iv = stats.paired_difference(parent, cand, 0.95, 2000, 1, samples=8).negated()  # a loss of 3.3
    assert iv.low < 2.0 < iv.high  # 30 questions cannot tell it from the allowed 2
    need = stats.questions_to_decide(iv, 2.0, False, 0.95)
    assert need is not None and need > iv.n
    assert stats.project(iv, need, 0.95)[0] > 2.0 >= stats.project(iv, need - 1, 0.95)[0]


# ---------------------------------------------------------------- compare and the gate


class SampledTable(TableBackend):
    """Answers from a table; a sample's answer is picked by its seed from the question's list."""

    def __init__(self, answers, samples):
        super().__init__(answers)
        self.samples_table, self.seen = samples, []

    def answer(self, c, messages, options):
        self.seen.append(options)
        if options["temperature"] == 0:
            return super().answer(c, messages, options)
        texts = self.samples_table[c.tag][messages[-1]["content"]]
        return texts[(options["seed"] - 8) % len(texts)]


def test_compare_judges_the_sampled_measure_and_still_reports_the_greedy_answer():
    qs = [Question(f"o{i}", f"old {i}?", None, ["yes"], None, "old") for i in range(6)] + \
         [Question(f"n{i}", f"new {i}?", None, ["yes"], None, "new") for i in range(6)]
    greedy = {tag: {q.question: "yes" for q in qs} for tag in ("m:v1", "m:v2")}
    # v1 knows the old facts 3/4 of the time and no new one; v2 keeps the old, learns the new 4/4.
    samples = {"m:v1": {q.question: (["yes", "yes", "yes", "no"] if q.knowledge == "old" else ["no"] * 4)
                        for q in qs},
               "m:v2": {q.question: ["yes"] * 4 for q in qs}}
    backend = SampledTable(greedy, samples)
    cands = [Candidate("m:v1", "v1"), Candidate("m:v2", "v2", "v1")]
    report = run_compare(cands, qs, backend, CompareConfig(samples=4, seed=7, concurrency=3), GateConfig(),
                         domain_corpus={}, system=None, served_temperature=0.7)
    assert report["measure"]["name"] == "sampled" and report["measure"]["seeds"] == [8, 9, 10, 11]
    sampled_opts = [o for o in backend.seen if o["temperature"]]
    assert len(sampled_opts) == 2 * 12 * 4 and {o["temperature"] for o in sampled_opts} == {0.7}
    v1, v2 = report["aggregates"]["m:v1"], report["aggregates"]["m:v2"]
    assert (v1["accuracy_old"], v1["sampled_old"], v1["sampled_new"]) == (100.0, 75.0, 0.0)
    assert (v2["new_gain"], v2["old_loss"], v2["measure"]) == (100.0, -25.0, "sampled")
    answer = next(a for a in report["answers"] if a["tag"] == "m:v1" and a["question_id"] == "o0")
    assert answer["samples"] == ["yes", "yes", "yes", "no"] and answer["scores"]["sampled_right"] == 3
    assert "sampled accuracy" in report["gate"]["statistics"]["method"]
    loss = next(c for c in report["gate"]["checks"] if c["name"] == "old_loss")
    assert loss["interval"][0] <= loss["value"] <= loss["interval"][1]
    line = report_gate.summary_lines(report)[1]
    assert line.startswith("m:v2: new 100.0") and "(greedy: new 100.0, old 100.0)" in line


def test_greedy_only_compare_is_what_it_was():
    qs = [Question(f"q{i}", f"q {i}?", None, ["yes"], None, "new" if i % 2 else "old") for i in range(6)]
    backend = TableBackend({"m:v1": {q.question: "no" for q in qs}, "m:v2": {q.question: "yes" for q in qs}})
    cands = [Candidate("m:v1", "v1"), Candidate("m:v2", "v2", "v1")]
    report = run_compare(cands, qs, backend, CompareConfig(samples=0), GateConfig(), domain_corpus={}, system=None,
                         served_temperature=0.7)
    assert report["measure"]["name"] == "greedy"
    assert "sampled" not in report["aggregates"]["m:v2"] and "samples" not in report["answers"][0]
    assert report["aggregates"]["m:v2"]["new_gain"] == 100.0


def test_models_in_this_process_are_asked_question_by_question_across_candidates():
    """In process every model has its own lock and share of the cores: workers that took one
    candidate's jobs in turn would queue on one lock. A server gets them candidate by candidate."""
    from loraship.evaluate.compare import _ask_all

    calls = []

    class Recorder(TableBackend):
        def answer(self, c, messages, options):
            calls.append(c.tag)
            return "x"

    qs = [Question(f"q{i}", f"q {i}?", None, ["x"], None, "new") for i in range(2)]
    cands = [Candidate("m:v1", "v1"), Candidate("m:v2", "v2", "v1")]
    _ask_all(cands, qs, Recorder({}), {"temperature": 0}, None, 1, None, interleave=True)
    assert calls == ["m:v1", "m:v2", "m:v1", "m:v2"]
    calls.clear()
    _ask_all(cands, qs, Recorder({}), {"temperature": 0}, None, 1, None)
    assert calls == ["m:v1", "m:v1", "m:v2", "m:v2"]


def test_ollama_gets_a_questions_k_seeds_at_once_for_one_model():
    """All k requests in flight together (a barrier that opens only for all of them): the runner
    batches them where it has parallel slots and queues them where not; answers keep seed order."""
    import threading

    from loraship.evaluate.backends import OllamaBackend
    from loraship.evaluate.compare import _samples

    barrier, seen = threading.Barrier(4, timeout=20), []

    class Client:
        def chat(self, model, messages, options, stream):
            seen.append((model, options["seed"], options["temperature"]))
            barrier.wait()
            return {"message": {"content": f"seed {options['seed']}"}}

    backend = OllamaBackend("http://127.0.0.1:9", client=Client())
    texts = _samples(backend, Candidate("m:v1", "v1"), [{"role": "user", "content": "q"}],
                     {"temperature": 0.7, "num_predict": 8}, [8, 9, 10, 11])
    assert texts == ["seed 8", "seed 9", "seed 10", "seed 11"]
    assert sorted(seen) == [("m:v1", s, 0.7) for s in (8, 9, 10, 11)]
