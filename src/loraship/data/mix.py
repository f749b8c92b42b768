"""Seeded, topic-stratified splitting and replay sampling for the data stage.

Split rounding rule (documented here because users ask why 10 rows became 7/2/1):

1. Overall sizes by largest remainder: each split gets floor(n * fraction); the
   rows left over go, one each, to the splits with the largest fractional parts
   (ties: train, then val, then test). Sizes sum to n and each is within one row
   of its exact share.
2. With n >= 3, every split whose fraction is above zero gets at least one row,
   taken from the largest split.
3. Train always gets at least one row (n = 1 or 2: everything goes to train).
4. Stratification: within each topic (rows without a topic form one group) the
   rows are sorted by hash, shuffled with the seed, and given the rank
   (i + 0.5) / topic_size. All rows are ordered by rank and cut into train, val,
   test in that order, so each topic lands in each split within one row of its
   proportional share, and a topic with a single row lands in train.

Everything is a pure function of the rows' content and the seed: the input order
of rows does not change the result.
"""

from __future__ import annotations

import hashlib
import heapq
import math
import random
import re
from collections import defaultdict
from typing import Any

from loraship.config import REPLAY_SELECTIONS

Row = dict[str, Any]
BAND = (0.10, 0.30)


def topic_key(topic: str | None) -> str:
    # A prefix keeps "no topic" apart from any real topic name.
    return "\x00none" if topic is None else f"t:{topic}"


def largest_remainder(total: int, weights: list[float]) -> list[int]:
    """Split `total` into integers proportional to `weights`; ties go to the earlier weight."""
    wsum = sum(weights)
    exact = [total * w / wsum if wsum else 0.0 for w in weights]
    sizes = [math.floor(x + 1e-9) for x in exact]
    # Round the remainders so that float noise (1.4999999) cannot break a tie.
    order = sorted(range(len(weights)), key=lambda i: (-round(exact[i] - sizes[i], 9), i))
    for i in order[: total - sum(sizes)]:
        sizes[i] += 1
    return sizes


def split_sizes(n: int, fractions: list[float]) -> list[int]:
    """[train, val, test] sizes for n rows; see the module docstring for the rule."""
    sizes = largest_remainder(n, list(fractions))
    if n >= 3:
        for i in (1, 2):
            if fractions[i] > 0 and sizes[i] == 0:
                sizes[sizes.index(max(sizes))] -= 1
                sizes[i] = 1
    while n >= 1 and sizes[0] < 1:
        donor = 1 if sizes[1] >= sizes[2] else 2
        sizes[donor] -= 1
        sizes[0] += 1
    return sizes


def _group(rows: list[Row]) -> dict[str, list[Row]]:
    groups: dict[str, list[Row]] = defaultdict(list)
    for r in rows:
        groups[topic_key(r["topic"])].append(r)
    return groups


def _shuffled(rows: list[Row], seed_text: str) -> list[Row]:
    # Sorting by hash first makes the shuffle independent of the input order;
    # a str seed is hashed with sha512 by `random`, so it is stable across runs.
    out = sorted(rows, key=lambda r: (r["hash"], r["id"]))
    random.Random(seed_text).shuffle(out)
    return out


def stratified_split(rows: list[Row], fractions: list[float], seed: int) -> tuple[list[Row], list[Row], list[Row]]:
    ranked = []
    for key, group in sorted(_group(rows).items()):
        # Breaks rank ties between topics by a seeded draw, not alphabetically.
        tie = hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()
        for i, row in enumerate(_shuffled(group, f"{seed}:split:{key}")):
            ranked.append(((i + 0.5) / len(group), tie, i, row))
    ranked.sort(key=lambda t: t[:3])
    ordered = [t[3] for t in ranked]
    n_train, n_val, _ = split_sizes(len(ordered), fractions)
    return ordered[:n_train], ordered[n_train:n_train + n_val], ordered[n_train + n_val:]


def replay_wanted(ratio: float, n_new_train: int) -> int:
    """k = round(r / (1 - r) * n): then k / (k + n) = r, the share of the final training set."""
    return math.floor(ratio / (1.0 - ratio) * n_new_train + 0.5 + 1e-9)


def sample_replay(pool: list[Row], k: int, seed: int, version_id: str, selection: str) -> list[Row]:
    """k rows from the pool, each topic represented in proportion to its share of the pool.

    Within a topic, `selection` picks the rows:
      random   the first q of a seeded shuffle;
      diverse  greedy maximum coverage of the rows' words, the shuffle breaking ties: each
               next row is the one that adds the most words no chosen row has. A fact
               stated in several wordings shares its names and numbers across them, so
               diverse spends the budget on distinct facts before a second wording of one.
               Why it was tried: with random replay and no pull toward the parent, the old
               facts an increment forgot were mostly those none of whose rows it replayed
               (`make bench-gate`: 20 points lost on those, 3 on the replayed ones). It
               replays more facts, each in fewer wordings, and on the demo kept no more of
               them (docs/benchmarks.md), so random is the default.
    The version id is part of the seed so that successive versions replay
    different old rows instead of the same ones every time.
    """
    if selection not in REPLAY_SELECTIONS:
        raise ValueError(f"replay selection {selection!r} is not one of {', '.join(REPLAY_SELECTIONS)}")
    if k <= 0 or not pool:
        return []
    groups = sorted(_group(pool).items())
    quotas = largest_remainder(min(k, len(pool)), [len(g) for _, g in groups])
    chosen: list[Row] = []
    for (key, group), q in zip(groups, quotas):
        order = _shuffled(group, f"{seed}:{version_id}:replay:{key}")
        chosen.extend(_most_covering(order, q) if selection == "diverse" else order[:q])
    return chosen


def _words(row: Row) -> frozenset[str]:
    return frozenset(w for m in row["messages"] if m.get("role") != "system"
                     for w in re.findall(r"\w+", str(m.get("content") or "").lower()))


def _most_covering(order: list[Row], q: int) -> list[Row]:
    """The first q picks of greedy max-coverage over `order` (ties: earlier in `order`). Lazy
    greedy: a row's gain only shrinks as words get covered, so a stale gain on the heap is an
    upper bound and only the top needs recounting (O(n log n) for the pools a version has)."""
    words = [_words(r) for r in order]
    heap = [(-len(w), i) for i, w in enumerate(words)]
    heapq.heapify(heap)
    covered: set[str] = set()
    picked: list[int] = []
    while heap and len(picked) < q:
        stale, i = heapq.heappop(heap)
        gain = len(words[i] - covered)
        if gain < -stale and heap and (-gain, i) > heap[0]:
            heapq.heappush(heap, (-gain, i))  # another row may add more now
            continue
        picked.append(i)
        covered |= words[i]
    return [order[i] for i in picked]


def as_replay(row: Row) -> Row:
    """An ancestor's training row as it enters the new training set; from_version is kept."""
    out = dict(row)
    out["origin"] = "replay"
    return out


def mix_final(new_train: list[Row], replay: list[Row], seed: int, version_id: str) -> list[Row]:
    """The final training set, shuffled so replayed rows are spread through every epoch."""
    rows = list(new_train) + [as_replay(r) for r in replay]
    random.Random(f"{seed}:{version_id}:final").shuffle(rows)
    return rows
