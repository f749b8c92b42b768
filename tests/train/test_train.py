"""Incremental training on a tiny model: loss masking, lineage over three versions, strategies,
interrupt + resume, and DDP through torchrun with two CPU processes."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import qa_rows, write_jsonl
from loraship import paths, pipeline
from loraship.errors import VersionError
from loraship.store import versions

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def test_loss_is_only_on_assistant_answers(tiny_base):
    from transformers import AutoTokenizer

    from loraship.train.chat_data import encode_rows

    tok = AutoTokenizer.from_pretrained(tiny_base)
    row = {"messages": [{"role": "user", "content": "Where is kessrite mined?"},
                        {"role": "assistant", "content": "At the Dunmere Pit."},
                        {"role": "user", "content": "And orvalite?"},
                        {"role": "assistant", "content": "At Halden Cut."}]}
    enc = encode_rows(tok, [row], max_len=512)
    learned = tok.decode([t for t in enc.labels[0] if t != -100])
    # each answer with its end-of-turn marker (and the newline ChatML puts after it)
    assert learned == "At the Dunmere Pit.<|im_end|>\nAt Halden Cut.<|im_end|>\n"
    assert "kessrite" not in learned and "system" not in learned


def test_gemma4_answers_are_trained_after_the_prompt_they_are_served_with(family_base):
    """Gemma 4's generation prompt opens an empty thought channel that its history turns leave out,
    so the whole conversation is not one text with the prompt as a prefix: each answer is trained
    after the exact prompt Ollama renders before it (what the model sees when it is asked)."""
    from transformers import AutoTokenizer

    from loraship.train.chat_data import encode_rows

    tok = AutoTokenizer.from_pretrained(family_base("gemma4"))
    turns = [{"role": "user", "content": "Where is kessrite mined?"},
             {"role": "assistant", "content": "At the Dunmere Pit."},
             {"role": "user", "content": "And orvalite?"},
             {"role": "assistant", "content": "At Halden Cut."}]
    enc = encode_rows(tok, [{"messages": turns}], max_len=512)
    assert len(enc.input_ids) == 2
    for ids, labels, k in zip(enc.input_ids, enc.labels, (1, 3)):
        prompt = tok.apply_chat_template(turns[:k], tokenize=False, add_generation_prompt=True)
        assert prompt.endswith("<|turn>model\n<|channel>thought\n<channel|>")
        prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"]
        assert ids[:len(prompt_ids)] == prompt_ids and prompt_ids[0] == tok.bos_token_id
        assert all(t == -100 for t in labels[:len(prompt_ids)])
        learned = tok.decode([t for t in labels if t != -100])
        assert learned == turns[k]["content"] + "<turn|>\n"


def test_rows_longer_than_the_limit_are_truncated_and_counted(tiny_base):
    from transformers import AutoTokenizer

    from loraship.train.chat_data import encode_rows

    tok = AutoTokenizer.from_pretrained(tiny_base)
    long_answer = {"messages": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "word " * 200}]}
    long_prompt = {"messages": [{"role": "user", "content": "word " * 200}, {"role": "assistant", "content": "A."}]}
    enc = encode_rows(tok, [long_answer, long_prompt], max_len=64)
    assert enc.truncated == 2
    assert enc.dropped_no_answer == 1  # the answer of the second row was cut off entirely
    assert len(enc.input_ids) == 1 and len(enc.input_ids[0]) == 64


def _train(model: str, files: list[Path], **kw) -> versions.Version:
    cfg = pipeline.load_config(model, overrides=kw.pop("overrides", None))
    pipeline.stage_data(model, cfg, files, **kw)
    return pipeline.stage_train(model, cfg)


def test_three_versions_record_lineage_data_replay_and_settings(isolated_home, tiny_config):
    tiny_config("tiny", train__num_train_epochs=1)
    b = [write_jsonl(isolated_home / f"b{i}.jsonl", qa_rows(name, 20, name)) for i, name in enumerate(["alpha", "beta", "gamma"])]
    v1 = _train("tiny", [b[0]])
    v2 = _train("tiny", [b[1]])
    v3 = _train("tiny", [b[2]], overrides={"train.strategy": "stack"})
    m1, m2, m3 = v1.manifest, v2.manifest, v3.manifest
    assert (m1["parent"], m2["parent"], m3["parent"]) == (None, "v1", "v2")
    assert (m1["strategy"], m2["strategy"], m3["strategy"]) == ("fresh", "continue", "stack")
    # v2 continued v1's adapter (it holds both), so stacking v3 merges v2's chain, then adds v3
    assert m3["stages"]["train"]["adapter_chain"] == ["v2", "v3"]
    assert m2["stages"]["train"]["adapter_chain"] == ["v2"]
    replay = m3["stages"]["data"]["replay"]
    assert set(replay["per_version"]) <= {"v1", "v2"} and sum(replay["per_version"].values()) > 0
    assert m3["stages"]["data"]["counts"]["replayed"] == len(replay["rows"])
    hp = m2["stages"]["train"]["hyperparameters"]
    for key in ("learning_rate", "num_train_epochs", "lora_r", "lora_alpha", "lora_dropout", "target_modules",
                "warmup_ratio", "warmup_steps", "per_device_train_batch_size", "gradient_accumulation_steps",
                "max_seq_length", "seed"):
        assert key in hp, key
        assert key in m2["stages"]["train"]["reasons"], key
    assert hp["learning_rate"] == m1["stages"]["train"]["hyperparameters"]["learning_rate"] == 2e-4
    # the default increment methods: continue pulls toward v1's adapter and distils v1's answers
    # on the replayed rows; stack replays
    assert m2["stages"]["train"]["increment"]["method"] == "distill+l2"
    assert m3["stages"]["train"]["increment"]["method"] == "replay"
    assert m2["stages"]["train"]["base"]["sha256"] == m1["stages"]["train"]["base"]["sha256"]
    assert m2["stages"]["train"]["loss_curve"] and (v2.path / "loss_curve.png").stat().st_size > 1000
    assert (v2.path / paths.ADAPTER_DIR / "adapter_model.safetensors").exists()
    # a trained version is never retrained
    with pytest.raises(VersionError, match="already trained"):
        pipeline.stage_train("tiny", pipeline.load_config("tiny"), "v2")


def test_changed_base_is_refused_for_an_increment(isolated_home, tiny_config, tiny_base, tmp_path):
    import shutil

    tiny_config("tiny", train__num_train_epochs=1)
    _train("tiny", [write_jsonl(isolated_home / "a.jsonl", qa_rows("alpha", 12))])
    other = tmp_path / "other-base"
    shutil.copytree(tiny_base, other)
    (other / "config.json").write_text((other / "config.json").read_text().replace('"rms_norm_eps": 1e-05', '"rms_norm_eps": 1e-06'))
    cfg = pipeline.load_config("tiny", overrides={"base_model": str(other)})
    pipeline.stage_data("tiny", cfg, [write_jsonl(isolated_home / "b.jsonl", qa_rows("beta", 12))])
    with pytest.raises(VersionError, match="was trained on base"):
        pipeline.stage_train("tiny", cfg)


def _default_sigint() -> None:
    # A background job of a non-interactive shell (how CI scripts start suites) begins with SIGINT
    # ignored; a child inherits that, and Python then installs no KeyboardInterrupt handler, so
    # Ctrl-C tests would pass or fail by how pytest was launched. The child gets a user's terminal.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _cli(args: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "loraship.cli", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, preexec_fn=_default_sigint)


def test_the_console_shows_one_line_per_epoch_and_the_full_log_stays_in_the_version(isolated_home, tiny_config):
    """No raw Trainer log dicts between bar redraws: epoch lines with the validation loss on the
    console, every log entry in train_log.jsonl."""
    import json

    tiny_config("tiny", train__num_train_epochs=2)
    pipeline.stage_data("tiny", pipeline.load_config("tiny"), [write_jsonl(isolated_home / "a.jsonl", qa_rows("alpha", 24))])
    proc = _cli(["train", "-m", "tiny"], {**os.environ, "PYTHONUNBUFFERED": "1"})
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    epoch_lines = [ln for ln in out.splitlines() if re.match(r"epoch \d+/2: val loss \d", ln)]
    assert len(epoch_lines) == 2, out
    assert "{'loss'" not in out and "'eval_loss'" not in out
    entries = [json.loads(ln) for ln in (versions.get("tiny", "v1").path / "train_log.jsonl").read_text().splitlines()]
    assert any("loss" in e for e in entries) and sum("eval_loss" in e for e in entries) == 2
    assert all("step" in e and "epoch" in e for e in entries)


def _train_until_first_checkpoint(home: Path, tiny_config, epochs: int):
    """Start `loraship train` on v1 and return once a complete checkpoint exists (polled fast:
    on a quick machine the whole tiny run takes about a second)."""
    tiny_config("tiny", train__num_train_epochs=epochs)
    pipeline.stage_data("tiny", pipeline.load_config("tiny"), [write_jsonl(home / "a.jsonl", qa_rows("alpha", 24))])
    v1 = versions.get("tiny", "v1")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = _cli(["train", "-m", "tiny"], env)
    ckpts = v1.path / "checkpoints"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if any(ckpts.glob("checkpoint-*/trainer_state.json")):
            return proc, v1, env
        time.sleep(0.01)
    raise AssertionError(f"no finished checkpoint appeared (exit code {proc.poll()})")


def test_interrupted_training_leaves_no_finished_version_and_resumes(isolated_home, tiny_config):
    # 12 epochs: after the first checkpoint 11 epochs of steps, evaluations and checkpoint
    # writes remain, so the interrupt lands inside training, not after it.
    epochs = 12
    proc, v1, env = _train_until_first_checkpoint(isolated_home, tiny_config, epochs)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out
    assert "interrupted" in out
    ckpts = v1.path / "checkpoints"
    assert "train" not in v1.manifest["stages"]
    assert not (v1.path / paths.ADAPTER_DIR).exists()
    with pytest.raises(VersionError, match="--resume"):
        pipeline.stage_train("tiny", pipeline.load_config("tiny"))
    done = _cli(["train", "-m", "tiny", "--resume"], env)
    out, _ = done.communicate(timeout=600)
    assert done.returncode == 0, out
    rec = v1.manifest["stages"]["train"]
    assert rec["global_steps"] == epochs * 3  # 17 train rows / batch 8 = 3 steps per epoch
    assert not ckpts.exists()


def test_resume_skips_a_checkpoint_that_an_interrupt_left_half_written(isolated_home, tiny_config):
    """Ctrl-C can land while the Trainer writes a checkpoint: resume continues from the newest
    complete one and discards the torn one instead of failing on it."""
    from loraship.train.lora import resumable_checkpoint

    proc, v1, env = _train_until_first_checkpoint(isolated_home, tiny_config, 12)
    ckpts = v1.path / "checkpoints"
    proc.send_signal(signal.SIGKILL)  # killed outright: whatever it was writing stays as it was
    proc.communicate(timeout=120)
    complete = resumable_checkpoint(ckpts)
    assert complete is not None and (complete / "trainer_state.json").exists()
    step = int(complete.name.split("-")[1])
    torn = ckpts / f"checkpoint-{step + 1000}"
    torn.mkdir()
    (torn / "adapter_model.safetensors").write_bytes(b"half")
    assert resumable_checkpoint(ckpts) == complete
    done = _cli(["train", "-m", "tiny", "--resume"], env)
    out, _ = done.communicate(timeout=600)
    assert done.returncode == 0, out
    assert f"discarding {torn.name}" in out and f"resuming from checkpoint-{step}" in out
    assert v1.manifest["stages"]["train"]["global_steps"] == 12 * 3


def test_continue_and_stack_serve_the_same_model_when_the_increment_learns_nothing(isolated_home, tiny_config):
    """lr=0 increment: `continue` keeps v1's adapter, `stack` merges v1 then adds a zero adapter.
    Either way the merged model must equal base+v1 — the chain is applied faithfully."""
    import torch

    from loraship.base import model as base_model
    from loraship.export.merge import merge_chain
    from loraship.export.pipeline import _adapters

    tiny_config("tiny", train__num_train_epochs=1)
    b1 = write_jsonl(isolated_home / "a.jsonl", qa_rows("alpha", 12))
    v1 = _train("tiny", [b1])
    b2 = write_jsonl(isolated_home / "b.jsonl", qa_rows("beta", 12))
    zero = {"train.learning_rate": 0.0, "train.init_lora_nonzero": False}
    cont = _train("tiny", [b2], overrides={**zero, "train.strategy": "continue"})
    b3 = write_jsonl(isolated_home / "c.jsonl", qa_rows("gamma", 12))
    stack = _train("tiny", [b3], from_ref="v1", overrides={**zero, "train.strategy": "stack"})

    def merged_logits(v):
        train = v.stage("train")
        tok = base_model.load_tokenizer(Path(train["base"]["path"]))
        model = base_model.load_model(Path(train["base"]["path"]), torch.float32)
        model, _ = merge_chain(model, tok, _adapters(v, train), 1e-3)
        ids = tok("Site 3 has alpha code", return_tensors="pt")["input_ids"]
        with torch.no_grad():
            return model(input_ids=ids).logits

    ref = merged_logits(v1)
    assert torch.allclose(merged_logits(cont), ref, atol=1e-4)
    assert torch.allclose(merged_logits(stack), ref, atol=1e-4)
    base = base_model.load_model(Path(v1.stage("train")["base"]["path"]), torch.float32)
    tok = base_model.load_tokenizer(Path(v1.stage("train")["base"]["path"]))
    with torch.no_grad():
        plain = base(input_ids=tok("Site 3 has alpha code", return_tensors="pt")["input_ids"]).logits
    assert not torch.allclose(plain, ref, atol=1e-4), "v1's adapter must change the model (non-zero init)"


def test_two_cpu_processes_with_torchrun_produce_one_adapter(isolated_home, tiny_config):
    tiny_config("tiny", train__num_train_epochs=1)
    pipeline.stage_data("tiny", pipeline.load_config("tiny"), [write_jsonl(isolated_home / "a.jsonl", qa_rows("alpha", 24))])
    torchrun = Path(sys.executable).parent / "torchrun"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([str(torchrun), "--nproc_per_node", "2", "--master_port", "29533", "-m", "loraship.cli",
                           "train", "-m", "tiny"], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    v1 = versions.get("tiny", "v1")
    rec = v1.stage("train")
    assert rec["device"]["world_size"] == 2
    assert len(list((v1.path / paths.ADAPTER_DIR).glob("adapter_model.safetensors"))) == 1
    assert len(versions.list_versions("tiny")) == 1


def test_fsdp_on_two_cpu_processes_saves_one_whole_adapter(isolated_home, tiny_config, tmp_path):
    """build/accelerate/fsdp.yaml as shipped, on CPUs (gloo): the adapter is gathered from both
    ranks and written once, a full peft adapter that loads onto the base."""
    import yaml

    tiny_config("tiny", train__num_train_epochs=1)
    pipeline.stage_data("tiny", pipeline.load_config("tiny"), [write_jsonl(isolated_home / "a.jsonl", qa_rows("alpha", 24))])
    cfg = yaml.safe_load((REPO / "build" / "accelerate" / "fsdp.yaml").read_text())
    cfg.update(use_cpu=True, num_processes=2, main_process_port=29534)
    # Broadcasting rank 0's weights needs an accelerator device (accelerate refuses it on CPUs):
    # every rank loads the tiny base itself instead. Sharding and the gathered save are unchanged.
    cfg["fsdp_config"].update(fsdp_sync_module_states=False, fsdp_cpu_ram_efficient_loading=False)
    (tmp_path / "fsdp-cpu.yaml").write_text(yaml.safe_dump(cfg))
    accelerate = Path(sys.executable).parent / "accelerate"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([str(accelerate), "launch", "--config_file", str(tmp_path / "fsdp-cpu.yaml"), "-m",
                           "loraship.cli", "train", "-m", "tiny"], env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    v1 = versions.get("tiny", "v1")
    assert v1.stage("train")["device"]["world_size"] == 2
    adapter = v1.path / paths.ADAPTER_DIR
    assert sorted(p.name for p in adapter.glob("*.safetensors")) == ["adapter_model.safetensors"]
    assert not (adapter / "training_args.bin").exists()
    from safetensors.torch import load_file

    tensors = load_file(adapter / "adapter_model.safetensors")
    lora_a = [t for k, t in tensors.items() if "lora_A" in k]
    assert lora_a and all(t.ndim == 2 and t.numel() > 0 for t in lora_a)  # whole matrices, not shards


@pytest.mark.parametrize("mode", ["mask", "positions", "full"])
def test_answer_only_logits_give_the_same_loss_as_the_full_model(tiny_base, mode):
    """Both ways of asking for answer logits (the boolean mask of newer transformers, and the
    1-D positions every supported release takes) give the model's own loss and gradients."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from loraship.train.chat_data import PadCollator, encode_rows
    from loraship.train.completion_loss import MASK, answer_only_loss, position_mode

    tok = AutoTokenizer.from_pretrained(tiny_base)
    rows = [{"messages": [{"role": "user", "content": f"Where is mineral {i}?" + " really" * (3 - i)},
                          {"role": "assistant", "content": "At pit " * (i + 1)}]} for i in range(3)]
    enc = encode_rows(tok, rows, max_len=128)
    batch = PadCollator(tok.pad_token_id)([{"input_ids": i, "labels": lab} for i, lab in zip(enc.input_ids, enc.labels)])
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_base),
                           LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    if mode == "mask" and position_mode(model) != MASK:
        pytest.skip("this transformers release takes no boolean logits_to_keep (the positions mode covers it)")
    full = model(**batch).loss
    ours, out = answer_only_loss(model, batch, mode=mode)
    assert torch.allclose(full, ours, atol=1e-5)
    n_labels = int(batch["labels"][:, 1:].ne(-100).sum())
    assert out.logits.shape[0] == n_labels  # one logit row per answer token
    ours.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters() if "lora_" in n)


def test_the_logits_mode_matches_what_the_installed_transformers_takes(tiny_base):
    """transformers releases that accept a boolean logits_to_keep get the mask; older ones
    (5.17, the floor) get positions, and training works on both."""
    import transformers
    from transformers import AutoModelForCausalLM

    from loraship.train.completion_loss import MASK, POSITIONS, position_mode

    mode = position_mode(AutoModelForCausalLM.from_pretrained(tiny_base))
    major_minor = tuple(int(x) for x in transformers.__version__.split(".")[:2])
    assert mode in (MASK, POSITIONS)
    if major_minor <= (5, 17):
        assert mode == POSITIONS


def test_the_recorded_seed_repeats_a_run_and_the_val_split_only_measures(isolated_home, tiny_config):
    """Two runs with the same seed start from the same adapter and end close to each other, even
    when a run before them in the process drew random numbers (bf16 CPU kernels leave float noise,
    not bit-identity); another seed starts elsewhere; and holding out other val rows while the
    training rows stay the same does not change the run. Before the adapter's init was seeded,
    two same-seed runs ended as far apart as two seeds."""
    from safetensors.torch import load_file

    rows = write_jsonl(isolated_home / "b.jsonl", qa_rows("alpha", 40, "alpha"))

    def adapter(model: str, **extra) -> dict:
        tiny_config(model, train__num_train_epochs=1, **extra)
        version = _train(model, [rows])
        return load_file(version.path / paths.ADAPTER_DIR / "adapter_model.safetensors")

    def distance(a: dict, b: dict) -> float:  # relative L2 distance over all adapter weights
        num = sum(float(((a[k].float() - b[k].float()) ** 2).sum()) for k in a)
        return (num / sum(float((a[k].float() ** 2).sum()) for k in a)) ** 0.5

    first = adapter("one", data__split=[0.7, 0.15, 0.15])
    assert distance(adapter("two", data__split=[0.7, 0.15, 0.15]), first) < 0.05
    assert distance(adapter("three", data__split=[0.7, 0.05, 0.25]), first) < 0.05  # the same 28 training rows
    assert distance(adapter("four", data__split=[0.7, 0.15, 0.15], train__seed=7), first) > 0.5
