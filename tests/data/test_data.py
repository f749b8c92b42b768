"""The data stage: formats, validation, dedupe, leak prevention, splits, replay."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from loraship.config import DataConfig
from loraship.data.mix import split_sizes, stratified_split
from loraship.data.prepare import EarlierVersion, load_rows, prepare, summary_lines
from loraship.errors import DataError

DATA_FILES = ("train.jsonl", "val.jsonl", "test.jsonl", "incremental_replay_final.jsonl", "old_test.jsonl")


def write_jsonl(path: Path, rows: list) -> Path:
    """Rows may be dicts (dumped as JSON) or raw str/bytes lines (written as they are)."""
    out = b""
    for r in rows:
        if isinstance(r, bytes):
            out += r + b"\n"
        elif isinstance(r, str):
            out += r.encode("utf-8") + b"\n"
        else:
            out += json.dumps(r).encode("utf-8") + b"\n"
    path.write_bytes(out)
    return path


def qa(i: int, topic: str | None = None, prefix: str = "fact") -> dict:
    row = {"question": f"What is {prefix} number {i}?", "answer": f"It is {prefix} {i}."}
    if topic:
        row["topic"] = topic
    return row


def run(tmp_path: Path, name: str, rows: list, earlier: list[EarlierVersion] | None = None, *,
        version: str = "v1", cfg: DataConfig | None = None, strict: bool = True, warns: list | None = None):
    src = write_jsonl(tmp_path / f"{name}.jsonl", rows)
    out = tmp_path / f"out-{name}"
    summary = prepare([src], earlier or [], cfg or DataConfig(), out, version_id=version, strict=strict,
                      warn=(warns.append if warns is not None else lambda s: None))
    return summary, out


def hashes(path: Path) -> set[str]:
    return {r["hash"] for r in load_rows(path)}


# ---------------------------------------------------------------- formats


def test_three_formats_are_detected_and_normalised(tmp_path):
    rows = [
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                      {"role": "assistant", "content": "Hello."}], "id": "greet", "topic": "chat"},
        {"instruction": "Translate", "input": "Glück auf", "output": "Good luck", "source": "miners.txt"},
        {"instruction": "Say yes", "output": "Yes"},
        {"question": "Capital of France?", "answer": "Paris", "id": 17},
    ]
    summary, out = run(tmp_path, "mixed", rows, cfg=DataConfig(split=[1.0, 0.0, 0.0]))
    assert summary["formats"] == {"chat": 1, "instruction": 2, "qa": 1}
    by_id = {r["id"]: r for r in load_rows(out / "train.jsonl")}
    assert set(by_id) == {"greet", "mixed:2", "mixed:3", "17"}
    assert [m["role"] for m in by_id["greet"]["messages"]] == ["system", "user", "assistant"]
    assert by_id["greet"]["topic"] == "chat"
    assert by_id["mixed:2"]["messages"] == [{"role": "user", "content": "Translate\n\nGlück auf"},
                                            {"role": "assistant", "content": "Good luck"}]
    assert by_id["mixed:2"]["source"] == "miners.txt"
    assert by_id["mixed:3"]["messages"][0]["content"] == "Say yes"
    assert by_id["17"]["messages"][1] == {"role": "assistant", "content": "Paris"}
    for r in by_id.values():
        assert r["origin"] == "new" and r["from_version"] == "v1" and len(r["hash"]) == 64
        assert list(r) == ["id", "messages", "topic", "source", "origin", "from_version", "hash"]


# ---------------------------------------------------------------- validation

BAD_ROWS = [
    ('{"question": "a", "answer": ', "invalid JSON"),
    ('{"question": "a"}', "missing field"),
    ('{"foo": 1}', "missing field"),
    ('{"question": "  ", "answer": "b"}', "empty content"),
    ('{"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}]}', "wrong role order"),
    ('{"messages": [{"role": "user", "content": "a"}]}', "wrong role order"),
    ('{"messages": [{"role": "user", "content": "a"}, {"role": "bot", "content": "b"}]}', "unknown role"),
    ('{"question": 5, "answer": "b"}', "wrong type"),
    ('["question", "answer"]', "wrong type"),
    ('{"messages": "hello"}', "wrong type"),
    ('{"question": "' + "x" * 60 + '", "answer": "b"}', "too long"),
    (b'{"question": "caf\xe9", "answer": "b"}', "not UTF-8"),
    ('{"question": "a", "answer": "b", "messages": []}', "mixed formats"),
]


@pytest.mark.parametrize("bad,kind", BAD_ROWS, ids=[k + str(i) for i, (_, k) in enumerate(BAD_ROWS)])
def test_each_invalid_reason_names_file_and_line(tmp_path, bad, kind):
    # line 1 valid, line 2 blank (still counted), line 3 bad, line 4 valid
    rows = [qa(1), "", bad, qa(2)]
    cfg = DataConfig(max_chars=50)
    with pytest.raises(DataError) as e:
        run(tmp_path, "in", rows, cfg=cfg)
    msg = str(e.value)
    assert msg.startswith(f"{tmp_path / 'in.jsonl'}:3: {kind}: "), msg
    assert "\n" not in msg and msg.endswith("use --skip-invalid to drop it")
    warns: list[str] = []
    summary, out = run(tmp_path, "in", rows, cfg=cfg, strict=False, warns=warns)
    assert summary["counts"]["invalid"] == 1 and summary["counts"]["new_kept"] == 2
    [report] = load_jsonl(out / "invalid.jsonl")
    assert (report["line"], report["reason"]) == (3, kind)
    assert any(f"in.jsonl:3: {kind}" in w for w in warns)


def load_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_strict_raises_on_first_problem_counts_the_rest_and_writes_nothing(tmp_path):
    rows = [qa(1), "not json", qa(2), '{"question": "q"}', '{"answer": "a"}']
    with pytest.raises(DataError) as e:
        run(tmp_path, "in", rows)
    msg = str(e.value)
    assert msg.startswith(f"{tmp_path / 'in.jsonl'}:2: invalid JSON")
    assert "and 2 more invalid rows; use --skip-invalid to drop them" in msg
    assert not (tmp_path / "out-in").exists()


def test_skip_invalid_drops_counts_and_caps_warnings(tmp_path):
    rows = [qa(i) for i in range(10)] + ["{oops"] * 14
    warns: list[str] = []
    summary, out = run(tmp_path, "in", rows, strict=False, warns=warns)
    assert summary["counts"]["invalid"] == 14
    assert summary["counts"]["new_valid"] == 10 == summary["counts"]["new_kept"]
    assert len(warns) == 11 and "4 more invalid rows" in warns[-1]
    assert [r["line"] for r in load_jsonl(out / "invalid.jsonl")] == list(range(11, 25))
    assert sum(len(load_rows(out / f)) for f in DATA_FILES[:3]) == 10


def test_non_utf8_file(tmp_path):
    src = tmp_path / "latin1.jsonl"
    text = '{"question": "Où est la mine?", "answer": "Là-bas."}\n' * 2 + '{"question": "ok", "answer": "ok"}\n'
    src.write_bytes(text.encode("latin-1"))
    with pytest.raises(DataError) as e:
        prepare([src], [], DataConfig(), tmp_path / "out", version_id="v1")
    assert str(e.value).startswith(f"{src}:1: not UTF-8: invalid byte 0xf9")
    assert "re-save the file as UTF-8" in str(e.value) and "and 1 more invalid row;" in str(e.value)
    summary = prepare([src], [], DataConfig(), tmp_path / "out", version_id="v1", strict=False)
    assert summary["counts"]["invalid"] == 2 and summary["counts"]["new_kept"] == 1


def test_utf8_bom_and_crlf_are_accepted(tmp_path):
    src = tmp_path / "win.jsonl"
    src.write_bytes(b"\xef\xbb\xbf" + b'{"question": "a", "answer": "b"}\r\n{"question": "c", "answer": "d"}\r\n')
    summary = prepare([src], [], DataConfig(), tmp_path / "out", version_id="v1")
    assert summary["counts"]["new_kept"] == 2


def test_duplicate_ids_with_different_text_are_invalid(tmp_path):
    rows = [dict(qa(1), id="a"), dict(qa(2), id="a")]
    with pytest.raises(DataError, match=r"in.jsonl:2: duplicate id: id 'a' is already used at .*in.jsonl:1"):
        run(tmp_path, "in", rows)


def test_empty_result_is_an_error_and_writes_nothing(tmp_path):
    _, out1 = run(tmp_path, "first", [qa(i) for i in range(5)])
    v1 = EarlierVersion("v1", out1, True)
    with pytest.raises(DataError, match="no new rows left to train on: 5 valid, 0 invalid.*"
                                        "4 already in earlier versions, 1 in earlier test splits"):
        run(tmp_path, "again", [qa(i) for i in range(5)], [v1], version="v2")
    assert not (tmp_path / "out-again").exists()
    with pytest.raises(DataError, match="no new rows left"):
        run(tmp_path, "allbad", ["{", "}"], strict=False)


# ---------------------------------------------------------------- dedupe and leaks


def test_dedupe_within_new_data_by_normalised_text(tmp_path):
    rows = [qa(1), {"question": "  WHAT is fact   number 1? ", "answer": "it is FACT 1."},
            {"messages": [{"role": "user", "content": "What is fact number 1?"},
                          {"role": "assistant", "content": "It is fact 1."}]},
            # same words, other roles: not a duplicate
            {"messages": [{"role": "system", "content": "What is fact number 1?"},
                          {"role": "user", "content": "x"}, {"role": "assistant", "content": "It is fact 1."}]},
            qa(2)]
    summary, out = run(tmp_path, "in", rows)
    assert summary["counts"]["duplicates_in_new"] == 2
    assert summary["counts"]["new_kept"] == 3


def test_dedupe_against_every_earlier_split_and_test_rows_count_as_leaks(tmp_path):
    _, out1 = run(tmp_path, "v1", [qa(i) for i in range(20)])
    v1_test = {r["id"] for r in load_rows(out1 / "test.jsonl")}
    v1_other = {r["id"] for f in ("train.jsonl", "val.jsonl") for r in load_rows(out1 / f)}
    summary, out2 = run(tmp_path, "v2", [qa(i) for i in range(30)], [EarlierVersion("v1", out1, True)],
                        version="v2")
    c = summary["counts"]
    assert c["leaked_test_rows_dropped"] == len(v1_test) == 3
    assert c["duplicates_vs_earlier"] == len(v1_other) == 17
    assert c["new_kept"] == 10
    # a sibling branch (not an ancestor) still counts for dedupe and leaks
    summary3, _ = run(tmp_path, "v3", [qa(i) for i in range(30)] + [qa(99)],
                      [EarlierVersion("v1", out1, False), EarlierVersion("v2", out2, False)], version="v3")
    assert summary3["counts"]["new_kept"] == 1 and summary3["counts"]["replayed"] == 0


def test_missing_earlier_file_is_an_error(tmp_path):
    _, out1 = run(tmp_path, "v1", [qa(i) for i in range(5)])
    (out1 / "test.jsonl").unlink()
    with pytest.raises(DataError, match="earlier version v1: .*test.jsonl is missing"):
        run(tmp_path, "v2", [qa(9)], [EarlierVersion("v1", out1, True)], version="v2")


def test_no_test_row_leaks_across_three_versions(tmp_path):
    topics = ["geo", "ops"]
    inputs = {
        "v1": [qa(i, topics[i % 2]) for i in range(0, 40)],
        "v2": [qa(i, topics[i % 2]) for i in range(25, 70)],  # overlaps v1
        "v3": [qa(i, topics[i % 2]) for i in list(range(0, 10)) + list(range(30, 40)) + list(range(60, 110))],
    }
    earlier: list[EarlierVersion] = []
    all_test: set[str] = set()
    expected_leaks = {}
    for vid, rows in inputs.items():
        src_hashes = [h for h in (hash_of(tmp_path, r) for r in rows)]
        expected_leaks[vid] = sum(1 for h in src_hashes if h in all_test)
        summary, out = run(tmp_path, vid, rows, list(earlier), version=vid)
        assert summary["counts"]["leaked_test_rows_dropped"] == expected_leaks[vid]
        final = load_rows(out / "incremental_replay_final.jsonl")
        test = hashes(out / "test.jsonl")
        for r in final:
            assert r["hash"] not in all_test, f"{vid}: {r['id']} from {r['from_version']} was an earlier test row"
            assert r["hash"] not in test
        assert {r["hash"] for r in load_rows(out / "old_test.jsonl")} == all_test
        assert {r["from_version"] for r in load_rows(out / "old_test.jsonl")} == {e.id for e in earlier}
        all_test |= test
        earlier.append(EarlierVersion(vid, out, True))
    assert expected_leaks["v2"] > 0 and expected_leaks["v3"] > 0


def hash_of(tmp_path: Path, row: dict) -> str:
    from loraship.data.load import normalise

    return normalise(row, "x:1", 10_000, "v1")[1]["hash"]


# ---------------------------------------------------------------- splits


@pytest.mark.parametrize("n,sizes", [(1, [1, 0, 0]), (2, [2, 0, 0]), (3, [1, 1, 1]), (4, [2, 1, 1]),
                                     (10, [7, 2, 1]), (20, [14, 3, 3]), (100, [70, 15, 15])])
def test_split_sizes_rounding_rule(n, sizes):
    assert split_sizes(n, [0.7, 0.15, 0.15]) == sizes


def test_split_without_val_and_test():
    assert split_sizes(5, [1.0, 0.0, 0.0]) == [5, 0, 0]


def test_stratified_split_keeps_topic_proportions(tmp_path):
    rows = [qa(i, "big") for i in range(60)] + [qa(i, "small", "s") for i in range(20)] + [qa(999, "single")]
    summary, _ = run(tmp_path, "in", rows)
    per = {t["topic"]: t for t in summary["per_topic"]}
    assert (per["big"]["train"], per["big"]["val"], per["big"]["test"]) in [(42, 9, 9), (41, 10, 9), (42, 10, 8),
                                                                           (43, 9, 8), (41, 9, 10), (42, 8, 10)]
    assert abs(per["small"]["train"] - 14) <= 1 and abs(per["small"]["val"] - 3) <= 1
    assert per["single"]["train"] == 1
    c = summary["counts"]
    assert (c["train"], c["val"], c["test"]) == tuple(split_sizes(81, [0.7, 0.15, 0.15]))


def test_split_ignores_input_order():
    from loraship.data.load import normalise

    rows = [normalise(qa(i, "t" if i % 3 else None), f"f:{i}", 1000, "v1")[1] for i in range(30)]
    a = stratified_split(rows, [0.7, 0.15, 0.15], 5)
    b = stratified_split(list(reversed(rows)), [0.7, 0.15, 0.15], 5)
    assert a == b
    assert stratified_split(rows, [0.7, 0.15, 0.15], 6) != a


def test_same_input_and_seed_give_byte_identical_files(tmp_path):
    rows1 = [qa(i, ["a", "b", "c"][i % 3]) for i in range(50)]
    _, v1 = run(tmp_path, "v1", rows1)
    src = write_jsonl(tmp_path / "new.jsonl", [qa(i, ["a", "b"][i % 2], "new") for i in range(40)])

    def again(out: str, cfg: DataConfig) -> tuple[dict, Path]:
        summary = prepare([src], [EarlierVersion("v1", v1, True)], cfg, tmp_path / out, version_id="v2")
        return summary, tmp_path / out

    s_a, a = again("a", DataConfig())
    s_b, b = again("b", DataConfig())
    assert s_a["counts"]["replayed"] > 0
    for name in DATA_FILES:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert s_a["dataset_sha256"] == s_b["dataset_sha256"]
    s_c, c = again("c", DataConfig(seed=1))
    assert (c / "train.jsonl").read_bytes() != (a / "train.jsonl").read_bytes()
    assert s_c["dataset_sha256"] != s_a["dataset_sha256"]


# ---------------------------------------------------------------- replay


def _v1_with_topics(tmp_path, n_a: int, n_b: int) -> Path:
    rows = [qa(i, "alpha", "a") for i in range(n_a)] + [qa(i, "beta", "b") for i in range(n_b)]
    _, out = run(tmp_path, "v1", rows, cfg=DataConfig(split=[1.0, 0.0, 0.0]))
    return out


def test_replay_ratio_is_exact_and_stratified(tmp_path):
    v1 = _v1_with_topics(tmp_path, 60, 30)  # all 90 rows in v1's train split
    rows = [qa(i, "gamma", "g") for i in range(80)]
    summary, out = run(tmp_path, "v2", rows, [EarlierVersion("v1", v1, True)], version="v2",
                       cfg=DataConfig(split=[1.0, 0.0, 0.0], replay_ratio=0.2))
    assert summary["counts"]["train"] == 80 and summary["counts"]["replayed"] == 20
    assert summary["replay_ratio"] == {"requested": 0.2, "actual": 0.2}
    final = load_rows(out / "incremental_replay_final.jsonl")
    replayed = [r for r in final if r["origin"] == "replay"]
    assert len(final) == 100 and len(replayed) == 20
    assert Counter(r["topic"] for r in replayed) == {"alpha": 14, "beta": 6} or \
        Counter(r["topic"] for r in replayed) == {"alpha": 13, "beta": 7}
    assert all(r["from_version"] == "v1" for r in replayed)
    assert {(r["id"], r["from_version"]) for r in replayed} == \
        {(x["id"], x["from_version"]) for x in summary["replay"]["rows"]}
    for name in ("train.jsonl", "val.jsonl", "test.jsonl"):
        assert all(r["origin"] == "new" for r in load_rows(out / name))


def test_replay_comes_only_from_ancestor_training_rows(tmp_path):
    _, v1 = run(tmp_path, "v1", [qa(i, prefix="one") for i in range(40)])
    _, side = run(tmp_path, "side", [qa(i, prefix="side") for i in range(40)], version="v2")
    _, v3 = run(tmp_path, "v3", [qa(i, prefix="three") for i in range(40)],
                [EarlierVersion("v1", v1, True), EarlierVersion("v2", side, False)], version="v3")
    eligible = hashes(v1 / "train.jsonl") | hashes(v3 / "train.jsonl")
    summary, v4 = run(tmp_path, "v4", [qa(i, prefix="four") for i in range(40)],
                      [EarlierVersion("v1", v1, True), EarlierVersion("v2", side, False),
                       EarlierVersion("v3", v3, True)], version="v4")
    replayed = [r for r in load_rows(v4 / "incremental_replay_final.jsonl") if r["origin"] == "replay"]
    assert replayed and {r["hash"] for r in replayed} <= eligible
    # origin is kept: rows first trained in v1 still say v1
    assert {r["from_version"] for r in replayed} <= {"v1", "v3"}
    assert summary["replay"]["ancestors"] == ["v1", "v3"]


def test_replay_never_takes_a_row_that_is_in_any_test_split(tmp_path):
    # v1 and v2 were built independently (no dedupe between them), so rows of v1's
    # training set sit in v2's test split; replay from v1 must skip exactly those.
    _, v1 = run(tmp_path, "v1", [qa(i) for i in range(40)], cfg=DataConfig(split=[1.0, 0.0, 0.0]))
    _, v2 = run(tmp_path, "v2", [qa(i) for i in range(40)], version="v2")
    v2_test = hashes(v2 / "test.jsonl")
    assert len(v2_test) == 6
    summary, v3 = run(tmp_path, "v3", [qa(i, prefix="n") for i in range(200)],
                      [EarlierVersion("v1", v1, True), EarlierVersion("v2", v2, False)], version="v3",
                      cfg=DataConfig(replay_ratio=0.3, split=[1.0, 0.0, 0.0]))
    replayed = {r["hash"] for r in load_rows(v3 / "incremental_replay_final.jsonl") if r["origin"] == "replay"}
    assert len(replayed) == summary["counts"]["replayed"] == 34
    assert not replayed & v2_test


def test_replay_shortfall_is_warned_and_capped(tmp_path):
    v1 = _v1_with_topics(tmp_path, 3, 2)
    warns: list[str] = []
    summary, _ = run(tmp_path, "v2", [qa(i, prefix="n") for i in range(80)], [EarlierVersion("v1", v1, True)],
                     version="v2", cfg=DataConfig(split=[1.0, 0.0, 0.0], replay_ratio=0.2), warns=warns)
    assert summary["counts"]["replayed"] == 5 and summary["replay"]["wanted"] == 20
    assert any("wanted 20 rows" in w and "only 5" in w for w in warns)


def test_no_ancestors_means_no_replay_and_no_error(tmp_path):
    summary, out = run(tmp_path, "v1", [qa(i) for i in range(10)])
    assert summary["counts"]["replayed"] == 0 and summary["replay_ratio"]["actual"] == 0
    assert (out / "incremental_replay_final.jsonl").read_bytes() != b""
    assert (out / "old_test.jsonl").read_bytes() == b""


@pytest.mark.parametrize("ratio", [0.0, 0.05, 0.35])
def test_replay_ratio_outside_band_needs_the_flag(tmp_path, ratio):
    with pytest.raises(DataError, match="outside the safe band 0.10-0.30.*allow_replay_ratio_outside_range"):
        run(tmp_path, "v1", [qa(1)], cfg=DataConfig(replay_ratio=ratio))
    warns: list[str] = []
    v1 = _v1_with_topics(tmp_path, 50, 50)
    summary, _ = run(tmp_path, "v2", [qa(i, prefix="n") for i in range(20)], [EarlierVersion("v1", v1, True)],
                     version="v2", cfg=DataConfig(replay_ratio=ratio, allow_replay_ratio_outside_range=True,
                                                  split=[1.0, 0.0, 0.0]), warns=warns)
    assert any("outside 0.10-0.30" in w for w in warns)
    assert summary["counts"]["replayed"] == round(ratio / (1 - ratio) * 20)


def test_summary_lines_show_the_counts(tmp_path):
    v1 = _v1_with_topics(tmp_path, 20, 20)
    summary, _ = run(tmp_path, "v2", [qa(i, "alpha", "a") for i in range(5)] + [qa(i, "gamma") for i in range(20)]
                     + ["{bad"], [EarlierVersion("v1", v1, True)], version="v2", strict=False)
    text = "\n".join(summary_lines(summary))
    assert "20 kept of 25 valid; dropped 1 invalid" in text and "5 already in earlier versions" in text
    n = summary['counts']['replayed']
    assert f"replay: {n} rows from v1 ({n}), random selection; " in text
    assert summary["replay"]["selection"] == "random"  # the manifest records which rows were chosen how
    assert "gamma: train" in text
    json.dumps(summary)  # the manifest stores it


def test_load_rows_rejects_a_hand_edited_file(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", [{"id": "a", "messages": [], "origin": "new",
                                                   "from_version": "v1"}])
    with pytest.raises(DataError, match=r"train.jsonl:1: not a loraship data row: 'messages'"):
        load_rows(path)
