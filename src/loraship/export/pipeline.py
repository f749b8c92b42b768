"""Export: merge the adapter chain → HF safetensors → GGUF (llama.cpp) → quantize → verify.

Everything is built in a temp folder inside the version and renamed into place, so a
killed export leaves no GGUF under its final name.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from loraship import paths
from loraship.base import model as base_model
from loraship.config import Config
from loraship.data import prepare as data
from loraship.errors import ExportError, VersionError
from loraship.export import gguf_tools, verify
from loraship.store import manifest
from loraship.store.versions import Version, get

Log = Callable[[str], None]
MERGED_DIR = "merged"
EXPORT_LOG = "export.log"  # llama.cpp's converter and quantizer output, appended per export


def _adapters(version: Version, train: dict) -> list[Path]:
    return [get(version.model, vid).path / paths.ADAPTER_DIR for vid in train["adapter_chain"]]


def _val_texts(version: Version, tok: Any) -> tuple[list[dict], list[str]]:
    """The val split's rows (a version without one: its final training mix) and the first 16
    rendered by the chat template: what the quantization check measures."""
    val = data.load_rows(version.path / paths.DATA_DIR / "val.jsonl") or data.load_rows(
        version.path / paths.DATA_DIR / "incremental_replay_final.jsonl")
    return val, [tok.apply_chat_template(r["messages"], tokenize=False) for r in val[:16]]


class Merged(NamedTuple):
    check: dict[str, Any]  # the merge's logit check, for the manifest
    reference: list[tuple]  # the merged model's log-probabilities on the val texts (verify.reference_logprobs)
    tokenizer: Any  # the base's tokenizer, which training used and the GGUF must reproduce
    val: list[dict]  # the rows those texts came from (their answers are tokenizer-parity probes)


def _merge(cfg: Config, version: Version, train: dict, out: Path, log: Log, timings: dict[str, float]) -> Merged:
    """Merge, check, save; the reference log-probabilities are taken before the model is freed."""
    import torch

    from loraship.export.merge import merge_chain

    t0 = time.time()
    cached: list[str] = []
    base_path = base_model.check_unchanged(train["base"], cached)
    timings["base_check"] = round(time.time() - t0, 2)
    # Merge in the training precision, never onto a 4-bit base: QLoRA adapters merge onto 16-bit weights.
    dtype = train["device"]["dtype"]
    on_gpu = train["device"]["device"] == "cuda" and torch.cuda.is_available()
    if not on_gpu:
        dtype = "float32"
    elif train["device"].get("load_in_4bit"):
        dtype = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    tok = base_model.load_tokenizer(base_path, cfg.train.trust_remote_code)
    model = base_model.load_model(base_path, getattr(torch, dtype), cfg.train.trust_remote_code)
    if on_gpu:
        model = model.to("cuda")
    tol = cfg.export.max_merge_logit_diff if dtype == "float32" else max(cfg.export.max_merge_logit_diff, 5e-2)
    t1 = time.time()
    model, check = merge_chain(model, tok, _adapters(version, train), tol, log)
    t2 = time.time()
    timings["load"], timings["merge"] = round(t1 - t0 - timings["base_check"], 2), round(t2 - t1, 2)
    val, texts = _val_texts(version, tok)
    reference = verify.reference_logprobs(model, tok, texts)
    timings["reference"] = round(time.time() - t2, 2)
    t2 = time.time()
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    for name in base_model.TOKENIZER_EXTRAS:  # Phi-3's converter refuses to run without tokenizer.model
        if (base_path / name).exists() and not (out / name).exists():
            shutil.copy2(base_path / name, out / name)
    timings["save"] = round(time.time() - t2, 2)
    check["dtype"] = dtype
    check["qlora_merged_onto_16bit"] = bool(train["device"].get("load_in_4bit"))
    check["base_hash_cached"] = cached  # weight files whose digest came from store/hash_cache.py
    return Merged(check, reference, tok, val)


def _gguf_metadata(version: Version, train: dict, cfg: Config) -> dict[str, Any]:
    base_name = Path(train["base"]["path"]).name
    meta = {
        "general.name": f"{version.model} {version.id}",
        "general.basename": version.model,
        "general.version": version.id,
        "general.finetune": f"loraship-{version.id}",
        "general.base_models": [{"name": base_name}],
    }
    if cfg.ollama.license:
        meta["general.license"] = cfg.ollama.license.splitlines()[0][:200]
    return meta


def export_version(
    cfg: Config, version: Version, *, quants: list[str] | None = None, force: bool = False,
    keep_merged: bool | None = None, allow_unverified: bool = False, lora_gguf: bool = False,
    log: Log = lambda s: None,
) -> dict[str, Any]:
    train = version.stage("train")
    if not train:
        raise VersionError(f"{version.id} has no trained adapter: run `loraship train --model {version.model}`")
    quants = quants or cfg.export.quants
    for q in quants:
        gguf_tools.ftype_for(q)  # an unknown type fails before any work
    if version.stage("export") and not force:
        return {**version.stage("export"), "noop": True}
    keep_merged = cfg.export.keep_merged if keep_merged is None else keep_merged
    started = time.time()
    work = version.path / f"{paths.TMP_PREFIX}export"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    try:
        record = _build(cfg, version, train, quants, work, log)
        if lora_gguf:
            record["lora_gguf"] = _lora_gguf(version, train, work, log)
        record["runtime_s"] = round(time.time() - started, 1)
        _check_gate(record, cfg, allow_unverified)
        _install(version, work, record, keep_merged, force)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return record


def _build(cfg: Config, version: Version, train: dict, quants: list[str], work: Path, log: Log) -> dict:
    """Every step, timed on its own: `timings_s` splits the export (base_check, load, merge
    with its logit check, reference log-probabilities, save, convert, quantize, verify)."""
    merged = work / MERGED_DIR
    timings: dict[str, float] = {}
    log("merging adapter chain into the base")
    merge = _merge(cfg, version, train, merged, log, timings)
    ref_name = paths.gguf_name(version.model, version.id, cfg.export.outtype.upper())
    gguf_dir = work / paths.GGUF_DIR
    gguf_dir.mkdir()
    console_log = version.path / EXPORT_LOG  # llama.cpp's own output, kept out of the console
    log(f"converting to GGUF ({cfg.export.outtype}) with llama.cpp (its output: {console_log})")
    t0 = time.time()
    gguf_tools.convert(merged, gguf_dir / ref_name, cfg.export.outtype, _gguf_metadata(version, train, cfg), log,
                       console_log)
    timings["convert"] = round(time.time() - t0, 2)
    outputs = {}
    t0 = time.time()
    for q in quants:
        name = paths.gguf_name(version.model, version.id, q.upper())
        fallbacks = gguf_tools.quantize(gguf_dir / ref_name, gguf_dir / name, q, threads=os.cpu_count() or 1,
                                        log_file=console_log)
        mix = gguf_tools.describe(gguf_dir / name)["type_mix"]
        log(f"quantized to {q}: {sum(mix.values())} tensors ({', '.join(f'{t} {n}' for t, n in mix.items())}); "
            f"{fallbacks} fell back to another type (rows not divisible by its block size; see {EXPORT_LOG})")
        outputs[q.upper()] = name
    timings["quantize"] = round(time.time() - t0, 2)
    t0 = time.time()
    checks = _verify(merge, gguf_dir, outputs, version, log)
    timings["verify"] = round(time.time() - t0, 2)
    return {
        "merge": merge.check,
        "reference_gguf": f"{paths.GGUF_DIR}/{ref_name}",
        "ggufs": {q: f"{paths.GGUF_DIR}/{n}" for q, n in outputs.items()},
        "checks": checks,
        "timings_s": timings,
        "finished_at": manifest.now_iso(),
    }


def _lora_gguf(version: Version, train: dict, work: Path, log: Log) -> str:
    """The adapter alone as a GGUF LoRA (llama.cpp's convert_lora_to_gguf.py), for runtimes that load adapters."""
    if len(train["adapter_chain"]) != 1:
        raise ExportError(f"{version.id} stacks {len(train['adapter_chain'])} adapters; a single GGUF LoRA cannot hold "
                          "them (export the merged model, or train with strategy continue)")
    from loraship.export import toolchain

    name = paths.gguf_name(version.model, version.id, "LoRA-F16")
    log("converting the adapter alone to a GGUF LoRA")
    toolchain.run_converter("convert_lora_to_gguf.py", [
        str(version.path / paths.ADAPTER_DIR), "--base", train["base"]["path"],
        "--outfile", str(work / paths.GGUF_DIR / name), "--outtype", "f16"], log, version.path / EXPORT_LOG)
    gguf_tools.check_magic(work / paths.GGUF_DIR / name)
    return f"{paths.GGUF_DIR}/{name}"


def _verify(merge: Merged, gguf_dir: Path, outputs: dict, version: Version, log: Log) -> dict:
    tok, val = merge.tokenizer, merge.val
    log("verifying tokenizer parity, chat template and quantization quality")
    checks: dict[str, Any] = {"quant": {}}
    for i, (q, name) in enumerate(outputs.items()):
        qnt = verify.open_quant(gguf_dir / name, merge.reference)
        try:
            if i == 0:  # the tokenizer is the same in every quant: checked once, on the open model
                checks["tokenizer_parity"] = verify.tokenizer_parity(
                    tok, gguf_dir / name, [r["messages"][-1]["content"] for r in val[:8]], llm=qnt)
            qq = verify.quant_quality(qnt, merge.reference)
        finally:
            qnt.close()
        info = gguf_tools.describe(gguf_dir / name)
        if i == 0:
            checks["template"] = verify.template_roundtrip(tok, info)
        qq["type_mix"], qq["file_type"] = info["type_mix"], info["file_type"]
        checks["quant"][q] = qq
    return checks


def _check_gate(record: dict, cfg: Config, allow_unverified: bool) -> None:
    failures = []
    checks = record["checks"]
    if not checks["tokenizer_parity"]["passed"]:
        m = checks["tokenizer_parity"]["mismatches"][0]
        failures.append(f"tokenizer parity failed on {m['text']!r}")
    if not checks["template"]["passed"]:
        failures.append(checks["template"]["reason"] or "chat template check failed")
    for q, qq in checks["quant"].items():
        if qq["mean_kl"] > cfg.export.max_kl:
            failures.append(f"{q}: mean KL {qq['mean_kl']:.3f} > {cfg.export.max_kl}")
        if qq["top1_agreement"] < cfg.export.min_top1:
            failures.append(f"{q}: top-1 agreement {qq['top1_agreement']:.2%} < {cfg.export.min_top1:.0%}")
    record["verified"] = not failures
    record["verification_failures"] = failures
    record["allow_unverified"] = bool(failures and allow_unverified)
    if failures and not allow_unverified:
        raise ExportError(
            "verification failed: " + "; ".join(failures) + " (nothing was installed; --allow-unverified overrides)"
        )


def _install(version: Version, work: Path, record: dict, keep_merged: bool, force: bool) -> None:
    """Rename the verified outputs into the version, then record checksums and the manifest."""
    dest_gguf = version.path / paths.GGUF_DIR
    if force and dest_gguf.exists():
        shutil.rmtree(dest_gguf)
    ref = work / record["reference_gguf"]
    ref.unlink()  # the F16 reference served the quality check; only the requested quants ship
    record.pop("reference_gguf")
    record["gguf_info"] = {  # read before the move: describe() caches by path
        g: {k: v for k, v in gguf_tools.describe(work / g).items() if k != "chat_template"} for g in record["ggufs"].values()}
    os.replace(work / paths.GGUF_DIR, dest_gguf)
    files = [version.path / paths.ADAPTER_DIR] + [version.path / p for p in record["ggufs"].values()]
    if record.get("lora_gguf"):
        files.append(version.path / record["lora_gguf"])
    if keep_merged:
        dest_merged = version.path / MERGED_DIR
        shutil.rmtree(dest_merged, ignore_errors=True)
        os.replace(work / MERGED_DIR, dest_merged)
        files.append(dest_merged)
        record["merged"] = MERGED_DIR
    artifacts = verify.record_checksums(version.path, files)

    def change(m: dict) -> None:
        m["stages"]["export"] = record
        m["artifacts"].update(artifacts)

    manifest.update(version.path, change)


def verify_version(version: Version) -> dict[str, Any]:
    """Re-check checksums of every recorded artifact; name any file that changed."""
    export = version.stage("export")
    if not export:
        raise VersionError(f"{version.id} is not exported yet: run `loraship export --model {version.model} {version.id}`")
    changed = verify.check_checksums(version.path)
    if changed:
        fix = ("re-register with `loraship register --force`" if changed == [paths.MODELFILE]
               else "re-export with `loraship export --force`")
        raise ExportError(f"{version.id}: files changed since export: {', '.join(changed)} ({fix})")
    for gguf in export["ggufs"].values():
        gguf_tools.check_magic(version.path / gguf)
    return {"checksums": "ok", "verified": export.get("verified"), "failures": export.get("verification_failures", [])}
