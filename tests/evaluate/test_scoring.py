"""Scoring rules on hand-written answers: each test is a case a reviewer would argue about."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from loraship.evaluate import scoring


@dataclass
class Q:
    reference: str | None = None
    facts: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    domain: str | None = None
    knowledge: str = "new"


def test_tokens_normalise_case_punctuation_articles_and_numbers():
    assert scoring.tokens("The Kessel mine, at 2,140 m; ratio 3.5!") == [
        "kessel",
        "mine",
        "at",
        "2140",
        "m",
        "ratio",
        "3.5",
    ]
    assert scoring.tokens("In 2019.") == ["in", "2019"]


@pytest.mark.parametrize(
    "fact, answer, found",
    [
        ("2140", "It rises to 2,140 metres.", True),
        ("carbon dioxide", "Plants absorb Carbon-Dioxide.", True),
        (
            "minor skin marks",
            "apples whose skin has minor marks",
            True,
        ),  # reordered, close together
        (
            "minor skin marks",
            "minor issues are described at length here in this long text before any skin marks",
            False,
        ),
        ("48 hours", "within two days", False),
        ("12 growers", "founded by 12 local growers", True),
    ],
)
def test_fact_found(fact, answer, found):
    assert scoring.fact_found(fact, scoring.tokens(answer)) is found


def test_accuracy_is_share_of_facts_found():
    points, found = scoring.accuracy(
        "Founded in 1987 by twelve growers.", None, ["1987", "12 growers"]
    )
    assert points == pytest.approx(50.0)
    assert found == [True, False]


def test_accuracy_without_facts_is_token_f1():
    points, found = scoring.accuracy(
        "Water boils at 100 degrees", "Water boils at 100 degrees Celsius at sea level", []
    )
    # 5 common tokens; precision 5/5, recall 5/9
    assert points == pytest.approx(100 * 2 * (1 * 5 / 9) / (1 + 5 / 9))
    assert found is None
    assert scoring.token_f1("the same words", "Same words.") == 100.0
    assert scoring.token_f1("nothing shared", "different text") == 0.0
    assert scoring.token_f1("", "reference") == 0.0


def test_detail_is_recall_of_reference_content_words():
    ref = "Apples are held at 1 degree Celsius at 92 percent humidity."
    # content tokens: apples held 1 degree celsius 92 percent humidity (8)
    assert scoring.detail("Apples: 1 degree Celsius.", ref, []) == pytest.approx(100 * 4 / 8)
    assert scoring.detail("", ref, []) == 0.0
    assert scoring.detail("delivered within 48 hours", None, ["48 hours"]) == 100.0
    assert scoring.detail("anything", None, []) is None


def test_grounding_counts_cited_sources():
    sources = ["Brightwater Storage Manual", "Grading Handbook section 4"]
    assert scoring.grounding("As the Brightwater Storage Manual says, 1 degree.", sources) == 50.0
    assert (
        scoring.grounding(
            "Per the storage manual of Brightwater and the grading handbook, 4", sources
        )
        == 100.0
    )
    assert scoring.grounding("Trust me.", sources) == 0.0
    assert scoring.grounding("anything", []) is None


def test_relevance_prefers_on_domain_answers_and_penalises_rambling():
    corpus = {
        "storage": [
            "Apples are kept in the cold store at one degree with high humidity.",
            "The cold store humidity is checked every morning.",
        ],
        "grading": ["Class Amber apples have minor skin marks and go to juice."],
    }
    index = scoring.RelevanceIndex(corpus)
    on = index.score("The cold store keeps apples at one degree and high humidity.", "storage")
    off = index.score("Football scores from yesterday's league matches were surprising.", "storage")
    rambling = index.score("cold store " + "banana spaceship volcano guitar " * 5, "storage")
    assert on > 50 > rambling > off == 0.0
    # the domain decides which texts count: a storage answer is less relevant to grading
    assert index.score("cold store humidity", "storage") > index.score(
        "cold store humidity", "grading"
    )
    # an unknown domain falls back to every text; an empty corpus gives no score
    assert (
        index.score("cold store humidity", "nowhere")
        == index.score("cold store humidity", None)
        > 0
    )
    assert scoring.RelevanceIndex({}).score("anything", None) is None
    assert index.score("", "storage") == 0.0


def test_retention_rules():
    assert scoring.retention(40.0, 80.0) == 50.0
    assert scoring.retention(90.0, 80.0) == 100.0  # capped: old gains do not buy anything
    assert scoring.retention(0.0, 0.0) == 100.0  # nothing to lose
    assert scoring.retention(None, 80.0) is None
    assert scoring.retention(50.0, None) is None


def test_score_answer_and_aggregate_split_by_knowledge():
    index = scoring.RelevanceIndex({"d": ["apples in the cold store"]})
    new_q = Q(
        reference="founded in 1987",
        facts=["1987"],
        sources=["Charter"],
        domain="d",
        knowledge="new",
    )
    old_q = Q(reference="Water boils at 100 degrees", knowledge="old")
    s_new = scoring.score_answer("It was 1987, says the Charter.", new_q, index)
    s_old = scoring.score_answer("no idea", old_q, index)
    assert (
        s_new["accuracy"] == 100.0
        and s_new["grounding"] == 100.0
        and s_new["facts_found"] == [True]
    )
    assert s_old["accuracy"] == 0.0 and s_old["grounding"] is None and "facts_found" not in s_old
    agg = scoring.aggregate([(new_q, s_new), (old_q, s_old)])
    assert agg["accuracy_new"] == 100.0 and agg["accuracy_old"] == 0.0 and agg["accuracy"] == 50.0
    assert (agg["n_new"], agg["n_old"], agg["n_grounded"]) == (1, 1, 1)
    assert agg["grounding"] == 100.0  # the mean only over questions that cite sources
