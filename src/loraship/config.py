"""Typed per-model config: `train/<model>.yaml`, overridden by CLI flags.

Every field is documented here; `None` means "choose automatically" (the choice and
its reason are recorded in the manifest). An unknown key or a wrong type is a
one-line ConfigError naming the key.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from loraship.errors import ConfigError


@dataclass
class DataConfig:
    replay_ratio: float = 0.2  # fraction of the final training set drawn from earlier versions
    allow_replay_ratio_outside_range: bool = False  # 0.10-0.30 is the safe band
    split: list[float] = field(default_factory=lambda: [0.7, 0.15, 0.15])  # train/val/test
    seed: int = 20251101  # split and replay sampling seed
    max_chars: int = 20000  # longest accepted row (characters, all turns together)


@dataclass
class TrainConfig:
    strategy: str = "continue"  # continue | stack
    learning_rate: float | None = None
    num_train_epochs: int | None = None
    lora_r: int | None = None
    lora_alpha: int | None = None
    lora_dropout: float = 0.05
    target_modules: list[str] | None = None  # default: every attention and MLP projection
    per_device_train_batch_size: int | None = None
    gradient_accumulation_steps: int | None = None
    effective_batch_size: int = 8
    max_seq_length: int | None = None
    warmup_ratio: float = 0.1
    max_warmup_steps: int = 50
    lr_scheduler_type: str = "cosine"
    weight_decay: float = 0.0
    seed: int = 42
    early_stopping_patience: int = 2
    gradient_checkpointing: bool | None = None  # None: on for CUDA, off on CPU
    load_in_4bit: bool = False  # QLoRA; CUDA with bitsandbytes only
    trust_remote_code: bool = False
    device: str | None = None  # cuda | mps | cpu; None picks the best available
    group_by_length: bool = True  # batches of similar length waste no padding
    init_lora_nonzero: bool = False  # tests: make an untrained adapter visible


@dataclass
class ExportConfig:
    quants: list[str] = field(default_factory=lambda: ["Q4_K_M"])
    outtype: str = "f16"  # f16 | bf16 | f32: the GGUF that is quantized
    max_kl: float = 1.0  # mean KL(F16 || quant) per token on the val split
    min_top1: float = 0.60  # top-1 token agreement with F16
    max_merge_logit_diff: float = 1e-3
    keep_merged: bool = False


@dataclass
class OllamaConfig:
    host: str | None = None  # default: $OLLAMA_HOST, else http://127.0.0.1:11434
    system: str | None = None
    license: str | None = None
    temperature: float = 0.7
    seed: int | None = None
    num_ctx: int | None = None  # None: from the training length
    timeout_s: float = 600.0


@dataclass
class CompareConfig:
    questions: str = "default"  # ollama/questions/<name>.yaml
    concurrency: int = 2
    num_predict: int = 128
    seed: int = 7
    max_test_rows: int = 20  # held-out rows per side (new / old) added to the fixed questions


@dataclass
class GateConfig:
    min_new_gain: float = 5.0  # points of new-knowledge accuracy over the parent
    max_old_loss: float = 2.0  # points of old-knowledge accuracy the candidate may lose
    min_grounding: float = 0.35  # where references cite sources


@dataclass
class Config:
    base_model: str | None = None  # a Hugging Face folder (safetensors), e.g. bases/smollm2-135m
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    ollama: OllamaConfig = field(default_factory=OllamaConfig)
    compare: CompareConfig = field(default_factory=CompareConfig)
    gate: GateConfig = field(default_factory=GateConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_YAML11_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


def _check_type(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _check_type(value, arg, key)
            except ConfigError as e:
                errors.append(e)
        raise errors[0]
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"config key '{key}' must be a list, got {value!r}")
        return [_check_type(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str) and _YAML11_FLOAT.match(value.strip()):
        return float(value)  # YAML 1.1 reads `1e-4` (no dot) as a string; everyone means the number
    if tp in (int, float) and isinstance(value, bool):
        raise ConfigError(f"config key '{key}' must be a number, got {value!r}")
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    if not isinstance(value, tp):
        raise ConfigError(f"config key '{key}' must be {tp.__name__}, got {type(value).__name__} {value!r}")
    return value


def _build(cls: type, raw: Any, prefix: str = "") -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"config key '{prefix or '<top>'}' must be a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in raw.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if key not in known:
            raise ConfigError(f"unknown config key '{full}' (known: {', '.join(sorted(known))})")
        kwargs[key] = _check_type(value, hints[key], full)
    return cls(**kwargs)


def _coerce_cli(text: str) -> Any:
    """`--set key=value`: parse the value as YAML so 1e-4, true, [a, b] mean what they say."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _is_text_field(dotted: str) -> bool:
    """Text fields keep `--set` values verbatim ("Answer: briefly" must not become a mapping)."""
    cls: Any = Config
    for part in dotted.split("."):
        if not dataclasses.is_dataclass(cls) or part not in {f.name for f in dataclasses.fields(cls)}:
            return False
        cls = typing.get_type_hints(cls)[part]
    return cls is str or (typing.get_origin(cls) in (typing.Union, types.UnionType) and str in typing.get_args(cls))


def _validate(cfg: Config) -> None:
    if cfg.train.strategy not in ("continue", "stack"):
        raise ConfigError(f"config key 'train.strategy' must be 'continue' or 'stack', got {cfg.train.strategy!r}")
    split = cfg.data.split
    if len(split) != 3 or any(s < 0 for s in split) or abs(sum(split) - 1.0) > 1e-6 or split[0] <= 0:
        raise ConfigError(f"config key 'data.split' must be three non-negative fractions summing to 1, got {split}")
    if not 0.0 <= cfg.data.replay_ratio < 1.0:
        raise ConfigError(f"config key 'data.replay_ratio' must be in [0, 1), got {cfg.data.replay_ratio}")
    if cfg.compare.concurrency < 1:
        raise ConfigError("config key 'compare.concurrency' must be at least 1")


def load(path: Path | None, overrides: dict[str, Any] | None = None) -> Config:
    """Read YAML (if it exists), apply dotted overrides (`train.learning_rate`), validate."""
    raw: dict[str, Any] = {}
    if path is not None and Path(path).exists():
        try:
            raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark else ""
            raise ConfigError(f"{path}{where}: not valid YAML: {getattr(e, 'problem', e)}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of config keys")
    for dotted, value in (overrides or {}).items():
        node = raw
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"config key '{dotted}': '{p}' is not a section")
        node[leaf] = _coerce_cli(value) if isinstance(value, str) and not _is_text_field(dotted) else value
    try:
        cfg = _build(Config, raw)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}" if path and Path(path).exists() else str(e)) from None
    _validate(cfg)
    return cfg


def parse_set_options(items: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: write it as KEY=VALUE, e.g. --set train.learning_rate=1e-4")
        key, value = item.split("=", 1)
        out[key.strip()] = value
    return out
