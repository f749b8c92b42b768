"""Helpers shared by the test modules: sample rows, and a project whose tiny v1 and v2 are
trained and exported once per session (used by the register, promote and publish tests)."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from loraship import paths, pipeline
from loraship.cli import cli
from loraship.store import versions


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def qa_rows(prefix: str, n: int, topic: str | None = None) -> list[dict]:
    rows = []
    for i in range(n):
        row = {"question": f"What is the {prefix} code of site {i}?", "answer": f"Site {i} has {prefix} code {i * 7 + 3}."}
        if topic:
            row["topic"] = topic
        rows.append(row)
    return rows


# ------------------------------------------------------------------ a registered project

PREPARED = "tiny"  # the model name the shared versions are built under


def build_exported(tmp_path_factory, tiny_base: Path) -> Path:
    """A project folder holding tiny v1 and v2 (v2 trained on v1), both exported and verified.

    Built once per session (the first module that asks builds it) under its own home; the
    environment is restored afterwards, so the autouse isolated_home of each test is untouched.
    """
    root = tmp_path_factory.getbasetemp() / "loraship-exported"
    project = root / "project"
    if (root / "done").exists():
        return project
    shutil.rmtree(root, ignore_errors=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LORASHIP_HOME", str(project / "runs"))
        mp.setenv("LORASHIP_PROJECT", str(project))
        mp.delenv("LORASHIP_MODEL", raising=False)
        _write_project(project, tiny_base)
        cfg = pipeline.load_config(PREPARED)
        for batch in ("alpha", "beta"):
            rows = write_jsonl(root / f"{batch}.jsonl", qa_rows(batch, 24, batch))
            pipeline.stage_data(PREPARED, cfg, [rows])
            pipeline.stage_train(PREPARED, cfg)
        for vid in ("v1", "v2"):
            _, rec = pipeline.stage_export(PREPARED, cfg, vid)
            assert rec["verified"], rec["verification_failures"]
    (root / "done").write_text("ok\n")
    return project


def _write_project(project: Path, tiny_base: Path) -> None:
    cfg = {
        "base_model": str(tiny_base),
        "train": {"num_train_epochs": 2, "max_seq_length": 128, "early_stopping_patience": 0,
                  "init_lora_nonzero": True},
        "export": {"max_kl": 5.0, "min_top1": 0.0},
        "compare": {"num_predict": 8, "max_test_rows": 3, "concurrency": 1},
        "ollama": {"num_ctx": 256},
    }
    (project / "train").mkdir(parents=True)
    (project / "train" / f"{PREPARED}.yaml").write_text(yaml.safe_dump(cfg), encoding="utf-8")
    qs = [{"id": f"q{i}", "question": f"What is the alpha code of site {i}?",
           "reference": f"Site {i} has alpha code {i * 7 + 3}.", "knowledge": "old" if i % 2 else "new",
           "domain": "alpha"} for i in range(6)]
    qdir = project / "ollama" / "questions"
    qdir.mkdir(parents=True)
    (qdir / "default.yaml").write_text(yaml.safe_dump({"name": "tiny", "version": 1, "questions": qs}),
                                       encoding="utf-8")


@dataclass
class Server:
    url: str
    double: Any = None  # the OllamaDouble, or None for a real server

    def client(self):
        import ollama

        return ollama.Client(host=self.url)

    def tags(self) -> dict[str, str]:
        return {m.model: m.digest for m in self.client().list().models}

    def need_double(self, why: str) -> Any:
        if self.double is None:
            pytest.skip(f"needs the test double's fault hooks ({why}); OLLAMA_HOST points at a real server")
        return self.double

    def requests(self) -> list[tuple[str, str]]:
        return list(self.double.requests) if self.double else []


@dataclass
class Project:
    model: str
    home: Path
    server: Server
    cli_calls: list[str] = field(default_factory=list)

    def version(self, vid: str) -> versions.Version:
        return versions.get(self.model, vid)

    def cfg(self, **overrides: Any):
        return pipeline.load_config(self.model, None, overrides)

    def configure(self, section: str, **values: Any) -> None:
        """Edit train/<model>.yaml (text set with --set would be read as YAML first)."""
        path = paths.config_file(self.model)
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        raw.setdefault(section, {}).update(values)
        path.write_text(yaml.safe_dump(raw), encoding="utf-8")

    def register(self, vid: str, **kw: Any) -> dict:
        return pipeline.stage_register(self.model, self.cfg(), vid, **kw)[1]

    def tag(self, vid: str) -> str:
        return f"{self.model}:{vid}"


def cli_run(*args: str, code: int = 0) -> str:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == code, f"loraship {' '.join(args)} exited {result.exit_code}:\n{result.output}"
    return result.output


def error_line(output: str) -> str:
    lines = [ln for ln in output.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1, output
    return lines[0]


class TableBackend:
    """A compare backend that answers from a table {tag: {question: answer}}: no server, no model."""

    name = "table"

    def __init__(self, answers: dict[str, dict[str, str]], digest: str | None = None):
        self.answers, self.digest = answers, digest

    def served_digest(self, c) -> str | None:
        return self.digest

    def answer(self, c, messages, options) -> str:
        return self.answers.get(c.tag, {}).get(messages[-1]["content"], "")
