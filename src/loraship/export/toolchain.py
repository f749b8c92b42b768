"""llama.cpp's converter, provisioned from the llama-cpp-python sdist of the installed version.

The converter must run with the gguf-py of the same llama.cpp revision (PyPI's `gguf`
can be older and break it), and llama-cpp-python's sdist vendors exactly that tree.
So we extract `convert_hf_to_gguf.py`, `convert_lora_to_gguf.py`, `conversion/` and
`gguf-py/` from the sdist of the installed version, once, and run the converter in a
subprocess with that gguf-py first on its path. Quantization uses the compiled
library's `llama_model_quantize`, so no separate binary is needed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

from loraship import paths
from loraship.errors import ToolchainError

_MEMBERS = ("convert_hf_to_gguf.py", "convert_lora_to_gguf.py", "conversion/", "gguf-py/")
_COMPLETE = ".complete"


def llama_cpp_version() -> str:
    try:
        return metadata.version("llama-cpp-python")
    except metadata.PackageNotFoundError:
        raise ToolchainError(
            "llama-cpp-python is not installed: run `make setup` (or pip install -e '.[export]')"
        ) from None


def converter_dir(version: str | None = None) -> Path:
    return paths.tools_dir() / f"llama.cpp-{version or llama_cpp_version()}"


def is_provisioned(version: str | None = None) -> bool:
    return (converter_dir(version) / _COMPLETE).exists()


def download_sdist(version: str, dest: Path, log: Callable[[str], None]) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    name = f"llama_cpp_python-{version}.tar.gz"
    if (dest / name).exists():
        return dest / name
    log(f"downloading the llama-cpp-python {version} sdist (once; cached in {dest})")
    # --no-binary for this one package only: ":all:" would also build its build backends from source.
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", "llama-cpp-python",
           f"llama-cpp-python=={version}", "-d", str(dest)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or not (dest / name).exists():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise ToolchainError(f"could not download the llama-cpp-python {version} sdist: {tail[0]}")
    return dest / name


def _extract(sdist: Path, version: str, target: Path, folder: str, wanted: Callable[[str], bool],
             check: Callable[[Path], str | None]) -> None:
    """The members of vendor/llama.cpp/<folder> that `wanted` takes, into `target` atomically: a
    temporary folder, the completion marker written last, then one rename. `check` names what is missing."""
    prefix = f"llama_cpp_python-{version}/vendor/llama.cpp/{folder}"
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{target.name}-", dir=target.parent))
    try:
        with tarfile.open(sdist) as tar:
            members = []
            for m in tar.getmembers():
                rel = m.name[len(prefix):] if m.name.startswith(prefix) else None
                if rel and wanted(rel) and (m.isfile() or m.isdir()):
                    m.name = rel
                    members.append(m)
            if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4 / 3.12: refuse links and absolute paths
                tar.extractall(tmp, members=members, filter="data")
            else:
                tar.extractall(tmp, members=members)
        missing = check(tmp)
        if missing:
            raise ToolchainError(f"{sdist.name} lacks {missing}: this llama-cpp-python is too old")
        (tmp / _COMPLETE).write_text(version + "\n")
        tmp.chmod(0o755)  # mkdtemp makes 0700; a container running as another uid must read it
        shutil.rmtree(target, ignore_errors=True)
        os.rename(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _converter_members(rel: str) -> bool:
    return any(rel == s or rel.startswith(s) for s in _MEMBERS)


def _converter_missing(tmp: Path) -> str | None:
    return ", ".join(s for s in _MEMBERS if not (tmp / s.rstrip("/")).exists()) or None


def provision(log: Callable[[str], None] = lambda s: None) -> Path:
    """Make the converter available; a second call costs nothing."""
    version = llama_cpp_version()
    target = converter_dir(version)
    if is_provisioned(version):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    sdist = download_sdist(version, paths.tools_dir() / "sdist", log)
    _extract(sdist, version, target, "", _converter_members, _converter_missing)
    log(f"llama.cpp converter ready in {target}")
    return target


def require_converter() -> Path:
    if not is_provisioned():
        raise ToolchainError(
            f"llama.cpp converter is not provisioned in {converter_dir()}: run `make setup` "
            "(or `python build/provision_llamacpp.py`)"
        )
    return converter_dir()


def run_converter(script: str, args: list[str], log: Callable[[str], None] = lambda s: None,
                  log_file: Path | None = None) -> None:
    """Run convert_hf_to_gguf.py / convert_lora_to_gguf.py with the matching gguf-py first on the path."""
    root = require_converter()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(root / "gguf-py"), str(root), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    # The converter puts its own gguf-py on sys.path unless NO_LOCAL_GGUF is set.
    env.pop("NO_LOCAL_GGUF", None)
    proc = subprocess.run([sys.executable, str(root / script), *args], env=env, capture_output=True, text=True)
    if log_file is not None:  # the converter's chatter belongs in the version's log
        with open(log_file, "a", encoding="utf-8") as f:
            f.write(f"$ {script} {' '.join(args)}\n{proc.stdout or ''}{proc.stderr or ''}")
    else:
        for line in (proc.stderr or "").splitlines()[-5:]:
            log(line)
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr or proc.stdout or "").splitlines() if ln.strip()]
        reason = lines[-1] if lines else f"exit code {proc.returncode}"
        raise ToolchainError(f"llama.cpp {script} failed: {reason}")


def llama_models_dir(log: Callable[[str], None] = lambda s: None) -> Path:
    """llama.cpp's models/ folder from the cached sdist, once: its vocabulary GGUFs with their token
    test vectors and its real chat templates (the family fixtures are built from them)."""
    version = llama_cpp_version()
    target = paths.tools_dir() / f"llama.cpp-{version}-models"
    if (target / _COMPLETE).exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    sdist = download_sdist(version, paths.tools_dir() / "sdist", log)
    _extract(sdist, version, target, "models/", lambda rel: rel.startswith(("ggml-vocab-", "templates/")),
             lambda tmp: None if any(tmp.glob("ggml-vocab-*.gguf")) else "models/ggml-vocab-*.gguf")
    return target
