"""The only code that knows the on-disk layout.

    $LORASHIP_HOME (default ./runs)/<model>/vN_YYYYMMDD_HHMMSS/   one version
        manifest.json  data/  adapter/  gguf/  Modelfile  compare/  checksums.txt
    $LORASHIP_HOME/<model>/.lock          held while a run writes to the model
    $LORASHIP_HOME/<model>/state.json     id counter and the rollback pointer
    $LORASHIP_HOME/<model>/audit.jsonl    promotions and rollbacks
    ./train/<model>.yaml                  the model's config
    ./Modelfiles/<model>/vN.Modelfile     generated Modelfiles, committed for review
    ./ollama/questions/<set>.yaml         fixed comparison questions
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from loraship.errors import ConfigError, VersionError

# Ollama's rule for the model part of a name, narrowed to lowercase so that two
# spellings can never name one model on a case-insensitive server.
_MODEL_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,79}$")
_VERSION_RE = re.compile(r"^v([1-9][0-9]{0,5})$")
VERSION_DIR_RE = re.compile(r"^v([1-9][0-9]{0,5})_(\d{8}_\d{6})$")

MANIFEST = "manifest.json"
DATA_DIR = "data"
ADAPTER_DIR = "adapter"
GGUF_DIR = "gguf"
COMPARE_DIR = "compare"
MODELFILE = "Modelfile"
CHECKSUMS = "checksums.txt"
TMP_PREFIX = ".tmp-"


def validate_model_name(name: str) -> str:
    if not isinstance(name, str) or not _MODEL_RE.match(name) or ".." in name:
        raise ConfigError(
            f"model name {name!r} is not valid: use 1-80 lowercase letters, digits, '_', '-', '.'"
            " starting with a letter or digit (e.g. 'mining-bot')"
        )
    return name


def parse_version_id(ref: str) -> int:
    m = _VERSION_RE.match(ref or "")
    if not m:
        raise VersionError(f"version {ref!r} is not valid: write it as vN, e.g. v2")
    return int(m.group(1))


def project_root() -> Path:
    return Path(os.environ.get("LORASHIP_PROJECT", ".")).resolve()


def runs_root() -> Path:
    home = os.environ.get("LORASHIP_HOME")
    return Path(home).resolve() if home else project_root() / "runs"


def model_dir(model: str) -> Path:
    return runs_root() / validate_model_name(model)


def lock_file(model: str) -> Path:
    return model_dir(model) / ".lock"


def state_file(model: str) -> Path:
    return model_dir(model) / "state.json"


def audit_log(model: str) -> Path:
    return model_dir(model) / "audit.jsonl"


def config_file(model: str) -> Path:
    return project_root() / "train" / f"{validate_model_name(model)}.yaml"


def modelfile_copy(model: str, version: str) -> Path:
    return project_root() / "Modelfiles" / validate_model_name(model) / f"{version}.Modelfile"


def questions_file(name: str) -> Path:
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", name) or ".." in name:
        raise ConfigError(f"question set {name!r} is not valid: use letters, digits, '_', '-', '.'")
    return project_root() / "ollama" / "questions" / f"{name}.yaml"


def gguf_name(model: str, version: str, quant: str) -> str:
    """GGUF naming convention: <model>-<version>-<QUANT>.gguf."""
    return f"{model}-{version}-{quant}.gguf"


def tools_dir() -> Path:
    """Where the llama.cpp converter is provisioned: build/cache in a checkout."""
    env = os.environ.get("LORASHIP_TOOLS")
    if env:
        return Path(env).resolve()
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "pyproject.toml").exists() and (checkout / "build").is_dir():
        return checkout / "build" / "cache"
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "loraship"
