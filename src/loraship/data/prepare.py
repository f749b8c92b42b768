"""The data stage: validate new rows, drop duplicates and test leaks, split, add replay.

`prepare()` is the one entry point. It writes into the new version's data folder:

    train.jsonl                      new rows for training
    val.jsonl, test.jsonl            new rows only (never replay)
    incremental_replay_final.jsonl   the final training set: train.jsonl + replayed rows
    old_test.jsonl                   the lineage ancestors' test rows ("old knowledge")
    replay_pool.jsonl                only with data.replay_each_epoch and replay: every row eligible
                                     for replay, which training draws from again for each epoch
    invalid.jsonl                    only with strict=False and rejected rows: the report
    feedback_replay.jsonl            only with feedback: confirmed answers, replay-eligible from now on

Guarantees: a row whose normalised text was ever in any earlier version's test
split never enters a training set; same input + seed gives byte-identical files.
Splitting and sampling rules are in data_mix.py, row formats in data_load.py.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loraship.config import DataConfig
from loraship.data import feedback as fb_mod
from loraship.data.load import Problem, dumps_rows, load_rows, read_input
from loraship.data.mix import (
    BAND,
    as_replay,
    mix_final,
    replay_wanted,
    sample_replay,
    split_sizes,
    stratified_split,
)
from loraship.errors import DataError
from loraship.paths import parse_version_id
from loraship.store import atomic
from loraship.store.hashing import sha256_file

__all__ = ["EarlierVersion", "prepare", "load_rows", "summary_lines", "FINAL_FILES", "POOL", "split_sizes"]

TRAIN, VAL, TEST = "train.jsonl", "val.jsonl", "test.jsonl"
FINAL, OLD_TEST, INVALID = "incremental_replay_final.jsonl", "old_test.jsonl", "invalid.jsonl"
FINAL_FILES = (TRAIN, VAL, TEST, FINAL, OLD_TEST)  # the dataset whose sha256 the manifest records
POOL = "replay_pool.jsonl"  # part of that dataset where written (data.replay_each_epoch)
MAX_WARNINGS = 10
_COUNT_KEYS = ("new_valid", "invalid", "duplicates_in_new", "duplicates_vs_earlier", "leaked_test_rows_dropped",
               "new_kept", "train", "val", "test", "replayed", "final_train", "old_test")

Row = dict[str, Any]


@dataclass
class EarlierVersion:
    """One earlier version of the same model, as the store gives it."""

    id: str
    data_dir: Path
    in_lineage: bool


@dataclass
class _History:
    seen: set[str]  # hashes of every row of every earlier version
    test: set[str]  # hashes that were ever in a test split
    pool: list[Row]  # ancestors' own training rows, eligible for replay
    old_test: list[Row]  # ancestors' test rows, first occurrence of each hash
    ancestors: list[str]
    all_ids: list[str]
    test_prompts: set[str]  # questions of every test row: feedback on them would leak the test split


def _check_ratio(cfg: DataConfig, warn: Callable[[str], None]) -> None:
    r = cfg.replay_ratio
    if not 0.0 <= r < 1.0:
        raise DataError(f"data.replay_ratio must be in [0, 1), got {r}: it is the replayed share of the training set")
    if BAND[0] - 1e-9 <= r <= BAND[1] + 1e-9:
        return
    if not cfg.allow_replay_ratio_outside_range:
        raise DataError(f"data.replay_ratio {r} is outside the safe band {BAND[0]:.2f}-{BAND[1]:.2f} (too little"
                        " replay forgets old knowledge, too much slows learning): choose a value in the band,"
                        " or set data.allow_replay_ratio_outside_range: true")
    warn(f"data.replay_ratio {r} is outside {BAND[0]:.2f}-{BAND[1]:.2f}; continuing because"
         " data.allow_replay_ratio_outside_range is set")


def _check_split(cfg: DataConfig) -> None:
    s = cfg.split
    if len(s) != 3 or any(x < 0 for x in s) or s[0] <= 0 or abs(sum(s) - 1.0) > 1e-6:
        raise DataError(f"data.split must be three fractions train/val/test summing to 1 with train > 0,"
                        f" got {s} (e.g. [0.7, 0.15, 0.15])")


def _earlier_rows(ev: EarlierVersion, name: str, required: bool = True) -> list[Row]:
    path = Path(ev.data_dir) / name
    if not path.exists():
        if not required:
            return []
        raise DataError(f"earlier version {ev.id}: {path} is missing, so leaks into its test split cannot be"
                        " ruled out: restore the version's data folder or delete the version")
    return load_rows(path)


def _load_history(earlier: list[EarlierVersion]) -> _History:
    ordered = sorted(earlier, key=lambda ev: parse_version_id(ev.id))
    files = {ev.id: {n: _earlier_rows(ev, n, n in (TRAIN, VAL, TEST))
                     for n in (TRAIN, VAL, TEST, OLD_TEST, fb_mod.REPLAY_FILE)} for ev in ordered}
    seen = {r["hash"] for f in files.values() for rows in f.values() for r in rows}
    # old_test.jsonl counts too: it keeps test rows of versions that were deleted since.
    test = {r["hash"] for f in files.values() for r in f[TEST] + f[OLD_TEST]}
    ancestors = [ev.id for ev in ordered if ev.in_lineage]
    pool: list[Row] = []
    old_test: list[Row] = []
    pool_seen: set[str] = set()
    old_seen: set[str] = set()
    for vid in ancestors:
        for r in files[vid][TRAIN] + files[vid][fb_mod.REPLAY_FILE]:
            if r["origin"] == "new" and r["hash"] not in test and r["hash"] not in pool_seen:
                pool_seen.add(r["hash"])
                pool.append(r)
        for r in files[vid][OLD_TEST] + files[vid][TEST]:
            if r["hash"] not in old_seen:
                old_seen.add(r["hash"])
                old_test.append(r)
    old_test.sort(key=lambda r: parse_version_id(r["from_version"]))  # stable: file order within a version
    prompts = {fb_mod.prompt_key(r["messages"][-2]["content"]) for f in files.values()
               for r in f[TEST] + f[OLD_TEST] if len(r["messages"]) >= 2}
    return _History(seen, test, pool, old_test, ancestors, [ev.id for ev in ordered], prompts)


def _file_labels(files: list[Path]) -> list[str]:
    """Default-id prefix per input file: its stem, made unique when two files share one."""
    stems = [Path(f).stem for f in files]
    counts = Counter(stems)
    return [s if counts[s] == 1 else f"{s}.{i + 1}" for i, s in enumerate(stems)]


def _read_inputs(files: list[Path], cfg: DataConfig, version_id: str):
    parsed, problems, inputs = [], [], []
    for i, (path, label) in enumerate(zip(files, _file_labels(files))):
        rows, probs = read_input(Path(path), i, label, cfg.max_chars, version_id)
        parsed += rows
        problems += probs
        inputs.append({"path": str(path), "sha256": sha256_file(Path(path)), "bytes": Path(path).stat().st_size,
                       "valid_rows": len(rows), "invalid_rows": len(probs)})
    return parsed, problems, inputs


def _dedupe(parsed, hist: _History) -> tuple[list[Row], Counter, list[Problem]]:
    """Keep the first occurrence of each text; a row seen in a test split is counted only as a leak."""
    kept: list[Row] = []
    counts: Counter = Counter()
    seen_new: set[str] = set()
    first_id: dict[str, str] = {}
    problems = []
    for p in parsed:
        h, rid = p.row["hash"], p.row["id"]
        if h in hist.test:
            counts["leaked_test_rows_dropped"] += 1
        elif h in hist.seen:
            counts["duplicates_vs_earlier"] += 1
        elif h in seen_new:
            counts["duplicates_in_new"] += 1
        elif rid in first_id:
            problems.append(Problem(p.file_index, p.line, p.file, "duplicate id",
                                    f"id {rid!r} is already used at {first_id[rid]}"))
        else:
            seen_new.add(h)
            first_id[rid] = f"{p.file}:{p.line}"
            kept.append(p.row)
    return kept, counts, problems


def _strict_message(problems: list[Problem]) -> str:
    more = len(problems) - 1
    tail = f"; and {more} more invalid row{'s' if more != 1 else ''}" if more else ""
    return f"{problems[0]}{tail}; use --skip-invalid to drop {'them' if more else 'it'}"


def _report_invalid(problems: list[Problem], warn: Callable[[str], None]) -> None:
    for p in problems[:MAX_WARNINGS]:
        warn(f"skipped {p}")
    if len(problems) > MAX_WARNINGS:
        warn(f"skipped {len(problems) - MAX_WARNINGS} more invalid rows (all listed in {INVALID})")


def _no_rows_message(n_valid: int, n_invalid: int, counts: Counter) -> str:
    return (f"no new rows left to train on: {n_valid} valid, {n_invalid} invalid,"
            f" {counts['duplicates_in_new']} duplicates within the new data,"
            f" {counts['duplicates_vs_earlier']} already in earlier versions,"
            f" {counts['leaked_test_rows_dropped']} in earlier test splits"
            " (add rows the earlier versions do not have)")


def _replay(hist: _History, n_train: int, cfg: DataConfig, version_id: str,
            warn: Callable[[str], None]) -> tuple[list[Row], int]:
    if not hist.ancestors or cfg.replay_ratio == 0:
        return [], 0
    wanted = replay_wanted(cfg.replay_ratio, n_train)
    if wanted > len(hist.pool):
        got = len(hist.pool)
        warn(f"replay: wanted {wanted} rows for ratio {cfg.replay_ratio:.2f} but the ancestors"
             f" ({', '.join(hist.ancestors)}) have only {got} eligible training rows; using {got}"
             f" (ratio {got / (got + n_train):.3f})")
    return sample_replay(hist.pool, wanted, cfg.seed, version_id, cfg.replay_selection), wanted


def _write(out_dir: Path, contents: dict[str, str]) -> dict[str, dict[str, Any]]:
    out_dir.mkdir(parents=True, exist_ok=True)
    records = {}
    for name, text in contents.items():
        atomic.write_text(out_dir / name, text)
        records[name] = {"sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(), "rows": text.count("\n")}
    return records


def _dataset_sha256(records: dict[str, dict[str, Any]]) -> str:
    # The pool only where written, so versions without it keep the digest they always had.
    names = FINAL_FILES + ((POOL,) if POOL in records else ())
    text = "".join(f"{name}\t{records[name]['sha256']}\n" for name in names)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _per_topic(splits: dict[str, list[Row]]) -> list[dict[str, Any]]:
    table: dict[str | None, Counter] = {}
    for split, rows in splits.items():
        for r in rows:
            table.setdefault(r["topic"], Counter())[split] += 1
    names = sorted(table, key=lambda t: (t is None, t or ""))
    return [{"topic": t, **{s: table[t][s] for s in splits}} for t in names]


def prepare(new_files: list[Path], earlier: list[EarlierVersion], cfg: DataConfig, out_dir: Path, *,
            version_id: str, strict: bool = True, warn: Callable[[str], None] = lambda s: None,
            feedback_files: list[Path] = (), model: str | None = None) -> dict:
    """Build version `version_id`'s data folder; returns the summary for the manifest (stages.data).

    `feedback_files` (data/feedback.py): corrections join the train split, confirmed answers
    the replay pool."""
    parse_version_id(version_id)
    _check_split(cfg)
    _check_ratio(cfg, warn)
    if not new_files and not feedback_files:
        raise DataError("no input files given: pass one or more JSONL files (or --feedback FILE)")
    hist = _load_history(earlier)
    parsed, problems, inputs = _read_inputs(list(new_files), cfg, version_id)
    kept, counts, id_problems = _dedupe(parsed, hist)
    problems = sorted(problems + id_problems)
    if problems and strict:
        raise DataError(_strict_message(problems))
    _report_invalid(problems, warn)
    fb = fb_mod.read_feedback(list(feedback_files), model or "", version_id) if feedback_files else None
    if not kept and not (fb and fb.train):
        raise DataError(_no_rows_message(len(parsed), len(problems), counts))
    train, val, test = stratified_split(kept, cfg.split, cfg.seed)
    if fb:
        prompts = hist.test_prompts | {fb_mod.prompt_key(r["messages"][-2]["content"]) for r in test}
        fb_mod.admit(fb, hist.seen | {r["hash"] for r in kept}, hist.test, prompts)
        train, hist.pool = train + fb.train, hist.pool + fb.replay
        if not train:
            raise DataError(f"no new rows left to train on: the feedback has {fb.counts['corrections']} usable "
                            f"corrections ({fb.counts['on_test_questions']} rows on test questions and "
                            f"{fb.counts['duplicates']} already known were dropped); add corrections or data")
    replay, wanted = _replay(hist, len(train), cfg, version_id, warn)
    final = mix_final(train, replay, cfg.seed, version_id)
    contents = {TRAIN: dumps_rows(train), VAL: dumps_rows(val), TEST: dumps_rows(test),
                FINAL: dumps_rows(final), OLD_TEST: dumps_rows(hist.old_test)}
    if cfg.replay_each_epoch and replay:
        contents[POOL] = dumps_rows([as_replay(r) for r in hist.pool])  # sample_replay's input, in its order
    if problems:
        contents[INVALID] = dumps_rows([p.record() for p in problems])
    if fb and fb.replay:
        contents[fb_mod.REPLAY_FILE] = dumps_rows(fb.replay)
    records = _write(Path(out_dir), contents)
    counts.update(new_valid=len(parsed), invalid=len(problems), new_kept=len(kept), train=len(train),
                  val=len(val), test=len(test), replayed=len(replay), final_train=len(final),
                  old_test=len(hist.old_test))
    splits = {"train": train, "val": val, "test": test, "replayed": replay}
    summary = _summary(version_id, cfg, strict, inputs, parsed, counts, splits, hist, wanted)
    summary["files"] = {name: records[name] for name in contents}
    summary["dataset_sha256"] = _dataset_sha256(records)
    if fb:
        summary["feedback"] = fb_mod.summary(fb, {r["id"] for r in replay})
    return summary


def _summary(version_id: str, cfg: DataConfig, strict: bool, inputs: list[dict], parsed: list,
             counts: Counter, splits: dict[str, list[Row]], hist: _History, wanted: int) -> dict:
    replay = splits["replayed"]
    per_version = Counter(r["from_version"] for r in replay)
    return {
        "version_id": version_id,
        "seed": cfg.seed,
        "split": list(cfg.split),
        "strict": strict,
        "inputs": inputs,
        "formats": dict(sorted(Counter(p.fmt for p in parsed).items())),
        "counts": {k: counts[k] for k in _COUNT_KEYS},
        "per_topic": _per_topic(splits),
        "topics": sorted({r["topic"] for rows in splits.values() for r in rows if r["topic"] is not None}),
        "replay_ratio": {"requested": cfg.replay_ratio,
                         "actual": round(len(replay) / counts["final_train"], 6)},
        "replay": {"wanted": wanted, "available": len(hist.pool), "ancestors": hist.ancestors,
                   "selection": cfg.replay_selection, "each_epoch": bool(cfg.replay_each_epoch and replay),
                   "per_version": {v: per_version[v] for v in sorted(per_version, key=parse_version_id)},
                   "rows": [{"id": r["id"], "from_version": r["from_version"]} for r in replay]},
        "earlier_versions": sorted(hist.all_ids, key=parse_version_id),
    }


def summary_lines(summary: dict) -> list[str]:
    """The short human summary the CLI prints after `loraship data`."""
    c = summary["counts"]
    lines = [
        f"new rows: {c['new_kept']} kept of {c['new_valid']} valid; dropped {c['invalid']} invalid,"
        f" {c['duplicates_in_new']} duplicates within the new data, {c['duplicates_vs_earlier']} already in"
        f" earlier versions, {c['leaked_test_rows_dropped']} from earlier test splits",
        f"splits: train {c['train']}, val {c['val']}, test {c['test']}",
    ]
    rep, ratio = summary["replay"], summary["replay_ratio"]
    if not rep["ancestors"]:
        lines.append("replay: none (no earlier version in the lineage)")
    else:
        sources = ", ".join(f"{v} ({n})" for v, n in rep["per_version"].items()) or "none"
        chosen = f", {rep['selection']} selection" if rep.get("selection") else ""
        if rep.get("each_epoch"):
            chosen += f", drawn again each epoch from {rep['available']} eligible rows"
        lines.append(f"replay: {c['replayed']} rows from {sources}{chosen}; ratio {ratio['requested']:.2f} requested,"
                     f" {ratio['actual']:.3f} actual; training set {c['final_train']} rows")
        lines.append(f"old test pool: {c['old_test']} rows from {', '.join(rep['ancestors'])}")
    if summary.get("feedback"):
        f = summary["feedback"]["counts"]
        lines.append(f"feedback: {f['corrections']} corrections -> train, {f['confirmed']} confirmed answers -> "
                     f"replay pool; dropped {f['on_test_questions']} on test questions, {f['duplicates']} already "
                     f"known, {f['down_without_correction']} thumbs-down without a correction")
    topics = summary["per_topic"]
    if summary["topics"]:
        lines.append(f"topics: {len(summary['topics'])}")
        for t in topics[:20]:
            name = t["topic"] if t["topic"] is not None else "(no topic)"
            lines.append(f"  {name}: train {t['train']}, val {t['val']}, test {t['test']},"
                         f" replayed {t['replayed']}")
        if len(topics) > 20:
            lines.append(f"  ... and {len(topics) - 20} more topics")
    return lines
