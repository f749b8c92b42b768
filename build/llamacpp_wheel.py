#!/usr/bin/env python3
"""Build llama-cpp-python once as a wheel that runs on every x86-64 CPU, and install it.

Why not `pip install llama-cpp-python`: the sdist compiles llama.cpp with GGML_NATIVE=ON
(-march=native), and pip caches that wheel under its version alone, so a wheel built on a
Xeon with AVX-512 and AMX reaches CPUs that lack them (SIGILL), through a shared pip
cache, a CI cache or an image layer. And GCC 11/12 miscompile llama.cpp's AMX code
(dead-store elimination drops the tile configuration: llama.cpp#20824).

So this script builds with runtime CPU dispatch (GGML_BACKEND_DL + GGML_CPU_ALL_VARIANTS:
one CPU backend per instruction-set level, chosen when loaded; loraship's
export/llama_runtime.py loads it), with -fno-dse where the compiler is GCC older than 13,
into a wheelhouse keyed by version and flags (never pip's cache), and installs that wheel.
The sdist is the one the lock names, checked against the lock's sha256.

Usage: python build/llamacpp_wheel.py [--lock build/requirements.lock] [--no-install]
Env:   LORASHIP_WHEELHOUSE (default ~/.cache/loraship/wheels), CMAKE_ARGS (appended: e.g.
       -DGGML_CUDA=ON for a CUDA build), CMAKE_BUILD_PARALLEL_LEVEL (default: all cores).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "llama-cpp-python"

# Runtime dispatch, no -march=native, and no multimodal library (loraship has no use for it;
# it is a third of the compile). The install folders keep every library inside the package
# (llama.cpp's defaults would scatter copies into site-packages/lib, /bin and /include).
BASE_FLAGS = [
    "-DGGML_NATIVE=OFF",
    "-DGGML_BACKEND_DL=ON",
    "-DGGML_CPU_ALL_VARIANTS=ON",
    "-DLLAVA_BUILD=OFF",
    "-DCMAKE_INSTALL_BINDIR=llama_cpp/lib",
    "-DCMAKE_INSTALL_LIBDIR=llama_cpp/lib",
    "-DCMAKE_INSTALL_INCLUDEDIR=llama_cpp/include",
]
NO_DSE = ["-DCMAKE_C_FLAGS=-fno-dse", "-DCMAKE_CXX_FLAGS=-fno-dse"]


def cmake_flags(compiler: str, version: str, extra: str = "") -> list[str]:
    """The CMake flags for this compiler (name as `cc --version` says it, and its version)."""
    flags = list(BASE_FLAGS)
    major = int(re.match(r"\d+", version).group()) if re.match(r"\d+", version) else 0
    if compiler == "gcc" and major < 13:
        flags += NO_DSE
    return flags + shlex.split(extra)


def detect_compiler() -> tuple[str, str]:
    """('gcc' | 'clang' | 'other', version) of the C compiler CMake will pick (CC, else cc)."""
    cc = os.environ.get("CC", "cc")
    try:
        banner = subprocess.run([cc, "--version"], capture_output=True, text=True, check=True).stdout
        version = subprocess.run([cc, "-dumpversion"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        sys.exit(f"error: no C compiler ({cc}) to build llama.cpp: install build-essential (Debian) or set CC")
    name = "clang" if "clang" in banner.lower() else "gcc" if re.search(r"\bgcc\b|\bGCC\b|Free Software", banner) else "other"
    return name, version


def cache_key(version: str, flags: list[str], compiler: tuple[str, str]) -> str:
    """Version, flags, compiler and C library: a wheel reused from another machine's wheelhouse
    (a build seeds the image's from the host's) must come from the same toolchain and a glibc no
    newer than the one that loads it, and the same glibc is the simple, safe rule."""
    libc = "-".join(platform.libc_ver())
    return hashlib.sha256(json.dumps([version, flags, list(compiler), libc]).encode()).hexdigest()[:16]


def locked(lock: Path) -> tuple[str, list[str]]:
    """(version, sha256 hashes) of llama-cpp-python in the lock file."""
    text = lock.read_text(encoding="utf-8")
    m = re.search(r"^llama-cpp-python==(\S+)((?:\s*\\\s*--hash=sha256:[0-9a-f]{64})+)", text, re.M)
    if not m:
        sys.exit(f"error: {lock} does not pin llama-cpp-python with a hash: run `make lock`")
    return m.group(1), re.findall(r"sha256:([0-9a-f]{64})", m.group(2))


def wheelhouse() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "loraship" / "wheels"
    return Path(os.environ.get("LORASHIP_WHEELHOUSE") or default)


def build(version: str, hashes: list[str], flags: list[str], dest: Path) -> Path:
    """Download the locked sdist (hash-checked), build the wheel into a temp folder, move it into dest."""
    with tempfile.TemporaryDirectory(prefix="llamacpp-build-") as tmp:
        req = Path(tmp) / "req.txt"
        req.write_text(f"{PACKAGE}=={version} " + " ".join(f"--hash=sha256:{h}" for h in hashes) + "\n")
        env = dict(os.environ, CMAKE_ARGS=" ".join(flags))
        env.setdefault("CMAKE_BUILD_PARALLEL_LEVEL", str(os.cpu_count() or 1))
        print(f"building {PACKAGE} {version} for every x86-64 CPU (once; 10-25 min on 2 cores)\n"
              f"  CMAKE_ARGS={env['CMAKE_ARGS']}", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-cache-dir", "--require-hashes",
                        "--no-binary", PACKAGE, "-w", str(Path(tmp) / "out"), "-r", str(req)],
                       env=env, check=True)
        wheel = next((Path(tmp) / "out").glob("llama_cpp_python-*.whl"))
        dest.mkdir(parents=True, exist_ok=True)
        staged = dest / (".tmp-" + wheel.name)
        shutil.copy2(wheel, staged)
        os.replace(staged, dest / wheel.name)  # a killed build leaves no wheel under its final name
        (dest / "build-info.json").write_text(json.dumps({"version": version, "cmake_args": flags}, indent=1))
        return dest / wheel.name


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lock", type=Path, default=ROOT / "build" / "requirements.lock")
    ap.add_argument("--no-install", action="store_true", help="build (or find) the wheel, print its path")
    args = ap.parse_args()
    version, hashes = locked(args.lock)
    compiler = detect_compiler()
    flags = cmake_flags(*compiler, os.environ.get("CMAKE_ARGS", ""))
    dest = wheelhouse() / f"{PACKAGE}-{version}-{cache_key(version, flags, compiler)}"
    wheel = next(dest.glob("llama_cpp_python-*.whl"), None) if dest.is_dir() else None
    try:
        wheel = wheel or build(version, hashes, flags, dest)
    except subprocess.CalledProcessError as e:
        print(f"error: building {PACKAGE} {version} failed (exit {e.returncode}); the log is above", file=sys.stderr)
        return 1
    if not args.no_install:
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--force-reinstall",
                        str(wheel)], check=True)
    print(wheel)
    return 0


if __name__ == "__main__":
    sys.exit(main())
