"""A model already in Ollama → a trainable base folder (`loraship base from-ollama NAME OUT`).

Ollama has no API that hands out a model's weights, but `/api/show` names the model layer's blob
(the `FROM` line of the modelfile it generates is the blob's path in the server's model folder,
`$OLLAMA_MODELS/blobs/sha256-<digest>`). When that file is readable here (the server runs on this
machine), it is checked against its digest and read as the GGUF it is (base/from_gguf.py). The
model's Ollama TEMPLATE, SYSTEM and parameters are recorded in the folder (ollama_source.json), so
a version trained on it can be served the way the original was.

A quantized model is refused unless asked for: training starts from its dequantized weights, so
its rounding error becomes part of the base, and exporting to Q4_K_M rounds a second time.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from loraship.errors import ConfigError, OllamaError
from loraship.store.hashing import sha256_file

SOURCE_FILE = "ollama_source.json"
# general.file_type values of unquantized GGUFs (llama.cpp's LLAMA_FTYPE_*): F32, F16, BF16.
UNQUANTIZED = {0: "F32", 1: "F16", 32: "BF16"}
_FROM = re.compile(r"^FROM (.+)$", re.MULTILINE)


def model_blob(shown: dict[str, Any], name: str, host: str) -> tuple[Path, str]:
    """(path of the model layer's blob, its sha256) from a /api/show answer."""
    found = _FROM.search(shown.get("modelfile") or "")
    if not found:
        raise OllamaError(f"Ollama at {host} showed {name} without a FROM line: it is not a local GGUF model")
    path = Path(found.group(1).strip().strip('"'))
    digest = path.name.removeprefix("sha256-")
    if not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise OllamaError(f"{name}: the model layer {path} is not a blob of the server's model folder")
    if not path.is_file():
        raise ConfigError(f"{name}'s weights are {path} on the server at {host}, which this machine cannot read: "
                          "run this where the server runs, or copy that file here and use `loraship base from-gguf`")
    return path, digest


def _check_digest(path: Path, digest: str, log: Callable[[str], None]) -> None:
    log(f"checking {path.name} against its digest")
    actual = sha256_file(path)
    if actual != digest:
        raise ConfigError(f"{path}: its content does not match its name (sha256 {actual[:12]}): the "
                          "server's model folder is damaged; `ollama pull` the model again")


def quantization(gguf: Path) -> tuple[int | None, str]:
    """(general.file_type, its name) of a GGUF."""
    from loraship.export import gguf_tools, llama_runtime

    ftype = gguf_tools.describe(gguf)["file_type"]
    if ftype in UNQUANTIZED:
        return ftype, UNQUANTIZED[ftype]
    names = {v: k.removeprefix("LLAMA_FTYPE_MOSTLY_") for k, v in vars(llama_runtime.llama_cpp()).items()
             if k.startswith("LLAMA_FTYPE_MOSTLY_") and isinstance(v, int)}
    return ftype, names.get(ftype, f"file type {ftype}")


def from_ollama(name: str, out: Path, host: str, allow_quantized: bool = False,
                log: Callable[[str], None] = lambda s: None) -> Path:
    from loraship.base.from_gguf import from_gguf
    from loraship.serve import ollama_client

    out = Path(out)
    if (out / "config.json").exists():
        log(f"{out} already holds a model: nothing to do")
        return out
    shown = ollama_client.show_full(host, name)
    blob, digest = model_blob(shown, name, host)
    ftype, kind = quantization(blob)
    if ftype not in UNQUANTIZED and not allow_quantized:
        raise ConfigError(f"{name} is quantized ({kind}): its dequantized weights would carry that rounding into "
                          "the base, and the Q4_K_M export rounds again; pull an F16/BF16 tag of the model "
                          "(e.g. qwen2.5:0.5b-instruct-fp16), or pass --allow-quantized to train on it anyway")
    _check_digest(blob, digest, log)
    record = {"name": name, "host": host, "blob": f"sha256:{digest}", "file_type": kind,
              "allow_quantized": bool(allow_quantized and ftype not in UNQUANTIZED),
              "template": shown.get("template"), "system": shown.get("system"),
              "parameters": shown.get("parameters"), "details": shown.get("details")}
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".from-ollama-", dir=out.parent) as d:
        link = Path(d) / "model.gguf"  # transformers reads GGUFs by file name; the blob has none
        os.symlink(blob, link)
        from_gguf(link, out, log, extra_files={SOURCE_FILE: json.dumps(record, indent=1, default=str) + "\n"})
    if not (out / "chat_template.jinja").exists() and "chat_template" not in (out / "tokenizer_config.json").read_text():
        log(f"{name}'s GGUF carries no Jinja chat template, which training needs: add chat_template.jinja to {out} "
            f"(its Ollama TEMPLATE is in {SOURCE_FILE}; register with --template FILE to serve it as before)")
    return out
