"""GGUF through llama.cpp: convert (its converter), quantize (its library), inspect (gguf-py)."""

from __future__ import annotations

import ctypes
import functools
import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from loraship.errors import ExportError
from loraship.export import llama_runtime, toolchain

GGUF_MAGIC = b"GGUF"


def ftype_for(quant: str) -> int:
    """llama.cpp's own list of file types is the list of valid --quant names."""
    llama_cpp = llama_runtime.llama_cpp()

    value = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{quant.upper()}", None)
    if value is None:
        known = sorted(n.removeprefix("LLAMA_FTYPE_MOSTLY_") for n in dir(llama_cpp) if n.startswith("LLAMA_FTYPE_MOSTLY_"))
        raise ExportError(f"unknown quant type {quant!r}: llama.cpp offers {', '.join(known)}")
    return int(value)


def convert(hf_dir: Path, out: Path, outtype: str, metadata: dict[str, Any], log: Callable[[str], None],
            log_file: Path | None = None) -> None:
    meta_file = out.parent / (out.name + ".metadata.json")
    meta_file.write_text(json.dumps(metadata), encoding="utf-8")
    try:
        toolchain.run_converter(
            "convert_hf_to_gguf.py",
            [str(hf_dir), "--outfile", str(out), "--outtype", outtype, "--metadata", str(meta_file)],
            log,
            log_file,
        )
    finally:
        meta_file.unlink(missing_ok=True)
    check_magic(out)


def quantize(src: Path, out: Path, quant: str, threads: int = 0, log_file: Path | None = None) -> int:
    """Quantize with llama.cpp; returns how many tensors fell back to another type.

    llama.cpp notes each fallback (rows not divisible by the quant's block size) on its
    console; with `log_file` those notes go there and are counted.
    """
    llama_cpp = llama_runtime.llama_cpp()

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype_for(quant)
    if threads:
        params.nthread = threads
    log_file = log_file or out.with_name(out.name + ".log")
    start = log_file.stat().st_size if log_file.exists() else 0
    with llama_runtime.output_to(log_file):
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(out).encode(), ctypes.byref(params))
    if rc != 0 or not out.exists():
        raise ExportError(f"llama.cpp could not quantize {src.name} to {quant} (code {rc}; its log: {log_file})")
    check_magic(out)
    with open(log_file, encoding="utf-8", errors="replace") as f:
        f.seek(start)
        return sum(1 for line in f if "fallback" in line)


def check_magic(path: Path) -> None:
    with open(path, "rb") as f:
        if f.read(4) != GGUF_MAGIC:
            raise ExportError(f"{path} is not a GGUF file (bad magic): the conversion was cut short")


def reader(path: Path):
    """gguf-py from the provisioned llama.cpp revision (it knows every current tensor type)."""
    import importlib
    import sys

    root = toolchain.require_converter() / "gguf-py"
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
        for name in [m for m in sys.modules if m == "gguf" or m.startswith("gguf.")]:
            del sys.modules[name]  # a PyPI gguf imported earlier would shadow the matching one
    gguf = importlib.import_module("gguf")
    return gguf.GGUFReader(str(path))


def field_value(rd: Any, key: str) -> Any:
    field = rd.fields.get(key)
    if field is None:
        return None
    return field.contents()


def describe(path: Path) -> dict[str, Any]:
    """What a GGUF really holds: file type, tensor type mix, metadata a registry needs."""
    st = Path(path).stat()
    return dict(_describe(str(path), st.st_mtime_ns, st.st_size))


@functools.lru_cache(maxsize=16)
def _describe(path: str, mtime_ns: int, size: int) -> dict[str, Any]:
    from loraship.export import gguf_header

    try:
        with gguf_header.open_header(Path(path)) as header:
            if header is not None:  # llama.cpp's C parser: milliseconds
                return _summary(header.value, header.string_at, header.tensor_types())
    except gguf_header.UnreadableGGUF as e:
        raise ExportError(f"{path} is not a GGUF file llama.cpp can read ({e})") from None
    return _describe_with_gguf_py(path)


def _describe_with_gguf_py(path: str) -> dict[str, Any]:
    """The fallback for a ggml without the gguf API: gguf-py parses every field (seconds for a 50k vocabulary)."""
    try:
        rd = reader(Path(path))
    except (ValueError, OSError) as e:  # gguf-py raises ValueError on a bad magic or truncated header
        raise ExportError(f"{path} is not a GGUF file llama.cpp can read ({e})") from None
    tokens = field_value(rd, "tokenizer.ggml.tokens") or []

    def string_at(key: str, i: Any) -> str | None:
        return tokens[i] if key == "tokenizer.ggml.tokens" and isinstance(i, int) and 0 <= i < len(tokens) else None

    return _summary(lambda key: field_value(rd, key), string_at, [t.tensor_type.name for t in rd.tensors])


def _summary(value: Callable[[str], Any], string_at: Callable[[str, Any], str | None],
             tensor_types: list[str]) -> dict[str, Any]:
    def token(key: str) -> str | None:
        return string_at("tokenizer.ggml.tokens", value(key))

    architecture = value("general.architecture")
    return {
        "file_type": value("general.file_type"),
        "type_mix": dict(sorted(Counter(tensor_types).items())),
        "n_tensors": len(tensor_types),
        "name": value("general.name"),
        "version": value("general.version"),
        "architecture": architecture,
        "license": value("general.license"),
        "chat_template": value("tokenizer.chat_template"),
        "tokenizer_model": value("tokenizer.ggml.model"),
        "pre_tokenizer": value("tokenizer.ggml.pre"),
        "bos_token": token("tokenizer.ggml.bos_token_id"),
        "eos_token": token("tokenizer.ggml.eos_token_id"),
        "context_length": value(f"{architecture}.context_length"),
    }
