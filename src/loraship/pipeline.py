"""One readable pipeline: each stage resolves versions, holds the model lock, calls one stage module,
and records the result in the manifest. The CLI calls these; so do tests and `make demo`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from loraship import config as config_mod
from loraship import paths
from loraship.config import Config
from loraship.errors import VersionError
from loraship.store import manifest, versions
from loraship.store.hashing import sha256_file
from loraship.store.versions import Version

Log = Callable[[str], None]


def load_config(model: str, config_path: Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    paths.validate_model_name(model)
    return config_mod.load(config_path or paths.config_file(model), overrides)


def _choose_parent(model: str, from_ref: str | None, fresh: bool) -> Version | None:
    if fresh:
        return None
    if from_ref:
        parent = versions.get(model, from_ref)
    else:
        state = versions.read_state(model)
        pointer = state.get("next_parent")
        parent = versions.get(model, pointer) if pointer else versions.newest_with_stage(model, "train")
        newest = versions.list_versions(model)
        if newest and not newest[-1].stage("train"):
            raise VersionError(
                f"{model} {newest[-1].id} has data but is not trained: run `loraship train --model {model}` "
                "(or branch with --from vK / --fresh)"
            )
    if parent is not None and not parent.stage("train"):
        raise VersionError(f"{model} {parent.id} is not trained, so it cannot be a parent: train it first")
    return parent


def stage_data(model: str, cfg: Config, files: list[Path], *, from_ref: str | None = None, fresh: bool = False,
               strict: bool = True, warn: Log = lambda s: None, feedback: list[Path] = ()) -> Version:
    from loraship.data import prepare as data

    with versions.model_lock(model):
        versions.sweep_temp(model)
        parent = _choose_parent(model, from_ref, fresh)
        ancestry = {v.id for v in versions.lineage(parent)} if parent else set()
        earlier = [data.EarlierVersion(v.id, v.path / paths.DATA_DIR, v.id in ancestry)
                   for v in versions.list_versions(model) if v.stage("data")]

        def build(tmp: Path, m: dict) -> None:
            summary = data.prepare(files, earlier, cfg.data, tmp / paths.DATA_DIR, version_id=m["id"],
                                   strict=strict, warn=warn, feedback_files=list(feedback), model=model)
            m["stages"]["data"] = summary
            m["config"] = cfg.to_dict()
            m["replay_ratio"] = summary["replay_ratio"]

        version = versions.create(model, parent.id if parent else None, build)
        state = versions.read_state(model)
        if state.get("next_parent"):
            state["next_parent"] = None  # a rollback pointer is used once
            versions.write_state(model, state)
        return version


def stage_train(model: str, cfg: Config, ref: str | None = None, *, resume: bool = False, log: Log = lambda s: None,
                progress: Callable[[int, int, dict], None] | None = None) -> Version:
    from loraship.train import lora as train

    version = versions.get(model, ref)
    if not train.is_main_process():
        # Under accelerate/torchrun only rank 0 holds the lock and writes; the others just train.
        train.train_version(cfg, version, resume=resume, log=log, progress=progress)
        return version
    with versions.model_lock(model):
        record = train.train_version(cfg, version, resume=resume, log=log, progress=progress)

        def change(m: dict) -> None:
            m["stages"]["train"] = record
            m["strategy"] = record["strategy"]
            m["config"] = cfg.to_dict()

        manifest.update(version.path, change)
    return version


def stage_export(model: str, cfg: Config, ref: str | None = None, **kw: Any) -> tuple[Version, dict]:
    from loraship.export import pipeline as export

    version = versions.get(model, ref)
    with versions.model_lock(model):
        return version, export.export_version(cfg, version, **kw)


def stage_verify(model: str, ref: str | None = None) -> tuple[Version, dict]:
    from loraship.export import pipeline as export

    version = versions.get(model, ref)
    return version, export.verify_version(version)


def stage_register(model: str, cfg: Config, ref: str | None = None, **kw: Any) -> tuple[Version, dict]:
    from loraship.serve import registry

    version = versions.get(model, ref)
    with versions.model_lock(model):
        return version, registry.register_version(cfg, version, **kw)


def parse_tag(tag: str) -> tuple[str, str]:
    """(model, vN) of `mining:v2` or its full Ollama form `registry.ollama.ai/library/mining:v2`."""
    from loraship.serve.names import parse_version_tag

    return parse_version_tag(tag)


def stage_compare(tags: list[str], cfg: Config, *, backend_name: str = "ollama", questions_file: Path | None = None,
                  progress: Callable[[int, int], None] | None = None, retrieval: bool = False,
                  log: Log = lambda s: None) -> tuple[Version, dict, dict[str, Path]]:
    from loraship.data import prepare as data
    from loraship.evaluate import arms, backends, compare, report

    pairs = [parse_tag(t) for t in tags]
    models = {m for m, _ in pairs}
    if len(models) != 1:
        raise VersionError(f"compare tags of one model at a time (got {', '.join(sorted(models))})")
    model = models.pop()
    vs = sorted((versions.get(model, vid) for _, vid in pairs), key=lambda v: v.number)
    newest = vs[-1]
    candidates = []
    for v in vs:
        reg = v.stage("register") or {}
        exp = v.stage("export") or {}
        if backend_name == "ollama" and not reg:
            raise VersionError(f"{model}:{v.id} is not registered: run `loraship register --model {model} {v.id}`")
        gguf = v.path / next(iter(exp["ggufs"].values())) if exp else None
        if backend_name == "llama.cpp" and gguf is None:
            raise VersionError(f"{model}:{v.id} is not exported: run `loraship export --model {model} {v.id}`")
        expected = reg.get("digest") if backend_name == "ollama" else ("sha256:" + sha256_file(gguf))
        candidates.append(compare.Candidate(tag=f"{model}:{v.id}", version=v.id, parent=v.manifest.get("parent"),
                                            expected_digest=expected, gguf_path=gguf))
    qpath = questions_file or paths.questions_file(cfg.compare.questions)
    questions = compare.load_questions(qpath)
    data_dir = newest.path / paths.DATA_DIR
    questions += compare.questions_from_rows(data.load_rows(data_dir / "test.jsonl"), "new", f"test:{newest.id}",
                                             cfg.compare.max_test_rows, cfg.compare.seed)
    questions += compare.questions_from_rows(data.load_rows(data_dir / "old_test.jsonl"), "old", "test:ancestors",
                                             cfg.compare.max_test_rows, cfg.compare.seed)
    corpus: dict[str, list[str]] = {}
    for row in data.load_rows(data_dir / "incremental_replay_final.jsonl"):
        corpus.setdefault(row.get("topic") or "_all", []).append(" ".join(m["content"] for m in row["messages"]))
    if backend_name == "ollama":
        from loraship.serve.ollama_client import resolve_host

        backend: Any = backends.OllamaBackend(resolve_host(cfg.ollama.host), cfg.ollama.timeout_s)
    elif backend_name == "llama.cpp":
        backend = backends.LlamaCppBackend(n_ctx=cfg.ollama.num_ctx or 2048)
    else:
        raise VersionError(f"unknown backend {backend_name!r}: use ollama or llama.cpp")
    plan = None
    try:
        if retrieval or cfg.compare.retrieval or cfg.gate.min_gain_over_retrieval is not None:
            plan = arms.build_plan(cfg, vs, candidates, questions, backend_name, backend, log)
        result = compare.run_compare(candidates, questions, backend, cfg.compare, cfg.gate, domain_corpus=corpus,
                                     system=cfg.ollama.system, progress=progress, num_ctx=cfg.ollama.num_ctx,
                                     retrieval_plan=plan, served_temperature=cfg.ollama.temperature)
    finally:
        if plan:
            plan.close()
        close = getattr(backend, "close", None)
        if close:
            close()
    with versions.model_lock(model):
        out = report.write_reports(result, newest.path / paths.COMPARE_DIR)
        gate = result["gate"]
        record = {
            "tags": [c.tag for c in candidates], "backend": backend_name, "gate": gate,
            "digest": next(c["served_digest"] for c in result["candidates"] if c["version"] == newest.id),
            "report": f"{paths.COMPARE_DIR}/report.json", "report_sha256": sha256_file(out["json"]),
            "compared_at": manifest.now_iso(),
        }
        manifest.update(newest.path, lambda m: m["stages"].__setitem__("compare", record))
    return newest, result, out


def stage_promote(model: str, cfg: Config, ref: str, alias: str, *, force: bool = False,
                  reason: str | None = None, **kw: Any) -> dict:
    from loraship.release import promote

    version = versions.get(model, ref)
    with versions.model_lock(model):
        return promote.promote(cfg, version, alias, force=force, reason=reason, **kw)


def stage_rollback(model: str, cfg: Config, alias: str, to: str | None, **kw: Any) -> dict:
    from loraship.release import promote

    with versions.model_lock(model):
        return promote.rollback(cfg, model, alias, to, **kw)


def stage_publish(model: str, cfg: Config, ref: str | None = None, **kw: Any) -> tuple[Version, dict]:
    """Push a registered version (and an alias) to the configured registry; see release/publish.py."""
    from loraship.release import publish

    version = versions.get(model, ref)
    with versions.model_lock(model):
        return version, publish.publish(cfg, version, **kw)
