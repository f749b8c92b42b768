"""The Modelfile and the equivalent /api/create arguments, from one set of inputs.

Ollama's parser (parser/parser.go) has no escapes: a triple-quoted value ends at the
first newline where the text so far, right-trimmed, ends with three quotes; runes that
are not printable (strconv.IsPrint) are silently dropped. So user text (SYSTEM, LICENSE)
is written in triple-quoted form and refused, with a one-line error, exactly when that form
could not carry it unchanged. Every rendered Modelfile is parsed back with a port of
that parser and must yield exactly the intended instructions.
"""

from __future__ import annotations

import math
import re
import unicodedata
from dataclasses import dataclass
from typing import Any

from loraship.errors import ConfigError
from loraship.serve import gotemplate
from loraship.serve.chat_templates import (  # noqa: F401  (re-exported: the Modelfile's TEMPLATE and stops)
    ChatFormat,
    derive_chat_format,
    gguf_chat_metadata,
    resolve_chat_format,
)
from loraship.serve.names import (  # noqa: F401  (re-exported: names moved to serve/names.py)
    OllamaName,
    split_ollama_name,
    validate_ollama_name,
)

# api.Options JSON names and their Go kinds, plus the deprecated ones parser.go still accepts.
PARAMETER_KINDS: dict[str, str] = {
    "numa": "bool", "num_ctx": "int", "num_batch": "int", "num_gpu": "int", "main_gpu": "int",
    "use_mmap": "bool", "num_thread": "int", "num_keep": "int", "seed": "int",
    "num_predict": "int", "top_k": "int", "top_p": "float", "min_p": "float",
    "typical_p": "float", "repeat_last_n": "int", "temperature": "float",
    "repeat_penalty": "float", "presence_penalty": "float", "frequency_penalty": "float",
    "stop": "list",
    "penalize_newline": "bool", "low_vram": "bool", "f16_kv": "bool", "logits_all": "bool",
    "vocab_only": "bool", "use_mlock": "bool", "mirostat": "int", "mirostat_tau": "float",
    "mirostat_eta": "float",
}
COMMANDS = ("from", "license", "template", "system", "adapter", "draft", "renderer", "parser",
            "parameter", "message", "requires")
MESSAGE_ROLES = ("system", "user", "assistant")

_GGUF_PATH = re.compile(r"^(?!/)(?!.*(?:^|/)\.\.?(?:/|$))[A-Za-z0-9_][A-Za-z0-9_./-]*\.gguf$")
_INT = re.compile(r"^[+-]?[0-9]+$")


# ------------------------------------------------------------------ quoting

def _go_printable(c: str) -> bool:
    return c == " " or unicodedata.category(c)[0] in "LMNPS"


def _check_text(field: str, value: str) -> None:
    """Refuse text the `\"\"\"` form cannot carry unchanged through parser.go."""
    line = 1
    for i, c in enumerate(value):
        if c in "\r\n":
            if value[:i].rstrip(" \t\r\n").endswith('"""'):
                raise ConfigError(f'{field} line {line} ends with \'"""\', which would end the '
                                  "Modelfile value early; reword that line")
            line += c == "\n"
        elif c != "\t" and not _go_printable(c):
            raise ConfigError(f"{field} line {line} contains U+{ord(c):04X}, which Ollama's "
                              "Modelfile parser drops; remove it")


def _triple(field: str, value: str) -> str:
    _check_text(field, value)
    return '"""' + value + '"""'


def _quoted(field: str, value: str) -> str:
    """Single-line `"..."` form, used for stop strings."""
    _check_text(field, value)
    if not value or "\n" in value or "\r" in value or ('"' + value + '"').startswith('"""'):
        raise ConfigError(f"{field} {value!r} cannot be written on one Modelfile line; "
                          "use a non-empty, single-line stop string")
    return '"' + value + '"'


def _comment(text: Any) -> str:
    return re.sub(r"[\r\n]+", " ", str(text)).strip()


# ------------------------------------------------------------------ the model's settings

@dataclass(frozen=True)
class ModelSettings:
    """Validated inputs shared by the Modelfile and the create() call."""

    template: str
    stops: tuple[str, ...]
    num_ctx: int
    temperature: float
    seed: int | None
    system: str | None
    license: str | None

    def parameters(self) -> dict[str, Any]:
        params: dict[str, Any] = {"stop": list(self.stops), "num_ctx": self.num_ctx,
                                  "temperature": self.temperature}
        if self.seed is not None:
            params["seed"] = self.seed
        return params


def model_settings(*, template: str, stops: list[str] | tuple[str, ...], num_ctx: int,
                   temperature: float, seed: int | None = None, system: str | None = None,
                   license: str | None = None) -> ModelSettings:
    if not isinstance(template, str) or not template.strip():
        raise ConfigError("template is empty: every Modelfile needs an explicit TEMPLATE")
    gotemplate.parse(template)  # raises TemplateError (a ConfigError) naming the line
    _check_text("template", template)
    stops = tuple(stops or ())
    if not stops:
        raise ConfigError("no stop strings: pass the end-of-turn marker(s), e.g. <|im_end|>")
    for s in stops:
        if not isinstance(s, str):
            raise ConfigError(f"stop {s!r} must be text")
        _quoted("stop", s)
    if len(set(stops)) != len(stops):
        raise ConfigError(f"stop strings repeat: {list(stops)}")
    if isinstance(num_ctx, bool) or not isinstance(num_ctx, int) or num_ctx < 1:
        raise ConfigError(f"num_ctx must be a positive integer, got {num_ctx!r}")
    if (isinstance(temperature, bool) or not isinstance(temperature, (int, float))
            or not math.isfinite(temperature) or temperature < 0):
        raise ConfigError(f"temperature must be a number >= 0, got {temperature!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ConfigError(f"seed must be an integer, got {seed!r}")
    for field, text in (("system", system), ("license", license)):
        if text is not None and not isinstance(text, str):
            raise ConfigError(f"{field} must be text, got {type(text).__name__}")
    return ModelSettings(template, stops, num_ctx, float(temperature), seed,
                         system or None, license or None)


def ollama_create_args(**settings: Any) -> dict[str, Any]:
    """Keyword arguments for ollama.Client.create() besides model/files, from the same
    inputs (and checks) as render_modelfile()."""
    s = model_settings(**settings)
    args: dict[str, Any] = {"template": s.template, "parameters": s.parameters()}
    if s.system is not None:
        args["system"] = s.system
    if s.license is not None:
        args["license"] = s.license
    return args


def render_modelfile(*, gguf_path: str, header: dict[str, Any] | None = None,
                     **settings: Any) -> str:
    """The Modelfile text: header comments (None values left out), FROM, TEMPLATE,
    PARAMETERs, SYSTEM, LICENSE. `settings` are model_settings()'s keywords."""
    s = model_settings(**settings)
    if not isinstance(gguf_path, str) or not _GGUF_PATH.match(gguf_path):
        raise ConfigError(f"FROM path {gguf_path!r} must be a relative path to a .gguf file "
                          "without '..' or spaces, e.g. gguf/mybot-v1-Q4_K_M.gguf")
    lines = [f"# {_comment(k)}: {_comment(v)}" for k, v in (header or {}).items() if v is not None]
    lines += [f"FROM {gguf_path}", f"TEMPLATE {_triple('template', s.template)}"]
    lines += [f"PARAMETER stop {_quoted('stop', stop)}" for stop in s.stops]
    lines += [f"PARAMETER num_ctx {s.num_ctx}", f"PARAMETER temperature {s.temperature!r}"]
    if s.seed is not None:
        lines.append(f"PARAMETER seed {s.seed}")
    if s.system is not None:
        lines.append(f"SYSTEM {_triple('system', s.system)}")
    if s.license is not None:
        lines.append(f"LICENSE {_triple('license', s.license)}")
    text = "\n".join(lines) + "\n"
    want = {"from": gguf_path, **ollama_create_args(**settings)}
    if modelfile_create_args(text) != want:  # belt and braces: the file must say what we mean
        raise ConfigError("the Modelfile would not parse back to its inputs; refusing to write it")
    return text


# ------------------------------------------------------------------ parsing (parser.go port)

def _unquote(s: str) -> tuple[str, bool]:
    if s.startswith('"""'):
        return (s[3:-3], True) if len(s) >= 6 and s.endswith('"""') else ("", False)
    if s.startswith('"'):
        return (s[1:-1], True) if len(s) >= 2 and s.endswith('"') else ("", False)
    return s, True


def _go_trim(s: str) -> str:
    return s.strip(" \t\n\v\f\r\x85\xa0")


class ModelfileError(ConfigError):
    """A Modelfile that Ollama's parser would reject."""


def parse_modelfile(text: str) -> list[tuple[str, str]]:
    """(instruction, value) pairs as parser.go ParseFile reads them.

    Instruction names are lower-case ("from", "template", "system", "license", "message",
    ...); a PARAMETER line yields its parameter name, as Ollama's parser.Command does.
    MESSAGE values are "role: content". Errors name the line, as Ollama's do.
    """
    cmds: list[tuple[str, str]] = []
    state, buf, name, role, line = "nil", [], "", "", 1
    for r in text.removeprefix("\ufeff"):
        line += r in "\r\n"
        nxt, keep = _next_state(state, r, line, buf)
        if nxt != state:
            if state == "name":
                name = "".join(buf).lower()
                if name not in COMMANDS:
                    raise ModelfileError(f"Modelfile line {line}: {_BAD_COMMAND}")
                nxt = name if name in ("parameter", "message") else nxt
            elif state == "parameter":
                name = "".join(buf)
            elif state == "message":
                role = "".join(buf)
                if role not in MESSAGE_ROLES:
                    raise ModelfileError(f"Modelfile line {line}: message role must be one of "
                                         '"system", "user", or "assistant"')
            elif state == "value":
                value, ok = _unquote(_go_trim("".join(buf)))
                if not ok or r in " \t":
                    buf.append(r)  # still inside the value: keep the space or newline
                    continue
                cmds.append(_command(name, value, role))
                role = ""
            buf = []
            state = nxt
        if keep and _go_printable(r):
            buf.append(r)
    return _finish(cmds, state, buf, name, role)


_BAD_COMMAND = "command must be one of " + ", ".join(f'"{c}"' for c in COMMANDS)


def _next_state(state: str, r: str, line: int, buf: list[str]) -> tuple[str, bool]:
    """parseRuneForState: the next state and whether the rune is kept."""
    space, newline = r in " \t", r in "\r\n"
    if state == "nil":
        return ("comment", False) if r == "#" else ("nil", False) if space or newline else ("name", True)
    if state == "name":
        if r.isascii() and r.isalpha():
            return "name", True
        if space:
            return "value", False
        raise ModelfileError(f"Modelfile line {line}: {_BAD_COMMAND}")
    if state == "value":
        return ("nil" if space or newline else "value"), True
    if state in ("parameter", "message"):
        if r.isascii() and (r.isalpha() or (state == "parameter" and (r.isdigit() or r == "_"))):
            return state, True
        if space:
            return "value", False
        raise ModelfileError(f"Modelfile line {line}: unexpected EOF: {''.join(buf)}")
    return ("nil" if newline else "comment"), False


def _command(name: str, value: str, role: str) -> tuple[str, str]:
    if role:
        value = f"{role}: {value}"
    return name, value


def _finish(cmds, state, buf, name, role) -> list[tuple[str, str]]:
    if state == "value":
        value, ok = _unquote(_go_trim("".join(buf)))
        if not ok:
            raise ModelfileError("Modelfile ends inside a quoted value (unexpected EOF)")
        cmds.append(_command(name, value, role))
    elif state not in ("nil", "comment"):
        raise ModelfileError("Modelfile ends in the middle of an instruction (unexpected EOF)")
    if not any(c == "from" for c, _ in cmds):
        raise ModelfileError("Modelfile has no FROM line")
    for c, v in cmds:
        if c not in COMMANDS:
            _typed(c, v)
    return cmds


def _typed(name: str, value: str) -> Any:
    """api.FormatParams for one value; unknown names and bad values are errors."""
    kind = PARAMETER_KINDS.get(name)
    if kind is None:
        raise ModelfileError(f"unknown parameter '{name}'")
    if kind == "list":
        return value
    if kind == "int" and _INT.match(value):
        return int(value)
    if kind == "float" and "_" not in value:
        try:
            return float(value)
        except ValueError:
            pass
    if kind == "bool" and value in ("1", "t", "T", "TRUE", "true", "True",
                                    "0", "f", "F", "FALSE", "false", "False"):
        return value in ("1", "t", "T", "TRUE", "true", "True")
    raise ModelfileError(f"invalid {kind} value [{value}] for parameter '{name}'")


def modelfile_create_args(text: str) -> dict[str, Any]:
    """Parse a Modelfile into the shape ollama_create_args() returns, plus "from"
    (and "messages"/"adapters" when present), as the CLI's CreateRequest does."""
    out: dict[str, Any] = {}
    params: dict[str, Any] = {}
    licenses: list[str] = []
    for name, value in parse_modelfile(text):
        if name in ("from", "template", "system"):
            out[name] = value
        elif name == "license":
            licenses.append(value)
        elif name == "message":
            role, _, content = value.partition(": ")
            out.setdefault("messages", []).append({"role": role, "content": content})
        elif name in ("adapter", "draft", "renderer", "parser", "requires"):
            out[name] = value
        elif PARAMETER_KINDS[name] == "list":
            params.setdefault(name, []).append(value)
        else:
            params[name] = _typed(name, value)
    if params:
        out["parameters"] = params
    if licenses:
        out["license"] = licenses[0] if len(licenses) == 1 else licenses
    return out
