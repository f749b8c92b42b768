"""The base model: resolve the configured folder, fingerprint it, load it safely."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from loraship.config import Config
from loraship.errors import ConfigError, ExportError
from loraship.store.hash_cache import sha256_file_cached

_WEIGHT_GLOBS = ("*.safetensors",)
_META = ("config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "tokenizer.model")
# Tokenizer files a transformers save does not write back, which the converter needs.
TOKENIZER_EXTRAS = ("tokenizer.model",)


def resolve(cfg: Config) -> Path:
    if not cfg.base_model:
        raise ConfigError("config key 'base_model' is not set: point it at a Hugging Face model folder "
                          "(e.g. run `loraship base from-gguf FILE.gguf bases/NAME`)")
    path = Path(cfg.base_model)
    if not path.is_absolute():
        from loraship.paths import project_root

        path = project_root() / path
    if not (path / "config.json").exists():
        raise ConfigError(f"base_model {cfg.base_model!r}: {path} has no config.json (a Hugging Face model folder is needed)")
    if not any(path.glob("*.safetensors")):
        raise ConfigError(f"base_model {path}: no *.safetensors weights (only safetensors are loaded, never pickles)")
    return path


def fingerprint(path: Path, names: list[str] | None = None, cache_hits: list[str] | None = None) -> dict[str, Any]:
    """Content hash of the weights and the files that change behaviour (config, tokenizer, and the
    SentencePiece model llama.cpp converts Llama 2 / Mistral / Phi-3 vocabularies from). `names`:
    the files a recorded fingerprint hashed: its metadata files are hashed again (a record keeps
    meaning what it meant when written), and every weight file always is. Large files' digests
    come from store/hash_cache.py while the file is provably untouched; their names go to
    `cache_hits`."""
    meta = _META if names is None else [n for n in names if not n.endswith(".safetensors")]
    files = sorted(p for g in _WEIGHT_GLOBS for p in path.glob(g)) + [path / m for m in meta if (path / m).exists()]
    import hashlib

    h = hashlib.sha256()
    for p in files:
        digest, cached = sha256_file_cached(p)
        if cached and cache_hits is not None:
            cache_hits.append(p.name)
        h.update(p.name.encode() + b"\0" + digest.encode() + b"\n")
    return {"path": str(path), "sha256": h.hexdigest(), "files": [p.name for p in files]}


def check_unchanged(recorded: dict[str, Any], cache_hits: list[str] | None = None) -> Path:
    path = Path(recorded["path"])
    if not path.exists():
        raise ExportError(f"base model {path} recorded at training is gone: restore it or point base_model there")
    now = fingerprint(path, recorded.get("files"), cache_hits)["sha256"]
    if now != recorded["sha256"]:
        raise ExportError(
            f"base model {path} changed since training (sha256 {recorded['sha256'][:12]} then, {now[:12]} now): "
            "restore the original weights; an adapter only fits the base it was trained on"
        )
    return path


def load_tokenizer(path: Path, trust_remote_code: bool = False) -> Any:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=trust_remote_code)
    if tok.chat_template is None:
        raise ConfigError(f"base model {path} has no chat template: use an instruction-tuned model or add one")
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(path: Path, dtype: Any, trust_remote_code: bool = False, quantization_config: Any = None) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        path,
        dtype=dtype,
        local_files_only=True,
        use_safetensors=True,
        trust_remote_code=trust_remote_code,
        quantization_config=quantization_config,
    )
