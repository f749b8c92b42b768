"""Export on a tiny model: merge → GGUF → quantize → verify, and every way it must refuse."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from helpers import qa_rows, write_jsonl
from loraship import paths, pipeline
from loraship.cli import cli
from loraship.errors import ToolchainError
from loraship.export import gguf_tools, verify
from loraship.export import pipeline as export
from loraship.store import versions

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained_home(tmp_path_factory, tiny_base):
    """One trained tiny v1, built once; each test gets its own copy."""
    home = tmp_path_factory.mktemp("trained")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LORASHIP_HOME", str(home / "runs"))
        mp.setenv("LORASHIP_PROJECT", str(home))
        (home / "train").mkdir()
        (home / "train" / "tiny.yaml").write_text(
            f"base_model: {tiny_base}\ntrain:\n  num_train_epochs: 1\n  max_seq_length: 128\n  init_lora_nonzero: true\n"
            "export:\n  max_kl: 5.0\n  min_top1: 0.0\n")
        cfg = pipeline.load_config("tiny")
        pipeline.stage_data("tiny", cfg, [write_jsonl(home / "a.jsonl", qa_rows("alpha", 16))])
        pipeline.stage_train("tiny", cfg)
    return home


@pytest.fixture(scope="module")
def exported_home(trained_home, tmp_path_factory):
    """The same v1, exported once to Q4_K_M, for the checks that only read an export."""
    home = tmp_path_factory.mktemp("exported")
    shutil.copytree(trained_home, home, dirs_exist_ok=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LORASHIP_HOME", str(home / "runs"))
        mp.setenv("LORASHIP_PROJECT", str(home))
        pipeline.stage_export("tiny", pipeline.load_config("tiny"), "v1")
    return home


def _copy_into(src, project):
    shutil.copytree(src / "runs", project / "runs")
    shutil.copytree(src / "train", project / "train")
    return project


@pytest.fixture
def home(trained_home, isolated_home):
    return _copy_into(trained_home, isolated_home)


@pytest.fixture
def exported(exported_home, isolated_home):
    return _copy_into(exported_home, isolated_home)


def run(*args, code=0):
    r = CliRunner().invoke(cli, list(args))
    assert r.exit_code == code, r.output
    return r.output


def test_export_writes_verified_quants_with_metadata_and_checksums(home):
    out = run("export", "-m", "tiny", "v1", "--quant", "Q4_K_M", "--quant", "Q8_0")
    assert "KL" in out and "top-1" in out
    v = versions.get("tiny", "v1")
    exp = v.stage("export")
    assert set(exp["ggufs"]) == {"Q4_K_M", "Q8_0"}
    assert exp["verified"] and exp["checks"]["tokenizer_parity"]["passed"] and exp["checks"]["template"]["passed"]
    q4 = exp["checks"]["quant"]["Q4_K_M"]
    assert 0 <= q4["mean_kl"] and 0 <= q4["top1_agreement"] <= 1 and q4["ppl_ref"] > 1 and q4["tokens"] > 50
    # narrow tensors fall back: the real mix is reported, not assumed
    assert "Q4_K" in q4["type_mix"] and ("Q5_0" in q4["type_mix"] or "Q8_0" in q4["type_mix"])
    info = gguf_tools.describe(v.path / exp["ggufs"]["Q4_K_M"])
    assert (info["name"], info["version"]) == ("tiny v1", "v1")
    assert info["chat_template"] and "<|im_start|>" in info["chat_template"]
    assert not (v.path / export.MERGED_DIR).exists()  # intermediate weights deleted
    assert not list(v.path.glob("gguf/*F16*"))  # the reference served the check only
    listed = (v.path / paths.CHECKSUMS).read_text()
    assert "gguf/tiny-v1-Q4_K_M.gguf" in listed and "adapter/adapter_model.safetensors" in listed
    assert v.manifest["artifacts"]["gguf/tiny-v1-Q4_K_M.gguf"]["bytes"] == (v.path / exp["ggufs"]["Q4_K_M"]).stat().st_size
    assert "already exported" in run("export", "-m", "tiny", "v1")
    run("verify", "-m", "tiny", "v1")


def test_corrupted_gguf_fails_verify_naming_the_file(exported):
    v = versions.get("tiny", "v1")
    gguf = v.path / v.stage("export")["ggufs"]["Q4_K_M"]
    data = bytearray(gguf.read_bytes())
    data[len(data) // 2] ^= 0xFF
    gguf.write_bytes(bytes(data))
    out = run("verify", "-m", "tiny", "v1", code=2)
    assert "gguf/tiny-v1-Q4_K_M.gguf" in out and "changed" in out


def test_unknown_quant_type_is_refused_before_any_work(home):
    out = run("export", "-m", "tiny", "v1", "--quant", "Q3_FANCY", code=2)
    assert "unknown quant type 'Q3_FANCY'" in out and "Q4_K_M" in out
    assert not versions.get("tiny", "v1").stage("export")


def test_corrupt_adapter_is_named(home):
    v = versions.get("tiny", "v1")
    (v.path / paths.ADAPTER_DIR / "adapter_model.safetensors").write_bytes(b"not safetensors")
    out = run("export", "-m", "tiny", "v1", code=2)
    assert "adapter" in out and "corrupt" in out
    assert not (v.path / paths.GGUF_DIR).exists()


def test_changed_base_is_refused(home):
    v = versions.get("tiny", "v1")
    base = v.stage("train")["base"]["path"]
    backup = (home / "config.bak")
    shutil.copy(f"{base}/config.json", backup)
    try:
        cfgj = json.loads(backup.read_text())
        cfgj["rms_norm_eps"] = 1e-3
        (home / "changed.json").write_text(json.dumps(cfgj))
        shutil.copy(home / "changed.json", f"{base}/config.json")
        out = run("export", "-m", "tiny", "v1", code=2)
        assert "changed since training" in out
    finally:
        shutil.copy(backup, f"{base}/config.json")


def test_base_hash_is_reused_until_the_weights_change_even_with_their_mtime_put_back(home, monkeypatch):
    """Export proves the base unchanged by its hash; the second export reuses the remembered
    digest, and weights rewritten in place (same size, mtime restored) are still caught."""
    import os

    from loraship.store import hash_cache

    monkeypatch.setattr(hash_cache, "MIN_BYTES", 0)  # the tiny base is small; real ones are GBs
    cfg = pipeline.load_config("tiny")
    first = pipeline.stage_export("tiny", cfg, "v1")[1]
    assert first["merge"]["base_hash_cached"] == []
    assert set(first["timings_s"]) == {"base_check", "load", "merge", "reference", "save", "convert", "quantize", "verify"}
    again = export.export_version(cfg, versions.get("tiny", "v1"), force=True)
    weights = [f for f in again["merge"]["base_hash_cached"] if f.endswith(".safetensors")]
    assert weights
    target = f"{versions.get('tiny', 'v1').stage('train')['base']['path']}/{weights[0]}"
    st = os.stat(target)
    with open(target, "r+b") as f:
        f.seek(st.st_size - 8)
        original = f.read(8)
        f.seek(st.st_size - 8)
        f.write(bytes(b ^ 0xFF for b in original))
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    try:
        out = run("export", "-m", "tiny", "v1", "--force", code=2)
        assert "changed since training" in out
    finally:
        with open(target, "r+b") as f:
            f.seek(st.st_size - 8)
            f.write(original)
        os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_killed_conversion_leaves_no_gguf_under_its_final_name(home, monkeypatch):
    def killed(script, args, log=None, log_file=None):
        out = args[args.index("--outfile") + 1]
        with open(out, "wb") as f:
            f.write(b"GGUF" + b"\0" * 100)  # half-written
        raise ToolchainError("llama.cpp convert_hf_to_gguf.py failed: Killed")

    monkeypatch.setattr("loraship.export.toolchain.run_converter", killed)
    out = run("export", "-m", "tiny", "v1", code=2)
    assert "Killed" in out
    v = versions.get("tiny", "v1")
    assert not (v.path / paths.GGUF_DIR).exists() and not list(v.path.glob(".tmp-*"))
    assert not v.stage("export")


def test_failed_quality_check_blocks_unless_allowed(home):
    out = run("export", "-m", "tiny", "v1", "--set", "export.min_top1=1.01", code=2)
    assert "top-1 agreement" in out and "--allow-unverified" in out
    assert not versions.get("tiny", "v1").stage("export")
    run("export", "-m", "tiny", "v1", "--set", "export.min_top1=1.01", "--allow-unverified")
    exp = versions.get("tiny", "v1").stage("export")
    assert exp["verified"] is False and exp["allow_unverified"] is True


def test_quant_check_measures_the_served_file_against_the_trained_weights(exported):
    """The recorded KL is the shipped Q4_K_M against the merged (trained) model itself: the same
    number comes back from the merged weights, and a GGUF judged against other weights (the
    base without the adapter) is farther off."""
    import torch

    from loraship.base import model as base_model
    from loraship.export.merge import merge_chain

    v = versions.get("tiny", "v1")
    exp = v.stage("export")
    gguf = v.path / exp["ggufs"]["Q4_K_M"]
    base = v.stage("train")["base"]["path"]
    tok = base_model.load_tokenizer(base)
    _, texts = export._val_texts(v, tok)
    merged, _ = merge_chain(base_model.load_model(base, torch.float32), tok, [v.path / paths.ADAPTER_DIR], 1e-3)

    def quality(model):
        reference = verify.reference_logprobs(model, tok, texts)
        qnt = verify.open_quant(gguf, reference)
        try:
            return verify.quant_quality(qnt, reference)
        finally:
            qnt.close()

    trained, other = quality(merged), quality(base_model.load_model(base, torch.float32))
    recorded = exp["checks"]["quant"]["Q4_K_M"]
    assert recorded["reference"] == "merged model" and recorded["tokens"] == trained["tokens"] > 0
    assert trained["mean_kl"] == pytest.approx(recorded["mean_kl"], rel=1e-3, abs=1e-6)
    assert other["mean_kl"] > 2 * trained["mean_kl"]


def test_lora_gguf_export(home):
    run("export", "-m", "tiny", "v1", "--lora-gguf")
    v = versions.get("tiny", "v1")
    path = v.path / v.stage("export")["lora_gguf"]
    info = gguf_tools.describe(path)
    assert path.name == "tiny-v1-LoRA-F16.gguf"
    assert info["n_tensors"] > 0


def test_tokenizer_without_its_special_token_fails_parity(exported, tmp_path):
    from transformers import AutoTokenizer

    v = versions.get("tiny", "v1")
    gguf = v.path / v.stage("export")["ggufs"]["Q4_K_M"]
    src = v.stage("train")["base"]["path"]
    broken = tmp_path / "tok"
    shutil.copytree(src, broken, ignore=shutil.ignore_patterns("*.safetensors"))
    tj = json.loads((broken / "tokenizer.json").read_text())
    tj["added_tokens"] = [t for t in tj["added_tokens"] if t["content"] != "<|im_end|>"]
    (broken / "tokenizer.json").write_text(json.dumps(tj))
    tc = json.loads((broken / "tokenizer_config.json").read_text())
    tc.pop("added_tokens_decoder", None)  # transformers would re-register it from here
    tc.update(eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    (broken / "tokenizer_config.json").write_text(json.dumps(tc))
    good = verify.tokenizer_parity(AutoTokenizer.from_pretrained(src), gguf, [])
    bad = verify.tokenizer_parity(AutoTokenizer.from_pretrained(broken), gguf, [])
    assert good["passed"]
    assert not bad["passed"] and any("<|im_end|>" in m["text"] for m in bad["mismatches"])


def test_template_mismatch_is_caught(exported):
    from transformers import AutoTokenizer

    v = versions.get("tiny", "v1")
    meta = gguf_tools.describe(v.path / v.stage("export")["ggufs"]["Q4_K_M"])
    tok = AutoTokenizer.from_pretrained(v.stage("train")["base"]["path"])
    assert verify.template_roundtrip(tok, meta)["passed"]
    meta["chat_template"] = meta["chat_template"].replace("<|im_start|>assistant", "<|im_start|>bot")
    res = verify.template_roundtrip(tok, meta)
    assert not res["passed"] and "different prompt" in res["reason"]


def test_missing_converter_names_the_fix(home, monkeypatch, tmp_path):
    monkeypatch.setenv("LORASHIP_TOOLS", str(tmp_path / "empty-tools"))
    with pytest.raises(ToolchainError, match="make setup"):
        export.export_version(pipeline.load_config("tiny"), versions.get("tiny", "v1"))
    assert not versions.get("tiny", "v1").stage("export")


def test_base_from_gguf_round_trips_a_gguf_into_a_trainable_checkpoint(exported, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    v = versions.get("tiny", "v1")
    gguf = v.path / v.stage("export")["ggufs"]["Q4_K_M"]
    out = tmp_path / "from-gguf"
    assert "base model ready" in run("base", "from-gguf", str(gguf), str(out))
    model = AutoModelForCausalLM.from_pretrained(out, local_files_only=True, use_safetensors=True)
    assert model.config.hidden_size == 64 and model.config.num_hidden_layers == 2
    assert list(out.glob("*.safetensors"))
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.chat_template and tok.eos_token == "<|im_end|>"
    assert "nothing to do" in CliRunner().invoke(cli, ["base", "from-gguf", str(gguf), str(out)]).output


def test_llama_cpp_chatter_goes_to_the_version_log_and_the_console_gets_one_line_per_quant(home, capfd):
    """The quantizer's per-tensor notes and the converter's output land in export.log; the
    console shows one summary line per quant with its type mix and fallback count."""
    out = run("export", "-m", "tiny", "v1", "--force")
    err = capfd.readouterr().err
    v = versions.get("tiny", "v1")
    log_text = (v.path / "export.log").read_text()
    assert "convert_hf_to_gguf.py" in log_text and "llama_model_quantize" in log_text
    summary = [ln for ln in (out + err).splitlines() if ln.startswith("quantized to Q4_K_M:")]
    assert len(summary) == 1 and "fell back" in summary[0]
    fallbacks = sum(1 for ln in log_text.splitlines() if "fallback" in ln)
    assert f"{fallbacks} fell back" in summary[0]
    assert not any("llama_model_quantize" in ln or "fallback quantization" in ln for ln in (out + err).splitlines())
