"""`make bench`'s headline ratios: a number with its interval, from same-round ratios."""

from __future__ import annotations

import math

from benchmarks.bench import headline, ratio_estimate


def test_the_ratio_is_the_geometric_mean_of_the_rounds_inside_its_interval():
    est = ratio_estimate([1.551, 1.623, 1.553])
    assert est["rounds"] == 3 and est["per_round"] == [1.551, 1.623, 1.553]
    assert math.isclose(est["ratio"], (1.551 * 1.623 * 1.553) ** (1 / 3), abs_tol=1e-3)
    lo, hi = est["interval"]
    assert lo < est["ratio"] < hi and lo > 1.4 and hi < 1.75
    wide = ratio_estimate([1.0, 1.6, 1.2])["interval"]
    assert wide[1] - wide[0] > hi - lo  # more spread between rounds, a wider interval


def test_one_round_has_no_interval():
    assert ratio_estimate([1.2])["interval"] is None


def test_headline_carries_both_goals_to_the_top_of_the_json():
    est = ratio_estimate([1.5, 1.6])
    result = {"train": {"tokens_per_s_ratio": {"loraship_vs_plain": est}}, "export": {"wall_ratio": est}}
    top = headline(result)
    assert top["train_vs_plain"]["ratio"] == top["export_vs_bare"]["ratio"] == est["ratio"]
    assert top["train_vs_plain"]["goal"] == ">= 1.5" and top["export_vs_bare"]["goal"] == "<= 1.1"
    assert headline({}) == {}
