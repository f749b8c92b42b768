"""llama.cpp runs on the CPU at hand, with the best kernels it has, from a build that travels."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from loraship.export import llama_runtime

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "build"))
import llamacpp_wheel  # noqa: E402


def test_the_build_dispatches_at_runtime_and_never_targets_the_builder():
    flags = llamacpp_wheel.cmake_flags("gcc", "14.2.0")
    assert "-DGGML_NATIVE=OFF" in flags
    assert "-DGGML_BACKEND_DL=ON" in flags and "-DGGML_CPU_ALL_VARIANTS=ON" in flags
    assert not any("march=native" in f for f in flags)
    assert not any("fno-dse" in f for f in flags)  # GCC 13+ compiles the AMX tile config right


@pytest.mark.parametrize("compiler,version", [("gcc", "12.2.0"), ("gcc", "11.4.0")])
def test_gcc_before_13_gets_no_dead_store_elimination(compiler, version):
    """GCC 11/12 drop the stores that fill the AMX tile config (llama.cpp#20824): -fno-dse keeps them."""
    flags = llamacpp_wheel.cmake_flags(compiler, version)
    assert "-DCMAKE_C_FLAGS=-fno-dse" in flags and "-DCMAKE_CXX_FLAGS=-fno-dse" in flags


def test_clang_needs_no_workaround():
    assert not any("fno-dse" in f for f in llamacpp_wheel.cmake_flags("clang", "14.0.6"))


def test_the_wheel_cache_key_changes_with_the_flags_the_version_the_compiler_and_the_libc(monkeypatch):
    def key(version="0.3.36", compiler=("gcc", "12.2.0")):
        return llamacpp_wheel.cache_key(version, llamacpp_wheel.cmake_flags(*compiler), compiler)

    a = key()
    assert a == key()
    assert a != key(compiler=("gcc", "13.1.0")) and a != key(version="0.3.35")
    assert a != key(compiler=("gcc", "12.3.0"))  # same flags, another compiler build
    # a host wheelhouse seeds the image's build: a wheel linked against a newer glibc must not match
    monkeypatch.setattr(llamacpp_wheel.platform, "libc_ver", lambda: ("glibc", "2.39"))
    assert a != key()


def test_the_installed_build_carries_every_x86_variant_and_loads_one():
    rt = llama_runtime.load()
    assert rt.dispatch, "llama-cpp-python was not built for runtime dispatch: run `make setup`"
    assert {"x64", "haswell", "skylakex", "zen4", "sapphirerapids"} <= set(rt.variants)
    assert rt.cpu_variant in rt.variants


def test_a_decode_works_on_this_cpu(smollm2_gguf):
    """The test that crashed on AMX machines with a native GCC 12 build: load and generate."""
    llama_cpp = llama_runtime.llama_cpp()
    llm = llama_cpp.Llama(model_path=str(smollm2_gguf), n_ctx=256, verbose=False, seed=0)
    try:
        out = llm.create_completion("The capital of France is", max_tokens=8, temperature=0.0)
    finally:
        llm.close()
    assert "Paris" in out["choices"][0]["text"]  # same on every variant tried (x64, haswell, zen4)


_LOGITS = """
import os, sys, shutil, tempfile, pathlib
import numpy as np
import llama_cpp
variant, gguf, out = sys.argv[1:4]
folder = tempfile.mkdtemp()
shutil.copy(pathlib.Path(llama_cpp.__file__).parent / "lib" / f"libggml-cpu-{variant}.so", folder)
os.environ["LORASHIP_GGML_BACKEND_DIR"] = folder
from loraship.export import llama_runtime
rt = llama_runtime.load()
assert rt.cpu_variant == variant, rt.describe()
llm = rt.module.Llama(model_path=gguf, n_ctx=256, verbose=False, logits_all=True)
llm.eval(llm.tokenize(b"The capital of France is Paris. The capital of Germany is", add_bos=True))
np.save(out, np.array(llm.scores[: llm.n_tokens]))
llm.close()
"""


def _variant_logits(variant: str, gguf, tmp_path):
    import numpy as np

    out = tmp_path / f"{variant}.npy"
    proc = subprocess.run([sys.executable, "-c", _LOGITS, variant, str(gguf), str(out)], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, f"the {variant} variant failed on this CPU:\n{proc.stderr[-2000:]}"
    return np.load(out)


def test_the_chosen_variant_computes_what_the_plain_c_variant_computes(smollm2_gguf, tmp_path):
    """The SIMD (or AMX) kernels this CPU gets agree with the portable x64 build: same next token,
    next-token distributions within KL 0.05 (seen: 0.005-0.008 between variants). A miscompiled
    kernel, such as GCC 12's AMX tile config, gives garbage or crashes here."""
    import numpy as np

    best = llama_runtime.load().cpu_variant
    other = "x64" if best != "x64" else "sse42"
    a, b = _variant_logits(best, smollm2_gguf, tmp_path), _variant_logits(other, smollm2_gguf, tmp_path)

    def log_softmax(x):
        x = x - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))

    pa, pb = log_softmax(a.astype(np.float64)), log_softmax(b.astype(np.float64))
    kl = (np.exp(pa) * (pa - pb)).sum(-1)
    assert kl.max() < 0.05, f"{best} vs {other}: KL up to {kl.max():.3f}"
    assert (a.argmax(-1) == b.argmax(-1)).mean() >= 0.9


def test_variants_are_found_where_wheels_put_them(tmp_path, monkeypatch):
    lib = tmp_path / "site-packages" / "llama_cpp" / "lib"
    lib.mkdir(parents=True)
    bin_dir = tmp_path / "site-packages" / "bin"
    bin_dir.mkdir()
    (bin_dir / "libggml-cpu-haswell.so").write_bytes(b"")
    (bin_dir / "libggml-cpu-x64.so").write_bytes(b"")
    monkeypatch.delenv(llama_runtime.ENV_BACKEND_DIR, raising=False)
    dirs = llama_runtime.backend_dirs(lib)
    assert dirs == [lib, bin_dir]
    assert llama_runtime.variants_in(bin_dir) == ["haswell", "x64"]
    monkeypatch.setenv(llama_runtime.ENV_BACKEND_DIR, str(tmp_path / "elsewhere"))
    assert llama_runtime.backend_dirs(lib)[0] == tmp_path / "elsewhere"


def test_the_loaded_variant_is_read_from_the_process_maps():
    maps = ("7f00-7f01 r-xp 0 08:01 1 /x/site-packages/llama_cpp/lib/libggml-base.so.0\n"
            "7f02-7f03 r-xp 0 08:01 2 /x/site-packages/llama_cpp/lib/libggml-cpu-icelake.so\n")
    assert llama_runtime.loaded_variant(maps) == "icelake"
    assert llama_runtime.loaded_variant("nothing here\n") is None


def test_a_wheel_without_variants_is_one_line_naming_the_folders(tmp_path, monkeypatch):
    """Run in a child process: the loader's state is per process."""
    monkeypatch.setenv(llama_runtime.ENV_BACKEND_DIR, str(tmp_path / "empty"))
    code = (
        "import sys, llama_cpp, pathlib\n"
        "from loraship.export import llama_runtime as r\n"
        "lib = pathlib.Path(llama_cpp.__file__).parent / 'lib'\n"
        "r.backend_dirs = lambda _lib: [pathlib.Path(sys.argv[1])]\n"
        "try:\n    r.load()\nexcept r.ToolchainError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "empty")], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    line = out.stdout.strip()
    assert "\n" not in line and str(tmp_path / "empty") in line and "make setup" in line



_AMX_CLASH = """
import sys, torch
from loraship.export import llama_runtime
llama_cpp = llama_runtime.llama_cpp()
llm = llama_cpp.Llama(model_path=sys.argv[1], n_ctx=128, verbose=False, n_threads=2)
def decode():
    llm.reset()
    llm.eval(llm.tokenize(b"The capital of France is Paris. The capital of Germany is", add_bos=True))
decode()
a = torch.randn(512, 512, dtype=torch.bfloat16)
for _ in range(20):  # oneDNN's bf16 matmul: AMX tiles on CPUs that have them, released after each
    (a @ a).sum().item()
decode()
print(llama_runtime.load().cpu_variant)
"""


def test_llama_cpp_after_a_bf16_torch_step_in_the_same_process(smollm2_gguf):
    """llama.cpp, then a bf16 matmul, then llama.cpp again: the order of the demo and the tests.
    With ggml's AMX variant this dies on `tilezero` (SIGILL) on a Xeon with AMX (seen here with
    LORASHIP_LLAMA_AMX=1); the loader's default variant must survive it on every CPU."""
    env = {k: v for k, v in os.environ.items() if k != llama_runtime.ENV_ALLOW_AMX}
    proc = subprocess.run([sys.executable, "-c", _AMX_CLASH, str(smollm2_gguf)], capture_output=True, text=True,
                          timeout=300, env=env)
    assert proc.returncode == 0, f"exit {proc.returncode}:\n{proc.stderr[-1500:]}"
    assert proc.stdout.split()[-1] not in llama_runtime.AMX_VARIANTS


def test_the_amx_variant_is_skipped_unless_asked_for(tmp_path, monkeypatch):
    for name in ("x64", "zen4", "sapphirerapids", "haswell"):
        (tmp_path / f"libggml-cpu-{name}.so").write_bytes(b"")
    scores = {"x64": 1, "haswell": 10, "zen4": 20, "sapphirerapids": 30}
    monkeypatch.setattr(llama_runtime, "variant_score", lambda p: scores[llama_runtime._variant_name(p)])
    assert llama_runtime.best_variant(tmp_path).name == "libggml-cpu-zen4.so"
    assert llama_runtime.best_variant(tmp_path, allow_amx=True) is None  # ggml's own choice: AMX
    scores["sapphirerapids"] = 0  # a CPU without AMX: ggml already picks what we would
    assert llama_runtime.best_variant(tmp_path) is None
