"""Replay drawn again for every epoch (`data.replay_each_epoch`).

The data stage writes epoch 1's training set (incremental_replay_final.jsonl: the new rows
plus one draw of replayed rows) and, with this option, the pool every replayed row was drawn
from (replay_pool.jsonl). Here every later epoch swaps the replayed rows for another draw of
the same size from that pool, made by the data stage's own sampler (data/mix.py: the same
selection and topic quotas) with a seed per epoch; the new rows stay. The Trainer sees a
dataset of constant length, so its steps and learning-rate schedule are those of one draw:
over the epochs the increment replays most of its ancestors' rows at the cost of one draw.

Each epoch's draw is given the slots of epoch 1's replayed items in the same order of
length, so the length-grouped sampler, which reads the lengths once, still batches rows of
similar length. The switch happens in `on_epoch_begin` (a public Trainer callback), which
the Trainer calls before it iterates the epoch's batches; the dataset counts what it served
per epoch, and the manifest records both the plan and what was served.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loraship.data.mix import sample_replay
from loraship.data.prepare import POOL, load_rows
from loraship.errors import DataError

Item = dict[str, Any]


@dataclass
class Draws:
    """Which pool rows each epoch replays (epoch 1: the data stage's own draw)."""

    pool: list[dict]
    per_epoch: list[list[dict]]

    def record(self, served: list[int]) -> dict[str, Any]:
        seen: set[str] = set()
        epochs = []
        for e, rows in enumerate(self.per_epoch):
            hashes = sorted(r["hash"] for r in rows)
            fresh = len(set(hashes) - seen)
            seen |= set(hashes)
            epochs.append({"epoch": e + 1, "rows": len(rows), "not_replayed_before": fresh,
                           "rows_sha256": hashlib.sha256("\n".join(hashes).encode()).hexdigest(),
                           "items_served": served[e] if e < len(served) else 0})
        return {"pool_rows": len(self.pool), "distinct_rows_replayed": len(seen), "epochs": epochs}


def draws_for(data_dir: Path, data_stage: dict, final_rows: list[dict], epochs: float) -> Draws | None:
    """Every epoch's replay draw, or None when the version does not redraw (or replays nothing)."""
    replay = data_stage.get("replay") or {}
    if not replay.get("each_epoch"):
        return None
    path = data_dir / POOL
    if not path.exists():
        raise DataError(f"{path} is missing, but the data stage drew replay for each epoch from it: restore the "
                        "version's data folder, or delete the version and run `loraship data` again")
    pool = load_rows(path)
    k, seed, vid = data_stage["counts"]["replayed"], data_stage["seed"], data_stage["version_id"]
    selection = replay.get("selection") or "random"
    first = sample_replay(pool, k, seed, vid, selection)
    in_final = sorted(r["hash"] for r in final_rows if r.get("origin") == "replay")
    if sorted(r["hash"] for r in first) != in_final:
        raise DataError(f"{path} does not hold the rows incremental_replay_final.jsonl replays: the data folder "
                        "was changed after the data stage; restore it, or delete the version and run `loraship data` "
                        "again")
    later = [sample_replay(pool, k, seed, f"{vid}:epoch{e + 1}", selection) for e in range(1, math.ceil(epochs))]
    return Draws(pool, [first, *later])


class EpochReplayDataset:
    """The training items of the current epoch: the new rows' items, and the epoch's replayed ones
    in the slots epoch 1's replayed items hold (a map-style dataset: len and indexing)."""

    def __init__(self, items: list[Item], later_epochs: list[list[Item]]):
        """`items`: epoch 1's (the final training set's); `later_epochs`: each later epoch's replayed items."""
        self._items = list(items)
        slots = [i for i, it in enumerate(self._items) if it["replay"]]
        # Slots ordered by length, so that the j-th shortest item of every epoch takes the same
        # slot; a stable sort keeps epoch 1 exactly as the final training set has it.
        self._slots = sorted(slots, key=lambda i: (len(self._items[i]["input_ids"]), i))
        by_length = [self._items[i] for i in self._slots]
        self._per_epoch = [by_length] + [sorted(_fit(rows, len(slots)), key=lambda it: len(it["input_ids"]))
                                         for rows in later_epochs]
        self._slot_of = {s: j for j, s in enumerate(self._slots)}
        self.epoch = 0
        self.served: list[int] = [0] * len(self._per_epoch)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = min(max(epoch, 0), len(self._per_epoch) - 1)

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, i: int) -> Item:
        if not 0 <= i < len(self._items):
            raise IndexError(i)
        j = self._slot_of.get(i)
        if j is None:
            return self._items[i]
        self.served[self.epoch] += 1
        return self._per_epoch[self.epoch][j]

    def __iter__(self):
        return (self[i] for i in range(len(self)))


def _fit(items: list[Item], n: int) -> list[Item]:
    """n items: a draw whose rows encode to another count of training texts (multi-turn rows under
    a template that trains each answer on its own) is cut, or cycled, to epoch 1's count, so
    every epoch has the same number of steps."""
    if not items:
        raise DataError("a replay draw encoded to no training text (every answer truncated away): "
                        "raise train.max_seq_length")
    return [items[i % len(items)] for i in range(n)]


def epoch_callback(callback_base: type, dataset: EpochReplayDataset) -> Any:
    """Switches the dataset to the epoch the Trainer is about to run (state.epoch counts finished
    epochs; a resumed run starts inside its checkpoint's epoch, which floor keeps)."""

    class ReplayEachEpoch(callback_base):
        def on_epoch_begin(self, args, state, control, **kw):
            dataset.set_epoch(math.floor((state.epoch or 0.0) + 1e-6))
            if dataset.epoch < len(dataset.served):
                dataset.served[dataset.epoch] = 0  # what this epoch serves, not the sampler's length scan

    return ReplayEachEpoch()
