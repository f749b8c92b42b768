"""Replay drawn again for every epoch (data.replay_each_epoch): the data stage writes the pool,
training swaps the replayed rows each epoch, and what each epoch replayed is recorded."""

from __future__ import annotations

import json

import pytest

from helpers import qa_rows, write_jsonl
from loraship import pipeline
from loraship.config import DataConfig
from loraship.data.prepare import POOL, EarlierVersion, load_rows, prepare, summary_lines
from loraship.errors import DataError
from loraship.train.replay_epochs import EpochReplayDataset, draws_for

FINAL = "incremental_replay_final.jsonl"


def _versions(tmp_path, each_epoch: bool, out: str = "v2"):
    b1 = write_jsonl(tmp_path / "b1.jsonl", qa_rows("alpha", 40, "alpha") + qa_rows("gamma", 20, "gamma"))
    b2 = write_jsonl(tmp_path / "b2.jsonl", qa_rows("beta", 40, "beta"))
    v1 = tmp_path / "v1"
    if not v1.exists():
        prepare([b1], [], DataConfig(), v1, version_id="v1")
    cfg = DataConfig(replay_ratio=0.3, replay_each_epoch=each_epoch)
    summary = prepare([b2], [EarlierVersion("v1", v1, True)], cfg, tmp_path / out, version_id="v2")
    return summary, v1, tmp_path / out


def test_the_pool_is_every_replayable_row_and_epoch_1_is_the_single_draw(tmp_path):
    once, v1, plain = _versions(tmp_path, False, "once")
    each, _, redraw = _versions(tmp_path, True, "each")
    pool = load_rows(redraw / POOL)
    # v1's own training rows, never its val or test rows
    assert {r["hash"] for r in pool} == {r["hash"] for r in load_rows(v1 / "train.jsonl")}
    held_out = {r["hash"] for r in load_rows(v1 / "val.jsonl") + load_rows(v1 / "test.jsonl")}
    assert held_out and not held_out & {r["hash"] for r in pool}
    assert all(r["origin"] == "replay" for r in pool)
    # epoch 1 trains exactly what a single draw trains; the dataset digest covers the pool
    assert (redraw / FINAL).read_bytes() == (plain / FINAL).read_bytes()
    assert not (plain / POOL).exists() and once["replay"]["each_epoch"] is False
    assert each["replay"]["each_epoch"] is True and POOL in each["files"]
    assert each["dataset_sha256"] != once["dataset_sha256"]
    line = next(x for x in summary_lines(each) if x.startswith("replay:"))
    assert f"drawn again each epoch from {len(pool)} eligible rows" in line


def test_each_epoch_replays_other_rows_of_the_pool_with_the_same_quotas(tmp_path):
    summary, _, out = _versions(tmp_path, True)
    final = load_rows(out / FINAL)
    draws = draws_for(out, summary, final, 6)
    k = summary["counts"]["replayed"]
    assert len(draws.per_epoch) == 6 and all(len(d) == k for d in draws.per_epoch)
    assert {r["hash"] for r in draws.per_epoch[0]} == {r["hash"] for r in final if r["origin"] == "replay"}
    assert len({tuple(sorted(r["hash"] for r in d)) for d in draws.per_epoch}) == 6
    for d in draws.per_epoch:  # each topic keeps its share of the pool (2:1), as the single draw's
        topics = [r["topic"] for r in d]
        assert abs(topics.count("alpha") - 2 * topics.count("gamma")) <= 2
    record = draws.record([])
    assert record["pool_rows"] == len(load_rows(out / POOL))
    assert k < record["distinct_rows_replayed"] <= record["pool_rows"]
    assert sum(e["not_replayed_before"] for e in record["epochs"]) == record["distinct_rows_replayed"]
    assert draws_for(out, {**summary, "replay": {**summary["replay"], "each_epoch": False}}, final, 6) is None


def test_a_changed_data_folder_is_refused_in_one_line(tmp_path):
    summary, _, out = _versions(tmp_path, True)
    final = load_rows(out / FINAL)
    pool = (out / POOL).read_text().splitlines()
    (out / POOL).write_text("\n".join(pool[: len(pool) // 2]) + "\n")
    with pytest.raises(DataError, match="changed after the data stage.*loraship data"):
        draws_for(out, summary, final, 3)
    (out / POOL).unlink()
    with pytest.raises(DataError, match="replay_pool.jsonl is missing"):
        draws_for(out, summary, final, 3)


def _item(n: int, replay: bool, tag: str) -> dict:
    return {"input_ids": [1] * n, "labels": [2] * n, "replay": replay, "tag": tag}


def test_the_dataset_swaps_only_replayed_slots_keeping_their_order_of_length():
    items = [_item(5, False, "new0"), _item(9, True, "old-long"), _item(6, False, "new1"), _item(3, True, "old-short")]
    later = [[_item(4, True, "e2-short"), _item(8, True, "e2-long")],
             [_item(7, True, "e3-only")]]  # a draw that encoded to fewer texts is cycled to the slot count
    ds = EpochReplayDataset(items, later)
    assert len(ds) == 4 and [it["tag"] for it in ds] == ["new0", "old-long", "new1", "old-short"]
    ds.set_epoch(1)
    assert [it["tag"] for it in ds] == ["new0", "e2-long", "new1", "e2-short"]
    ds.set_epoch(2)
    assert [it["tag"] for it in ds] == ["new0", "e3-only", "new1", "e3-only"]
    ds.set_epoch(9)  # past the last draw: the last one (an epoch count rounded up never runs past it)
    assert ds.epoch == 2
    assert ds.served == [2, 2, 2]  # each pass fetched its two replayed slots
    with pytest.raises(IndexError):
        ds[4]


@pytest.mark.slow
def test_training_replays_each_epochs_draw_and_records_it(isolated_home, tiny_config):
    """A real increment on the tiny model: every epoch was served its own draw (the switch happens
    before the Trainer fetches the epoch's batches), and the manifest says so."""
    tiny_config("tiny", train__num_train_epochs=3)
    b1 = write_jsonl(isolated_home / "b1.jsonl", qa_rows("alpha", 30, "alpha"))
    b2 = write_jsonl(isolated_home / "b2.jsonl", qa_rows("beta", 20, "beta"))
    cfg = pipeline.load_config("tiny")
    pipeline.stage_data("tiny", cfg, [b1])
    pipeline.stage_train("tiny", cfg)
    cfg = pipeline.load_config("tiny", overrides={"data.replay_each_epoch": True, "train.increment_method": "replay"})
    pipeline.stage_data("tiny", cfg, [b2])
    v2 = pipeline.stage_train("tiny", cfg)
    record = v2.manifest["stages"]["train"]["replay_each_epoch"]
    k = v2.manifest["stages"]["data"]["counts"]["replayed"]
    assert k > 0 and [e["rows"] for e in record["epochs"]] == [k, k, k]
    assert [e["items_served"] for e in record["epochs"]] == [k, k, k]
    assert record["distinct_rows_replayed"] > k
    assert len({e["rows_sha256"] for e in record["epochs"]}) == 3
    log = (v2.path / "train_log.jsonl").read_text()
    assert json.loads(log.splitlines()[-1])  # the run finished its log
