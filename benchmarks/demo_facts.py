"""Which of the demo's training rows teach the fact a question asks for.

Shared by the demo-data tests (every fixed fact is taught, in several wordings) and by
bench-gate (which old facts an increment replayed a row of).
"""

from __future__ import annotations

from loraship.evaluate.scoring import content_tokens, fact_found, tokens

# Question words that name no subject: what is left of a question ("kessrite", "harrow shaft",
# "brine drift test") must appear in the training row that teaches its fact.
GENERIC = set("""colour hardness hard mohs scale mineral used use make mined mine pit which metres deep many
    basin varnholt where year survey surveyed surveyor tool instrument detect time day done map days long one
    drilling bring drill ground grid wide square squares marked who first made town company mining founded
    open office invented introduced happen mines close discovered main reach comes divide take core""".split())


def subject(question: str) -> set[str]:
    return {t for t in content_tokens(question) if t not in GENERIC}


def row_tokens(row: dict) -> tuple[list[str], list[str]]:
    """(all tokens of a normalised row, its assistant tokens), tokenised the way the scorer reads answers."""
    said = [tokens(m["content"]) for m in row["messages"] if m["role"] == "assistant"]
    asked = [tokens(m["content"]) for m in row["messages"] if m["role"] != "assistant"]
    return [t for turn in asked + said for t in turn], [t for turn in said for t in turn]


def teaches(question: str, facts: list[str], row_toks: tuple[list[str], list[str]]) -> bool:
    """The row's answer states every fact, and the row names the question's subject: "6" in a row
    about orvalite does not teach kessrite's hardness."""
    text, said = row_toks
    return all(fact_found(f, said) for f in facts) and subject(question) <= set(text)
