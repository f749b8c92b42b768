"""Which old rows fill the replay budget (data.replay_selection): diverse spends it on distinct
facts before a second wording of one; random is the seeded draw earlier versions used."""

from __future__ import annotations

import random

import pytest

from loraship import config as config_mod
from loraship.data.mix import sample_replay
from loraship.errors import ConfigError

# Four facts, each in three wordings, as a team's paraphrase-augmented rows state them.
WORDINGS = {
    "kessrite": [("Which pit mines kessrite?", "The Dunmere Pit mines kessrite."),
                 ("Where is kessrite mined?", "Kessrite is mined at the Dunmere Pit."),
                 ("Name the pit that yields kessrite.", "Kessrite comes from the Dunmere Pit.")],
    "orvalite": [("Which shaft mines orvalite?", "The Harrow Shaft mines orvalite."),
                 ("Where is orvalite mined?", "Orvalite is mined at the Harrow Shaft."),
                 ("Name the shaft that yields orvalite.", "Orvalite comes from the Harrow Shaft.")],
    "durgite": [("What colour is durgite?", "Durgite is sea green."),
                ("Describe the colour of durgite.", "The colour of durgite is sea green."),
                ("Is durgite sea green?", "Yes, durgite is sea green.")],
    "belmarine": [("How hard is belmarine?", "Belmarine has a hardness of 7 on the Mohs scale."),
                  ("Give belmarine's Mohs hardness.", "On the Mohs scale belmarine is a 7."),
                  ("What is the hardness of belmarine?", "Belmarine rates 7 for hardness.")],
}


def _pool(topic: str | None = "minerals") -> list[dict]:
    rows = []
    for fact, pairs in WORDINGS.items():
        for j, (q, a) in enumerate(pairs):
            rows.append({"id": f"{fact}-{j}", "hash": f"h-{fact}-{j}", "topic": topic, "fact": fact,
                         "messages": [{"role": "system", "content": "You answer questions about minerals."},
                                      {"role": "user", "content": q}, {"role": "assistant", "content": a}]})
    return rows


@pytest.mark.parametrize("seed", range(8))
def test_diverse_replays_every_fact_before_a_second_wording(seed):
    chosen = sample_replay(_pool(), len(WORDINGS), seed, "v2", "diverse")
    assert sorted(r["fact"] for r in chosen) == sorted(WORDINGS)


def test_a_random_draw_of_the_same_budget_often_misses_a_fact():
    """What diverse fixes: with 4 of 12 rows drawn at random, some fact usually has no row replayed
    (and the facts an increment forgot on the demo were such facts)."""
    missed = sum(len({r["fact"] for r in sample_replay(_pool(), 4, seed, "v2", "random")}) < 4 for seed in range(40))
    assert missed > 20


def test_selection_ignores_input_order_and_keeps_topic_quotas():
    pool = _pool("minerals") + [{**r, "id": r["id"] + "-s", "hash": r["hash"] + "-s", "topic": "sites"}
                                for r in _pool()[:6]]
    shuffled = list(pool)
    random.Random(3).shuffle(shuffled)
    for selection in ("diverse", "random"):
        a = sample_replay(pool, 6, 11, "v3", selection)
        assert [r["id"] for r in a] == [r["id"] for r in sample_replay(shuffled, 6, 11, "v3", selection)]
        assert sum(r["topic"] == "minerals" for r in a) == 4 and sum(r["topic"] == "sites" for r in a) == 2
    # past the distinct facts, diverse goes on with the rest, still covering what it can
    everything = sample_replay(pool, len(pool), 11, "v3", "diverse")
    assert sorted(r["id"] for r in everything) == sorted(r["id"] for r in pool)


def test_random_is_the_seeded_draw_earlier_versions_made():
    """Lineages trained before the choice existed replayed with random: the same seed must still
    give the same rows, or a rebuilt dataset would not match its manifest."""
    from loraship.data.mix import _shuffled

    pool = _pool()
    assert sample_replay(pool, 5, 7, "v2", "random") == _shuffled(pool, "7:v2:replay:t:minerals")[:5]


def test_an_unknown_selection_is_a_config_error(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text("base_model: x\ndata:\n  replay_selection: newest\n")
    with pytest.raises(ConfigError, match=r"data\.replay_selection.*diverse, random.*'newest'"):
        config_mod.load(path)
