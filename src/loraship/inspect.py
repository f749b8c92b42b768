"""Read-only views for people: the versions table, one version's story, and `doctor`."""

from __future__ import annotations

import importlib.util
from importlib import metadata
from typing import Any

from loraship import paths
from loraship.export import toolchain
from loraship.release.promote import aliases
from loraship.store import versions


def versions_table(model: str) -> list[dict[str, Any]]:
    by_version: dict[str, list[str]] = {}
    for alias, vid in aliases(model).items():
        by_version.setdefault(vid, []).append(alias)
    rows = []
    for v in versions.list_versions(model):
        m = v.manifest
        stages = m.get("stages", {})
        data = stages.get("data", {})
        gate = (stages.get("compare") or {}).get("gate")
        tags = [stages["register"]["tag"]] if stages.get("register") else []
        tags += [f"{model}:{a}" for a in sorted(by_version.get(v.id, []))]
        tags += sorted(stages.get("publish") or {})  # registry names other machines pull
        rows.append({
            "id": v.id,
            "parent": m.get("parent") or "-",
            "created": m.get("created_at", "")[:19].replace("T", " "),
            "dataset": f"{data.get('dataset_sha256', '')[:8]} ({data.get('counts', {}).get('final_train', '?')} train)",
            "stages": ",".join(s for s in ("data", "train", "export", "register", "compare", "publish") if s in stages),
            "gate": "-" if gate is None else _verdict(gate).lower().replace("fail", "FAIL"),
            "tags": " ".join(tags) or "-",
        })
    return rows


def _verdict(gate: dict) -> str:
    """PASS | FAIL | INCONCLUSIVE; gates recorded before INCONCLUSIVE existed carry `passed` only."""
    return gate.get("verdict") or ("PASS" if gate.get("passed") else "FAIL")


def describe_version(v: versions.Version) -> str:
    m = v.manifest
    st = m.get("stages", {})
    chain = " -> ".join(x.id for x in versions.lineage(v))
    out = [f"{v.model} {v.id}  ({v.path})", f"  lineage:   {chain}", f"  created:   {m.get('created_at')}"]
    if "data" in st:
        c = st["data"]["counts"]
        out.append(f"  data:      {c.get('new_kept')} new, {c.get('replayed')} replayed, {c.get('train')}/{c.get('val')}/"
                   f"{c.get('test')} train/val/test, seed {st['data'].get('seed')}, sha256 {st['data'].get('dataset_sha256', '')[:12]}")
    if "train" in st:
        t = st["train"]
        hp = t["hyperparameters"]
        out.append(f"  train:     {t['strategy']} on {t['parent_adapter'] or 'base'}; r={hp['lora_r']} alpha={hp['lora_alpha']} "
                   f"lr={hp['learning_rate']} epochs={hp['num_train_epochs']} ({t['epochs_run']} run); "
                   f"{t['device']['device']}/{t['device']['dtype']}; {t['tokens_per_s']} tok/s; best val {t['best_eval_loss']}")
        out.append(f"  base:      {t['base']['path']} (sha256 {t['base']['sha256'][:12]})")
    if "export" in st:
        e = st["export"]
        for q, p in e["ggufs"].items():
            qq = e["checks"]["quant"][q]
            out.append(f"  export:    {p}  KL {qq['mean_kl']:.4f}  top-1 {qq['top1_agreement']:.1%}  verified {e['verified']}")
    if "register" in st:
        r = st["register"]
        out.append(f"  ollama:    {r['tag']} on {r['host']} digest {r['digest'][:19]}")
    for name, pub in sorted((st.get("publish") or {}).items()):
        forced = f"  (gate overridden: {pub['override_reason']})" if pub.get("override_reason") else ""
        out.append(f"  published: {name}  model layer {pub['model_layer'][:19]}  at {pub['published_at']}{forced}")
    if "compare" in st:
        g = st["compare"]["gate"]
        out.append(f"  gate:      {_verdict(g)} - {g['reason']}  ({st['compare']['report']})")
    for name, art in sorted(m.get("artifacts", {}).items()):
        out.append(f"  artifact:  {name}  {art['bytes']} bytes  sha256 {art['sha256'][:12]}")
    return "\n".join(out)


def _pkg(name: str) -> tuple[bool, str]:
    try:
        return True, metadata.version(name)
    except metadata.PackageNotFoundError:
        return False, "not installed"


def doctor_report(provision: bool = False) -> list[tuple[str, bool | None, str]]:
    rows: list[tuple[str, bool | None, str]] = []
    for pkg in ("torch", "transformers", "peft", "accelerate", "llama-cpp-python", "ollama"):
        ok, ver = _pkg(pkg)
        rows.append((pkg, ok, ver))
    if importlib.util.find_spec("torch"):
        from loraship.train.device import choose

        d = choose(None)
        rows.append(("training device", True, d.reason))
    rows.append(_cpu_row())
    rows.append(_llama_row())
    try:
        if provision:
            toolchain.provision()
        prov = toolchain.is_provisioned()
        rows.append(("llama.cpp converter", prov, str(toolchain.converter_dir()) if prov else
                     "not provisioned: run `make setup` or `loraship doctor --provision`"))
    except Exception as e:  # doctor reports, it never fails
        rows.append(("llama.cpp converter", False, str(e)))
    rows.append(("runs folder", True, str(paths.runs_root())))
    rows.append(_ollama_row())
    return rows


# The instruction sets that decide which llama.cpp CPU variant and which training dtype fit.
_CPU_FEATURES = ("avx", "avx2", "fma", "f16c", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")


def _cpu_row() -> tuple[str, bool | None, str]:
    from loraship.train.device import cpu_flags

    flags = cpu_flags()
    if not flags:
        return ("cpu features", None, "not readable here (no /proc/cpuinfo)")
    have = [f for f in _CPU_FEATURES if f in flags]
    return ("cpu features", True, " ".join(have) or "none of " + " ".join(_CPU_FEATURES))


def _llama_row() -> tuple[str, bool | None, str]:
    from loraship.export import llama_runtime

    try:
        return ("llama.cpp backend", True, llama_runtime.load().describe())
    except Exception as e:  # doctor reports, it never fails
        return ("llama.cpp backend", False, str(e))


def _ollama_row() -> tuple[str, bool | None, str]:
    from loraship.serve.ollama_client import client, resolve_host

    host = "OLLAMA_HOST"
    try:
        host = resolve_host()
        n = len(client(host, timeout=3).list().models)
        return ("ollama server", True, f"{host} answers ({n} models)")
    except Exception as e:
        return ("ollama server", None, f"{host} does not answer ({type(e).__name__}); `make ollama-up` starts one")
