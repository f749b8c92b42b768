"""Load llama.cpp (llama-cpp-python) with the best CPU kernels the running machine has.

`make setup` builds llama-cpp-python for runtime CPU dispatch (`GGML_BACKEND_DL` +
`GGML_CPU_ALL_VARIANTS`, see build/llamacpp_wheel.py): one wheel carries a CPU backend
per instruction-set level (x64, haswell, skylakex, zen4, sapphirerapids, ...) as
`libggml-cpu-<variant>.so`, and ggml picks the best one this CPU supports when it is
loaded. llama-cpp-python itself never loads them (llama.cpp only searches the Python
executable's folder and the working directory), so every llama.cpp use in loraship goes
through `load()` first: it asks the same `libggml.so.0` that `libllama` links (the
wheel's separate `libggml.so` copy is a second library with an empty registry) to load
the variants from where the wheel put them.

A build without dispatch (a CPU backend compiled in) has its backend registered already
and is used as it is.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import os
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loraship.errors import ToolchainError

ENV_BACKEND_DIR = "LORASHIP_GGML_BACKEND_DIR"  # where the variants are, when not beside the wheel's libs
ENV_ALLOW_AMX = "LORASHIP_LLAMA_AMX"  # "1": let llama.cpp use its AMX variant (see best_variant)
_VARIANT_PREFIX = "libggml-cpu-"
# ggml's CPU variants whose kernels use AMX tiles (GGML_CPU_ALL_VARIANTS).
AMX_VARIANTS = ("sapphirerapids",)


@dataclass(frozen=True)
class Runtime:
    module: Any  # the llama_cpp package
    dispatch: bool  # runtime CPU dispatch (variants loaded from backend_dir)
    backend_dir: Path | None
    cpu_variant: str | None  # "zen4", "haswell", ...; None when the CPU backend is compiled in
    variants: list[str] = field(default_factory=list)  # every variant the wheel carries

    def describe(self) -> str:
        if not self.dispatch:
            return "CPU backend compiled in (no runtime dispatch)"
        return f"CPU variant {self.cpu_variant or 'unknown'} of {len(self.variants)} ({self.backend_dir})"


_lock = threading.Lock()
_runtime: Runtime | None = None


def load() -> Runtime:
    """Import llama_cpp and make sure a CPU backend is loaded; idempotent and thread-safe."""
    global _runtime
    with _lock:
        if _runtime is None:
            _runtime = _load()
        return _runtime


def llama_cpp() -> Any:
    """The llama_cpp module, ready to use (its CPU backend loaded)."""
    return load().module


def _load() -> Runtime:
    try:
        import llama_cpp as module
    except ImportError as e:
        raise ToolchainError(f"llama-cpp-python is not installed or does not load ({e}): run `make setup`") from None
    lib_dir = library_dir(module)
    ggml = _open_ggml(lib_dir)
    if ggml.ggml_backend_reg_count() > 0:
        return Runtime(module, dispatch=False, backend_dir=None, cpu_variant=None)
    searched = backend_dirs(lib_dir)
    found = [d for d in searched if variants_in(d)]
    if not found:
        raise ToolchainError(
            f"llama.cpp has no CPU backend: no {_VARIANT_PREFIX}*.so in {', '.join(map(str, searched))}; "
            f"reinstall it with `make setup`, or point {ENV_BACKEND_DIR} at the folder that holds them"
        )
    backend_dir = found[0]
    # ggml announces each load on stderr, from C and through llama-cpp-python's log callback
    # (Python's sys.stderr); keep it for errors only.
    with captured_stderr() as said, contextlib.redirect_stderr(io.StringIO()):
        cpu = best_variant(backend_dir, allow_amx=os.environ.get(ENV_ALLOW_AMX) == "1")
        if cpu is None:
            ggml.ggml_backend_load_all_from_path(str(backend_dir).encode())
        else:  # the chosen CPU variant, then every other backend the wheel carries (CUDA, ...)
            for lib in [cpu, *other_backends(backend_dir)]:
                ggml.ggml_backend_load(str(lib).encode())
    if ggml.ggml_backend_reg_count() == 0:
        detail = " ".join(said()[-1:]) or "no message"
        raise ToolchainError(
            f"none of the llama.cpp CPU variants in {backend_dir} loads on this CPU "
            f"({', '.join(variants_in(backend_dir))}; ggml: {detail}): rebuild with `make setup`"
        )
    return Runtime(module, dispatch=True, backend_dir=backend_dir, cpu_variant=loaded_variant(),
                   variants=variants_in(backend_dir))


@contextlib.contextmanager
def output_to(log_file: Path):
    """Append everything llama.cpp prints during the block to `log_file`, not the console.

    llama.cpp writes from C (file descriptor 2) and through llama-cpp-python's log callback
    (Python's sys.stderr); both go to the file. Per-tensor quantization notes, for one, run
    to hundreds of lines that belong in the version's log, not on the screen.
    """
    py, said = io.StringIO(), list
    try:
        with captured_stderr() as said, contextlib.redirect_stderr(py):
            yield
    finally:  # a failed call's output is what its log is for
        with open(log_file, "a", encoding="utf-8") as f:
            f.write(py.getvalue())
            f.writelines(line + "\n" for line in said())


@contextlib.contextmanager
def captured_stderr():
    """Send file descriptor 2 to a temp file (C code writes there, not to sys.stderr)."""
    lines: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield lambda: lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            lines.extend(tmp.read().decode(errors="replace").splitlines())


def library_dir(module: Any) -> Path:
    """Where llama-cpp-python keeps its shared libraries."""
    return Path(module.__file__).parent / "lib"


def find_library(lib_dir: Path, stem: str) -> Path | None:
    """lib<stem> in `lib_dir` under the name libllama links it by (the soname first), or None."""
    names = [f"lib{stem}.so.0", f"lib{stem}.so", f"lib{stem}.dylib", f"{stem}.dll"]
    return next((lib_dir / n for n in names if (lib_dir / n).exists()), None)


def _open_ggml(lib_dir: Path) -> Any:
    """The ggml library libllama is linked against (its soname), with the two calls typed."""
    path = find_library(lib_dir, "ggml")
    if path is None:
        raise ToolchainError(f"llama-cpp-python's libggml is missing from {lib_dir}: reinstall it with `make setup`")
    ggml = ctypes.CDLL(str(path))
    ggml.ggml_backend_reg_count.restype = ctypes.c_size_t
    ggml.ggml_backend_reg_count.argtypes = []
    ggml.ggml_backend_load_all_from_path.restype = None
    ggml.ggml_backend_load_all_from_path.argtypes = [ctypes.c_char_p]
    ggml.ggml_backend_load.restype = ctypes.c_void_p
    ggml.ggml_backend_load.argtypes = [ctypes.c_char_p]
    return ggml


def variant_score(lib: Path) -> int:
    """ggml's own score of a CPU variant for this CPU (0: it cannot run here), as
    ggml_backend_load_best asks it."""
    import _ctypes

    try:
        handle = ctypes.CDLL(str(lib))
    except OSError:
        return 0
    try:
        score = handle.ggml_backend_score
        score.restype, score.argtypes = ctypes.c_int, []
        return int(score())
    except AttributeError:
        return 0
    finally:  # unmapped again: loaded_variant() reads the one ggml keeps from /proc/self/maps
        _ctypes.dlclose(handle._handle)


def best_variant(folder: Path, allow_amx: bool = False) -> Path | None:
    """The CPU variant to load, or None to let ggml choose (when it would choose as we do).

    ggml's AMX kernels configure the tiles once per thread and remember it (a thread_local flag);
    PyTorch's oneDNN runs its bf16 matmuls on AMX on the same OpenMP threads and releases the tiles
    after each. A process that runs llama.cpp, then a bf16 training step, then llama.cpp again (the
    demo, the tests, `bench`) then dies on `tilezero` with SIGILL (seen on a Xeon with AMX). So the
    best variant without AMX is loaded unless LORASHIP_LLAMA_AMX=1: it still has AVX-512, VNNI and
    BF16; what it lacks is AMX's faster prompt processing of quantized weights.
    """
    libs = {p: variant_score(p) for p in folder.glob(f"{_VARIANT_PREFIX}*")
            if p.suffix in (".so", ".dylib", ".dll")}
    ranked = sorted((p for p, sc in libs.items() if sc > 0), key=lambda p: -libs[p])
    if not ranked or allow_amx or _variant_name(ranked[0]) not in AMX_VARIANTS:
        return None
    return next((p for p in ranked if _variant_name(p) not in AMX_VARIANTS), None)


def _variant_name(lib: Path) -> str:
    return lib.name[len(_VARIANT_PREFIX):].split(".")[0]


def other_backends(folder: Path) -> list[Path]:
    """Backends beside the CPU variants (libggml-cuda.so in a CUDA build)."""
    return sorted(p for p in folder.glob("libggml-*.so")
                  if not p.name.startswith((_VARIANT_PREFIX, "libggml-base")))


def backend_dirs(lib_dir: Path) -> list[Path]:
    """Where a wheel may have put the variants: an explicit folder first, then beside the
    libraries (our build), then site-packages/bin (llama.cpp's default install folder)."""
    dirs = [Path(os.environ[ENV_BACKEND_DIR])] if os.environ.get(ENV_BACKEND_DIR) else []
    return dirs + [lib_dir, lib_dir.parent.parent / "bin"]


def variants_in(folder: Path) -> list[str]:
    if not folder.is_dir():
        return []
    return sorted(p.name[len(_VARIANT_PREFIX):].split(".")[0] for p in folder.glob(f"{_VARIANT_PREFIX}*")
                  if p.suffix in (".so", ".dylib", ".dll"))


def loaded_variant(maps: str | None = None) -> str | None:
    """The CPU variant this process has mapped, read from /proc/self/maps (Linux)."""
    if maps is None:
        if not sys.platform.startswith("linux"):
            return None
        try:
            maps = Path("/proc/self/maps").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return None
    for line in maps.splitlines():
        name = line.rsplit("/", 1)[-1]
        if name.startswith(_VARIANT_PREFIX):
            return name[len(_VARIANT_PREFIX):].split(".")[0]
    return None
