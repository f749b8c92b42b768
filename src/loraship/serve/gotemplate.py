"""A strict renderer for the subset of Go text/template that Ollama TEMPLATEs use.

Why not a regex or Jinja: the TEMPLATE we write is executed by Go on the server, so the
only useful check is one that evaluates it the way Go does (whitespace trim markers,
`$` scoping, `and`/`or` returning operands, missing map keys as `<no value>`).
Anything outside the subset raises TemplateError instead of rendering something else.

Supported: text, `{{ pipeline }}`, `{{- -}}` trim markers, `{{/* comments */}}`,
if / else if / else / end, range (with `$i, $m :=` and else), `$x := ...`, `$x = ...`,
fields (`.Role`, `$.System`, `$m.Content`, `(expr).Field`), string/number/bool/nil
literals, parentheses and the functions eq ne lt le gt ge and or not len slice index json.

`render()` is plain Go execution; `ollama_prompt()` adds what an Ollama server does
around it (collating messages, the legacy .Prompt/.Response path).
"""

from __future__ import annotations

import ast
import json
import re
from collections import namedtuple
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from loraship.errors import ConfigError


class TemplateError(ConfigError):
    """A Go template uses something this renderer does not support, or fails to execute."""


_SPACE = " \t\r\n"
# What Ollama's server puts in the template's data map; other names are typos.
TOP_LEVEL_KEYS = ("System", "Prompt", "Response", "Messages", "Tools", "Suffix", "Think",
                  "IsThinkSet", "Query", "Document", "Instruction")
_MESSAGE_FIELDS = ("Role", "Content", "Thinking", "Images", "ToolCalls", "ToolName")
_KEYWORDS = {"if", "else", "end", "range", "with", "define", "template", "block", "break",
             "continue"}
_FUNCS = {"eq", "ne", "lt", "le", "gt", "ge", "and", "or", "not", "len", "slice", "index", "json"}


@dataclass
class Message:
    """Mirrors the fields of Ollama's api.Message that a template may read."""

    Role: str
    Content: str
    Thinking: str = ""
    Images: list = field(default_factory=list)
    ToolCalls: list = field(default_factory=list)
    ToolName: str = ""


# ---------------------------------------------------------------- lexer

class _Tok(NamedTuple):
    kind: str   # field var dot str num bool nil ident ( ) , := = | space
    value: Any
    line: int


def _fail(msg: str, line: int) -> TemplateError:
    return TemplateError(f"template line {line}: {msg}")


def _space_at(src: str, k: int) -> bool:
    return k < len(src) and src[k] in _SPACE


def _split(src: str) -> list[tuple[str, Any, int]]:
    """Text and action items with trim markers already applied to the text."""
    items: list[tuple[str, Any, int]] = []
    pos, trim_next = 0, False
    while True:
        start = src.find("{{", pos)
        text = src[pos:] if start < 0 else src[pos:start]
        if trim_next:
            text = text.lstrip(_SPACE)
        line = src.count("\n", 0, pos) + 1
        if start < 0:
            items.append(("text", text, line))
            return items
        i = start + 2
        if src[i:i + 1] == "-" and _space_at(src, i + 1):
            text = text.rstrip(_SPACE)
            i += 2
        items.append(("text", text, line))
        line = src.count("\n", 0, start) + 1
        if src.startswith("/*", i):
            end = src.find("*/", i)
            if end < 0:
                raise _fail("unclosed comment", line)
            j = end + 2
            trim_next = _space_at(src, j) and src.startswith("-}}", j + 1)
            close = j + 2 if trim_next else j
            if not src.startswith("}}", close):
                raise _fail("comment ends before closing delimiter", line)
            pos = close + 2
            continue
        toks, pos, trim_next = _lex_action(src, i, line)
        items.append(("action", toks, line))


_TOKEN = re.compile(r"""
    (?P<space>[ \t\r\n]+) | (?P<op>:=|[(),|=]) | (?P<str>"(?:[^"\\\n]|\\.)*") | (?P<raw>`[^`]*`)
  | (?P<field>\.[A-Za-z_][A-Za-z0-9_]*) | (?P<dot>\.) | (?P<var>\$[A-Za-z0-9_]*)
  | (?P<num>[-+]?[0-9][0-9A-Za-z_.]*(?:[eEpP][-+][0-9]+)?) | (?P<word>[A-Za-z_][A-Za-z0-9_]*)
""", re.VERBOSE)


def _lex_action(src: str, i: int, line: int) -> tuple[list[_Tok], int, bool]:
    """Tokens of one action up to its `}}` (or ` -}}`, which trims the text after it)."""
    toks: list[_Tok] = []
    while True:
        if src.startswith("}}", i):
            return toks, i + 2, False
        m = _TOKEN.match(src, i)
        if m is None:
            if i >= len(src):
                raise _fail("unclosed action: missing '}}'", line)
            if src[i] in "\"`":
                raise _fail("unterminated quoted string", line)
            raise _fail(f"unexpected character {src[i]!r} in action", line)
        kind, text, i = m.lastgroup, m.group(), m.end()
        if kind == "space":
            if src.startswith("-}}", i):  # the last space belongs to the trim marker
                return toks + [_Tok("space", None, line)] * (len(text) > 1), i + 3, True
            toks.append(_Tok("space", None, line))
        else:
            toks.append(_Tok(*_token_value(kind, text, line), line))


def _token_value(kind: str, text: str, line: int) -> tuple[str, Any]:
    if kind == "op":
        return text, text
    if kind == "str":
        if "\\'" in text:
            raise _fail(f"unknown escape sequence in {text}", line)
        try:  # Go and Python share these escapes (\n \t \\ \" \xHH \uHHHH ...)
            return "str", ast.literal_eval(text)
        except (SyntaxError, ValueError):
            raise _fail(f"bad string literal {text}", line) from None
    if kind == "raw":
        return "str", text[1:-1]
    if kind == "field":
        return "field", text[1:]
    if kind == "num":
        try:
            return "num", int(text, 0)
        except ValueError:
            try:
                return "num", float(text)
            except ValueError:
                raise _fail(f"bad number syntax: {text!r}", line) from None
    if kind == "word" and text in ("true", "false"):
        return "bool", text == "true"
    if kind == "word":
        return ("nil", None) if text == "nil" else ("ident", text)
    return kind, text  # dot, var


# ---------------------------------------------------------------- parser

# The syntax tree; `names` are trailing field selectors (.A.B).
class _Pipe(NamedTuple):
    decl: list[str]     # variables declared or assigned by the action
    assign: bool        # `=` rather than `:=`
    args: list[Any]     # one command: a function and its operands, or a single operand
    line: int


_Field = namedtuple("_Field", "names")
_Var = namedtuple("_Var", "name names")
_Dot = namedtuple("_Dot", "")
_Lit = namedtuple("_Lit", "value")
_Func = namedtuple("_Func", "name")
_Sub = namedtuple("_Sub", "pipe names")          # (pipeline).Field
_Text = namedtuple("_Text", "text")
_Action = namedtuple("_Action", "pipe")
_If = namedtuple("_If", "pipe body orelse")
_Range = namedtuple("_Range", "pipe body orelse")


class _Parser:
    def __init__(self, src: str) -> None:
        self.items = _split(src)
        self.pos = 0
        self.scopes: list[list[str]] = [["$"]]

    def parse(self) -> list[Any]:
        nodes, stop = self.parse_list()
        if stop is not None:
            raise _fail(f"unexpected {{{{{stop[0]}}}}}", stop[1])
        return nodes

    def parse_list(self) -> tuple[list[Any], tuple[str, int, list[_Tok]] | None]:
        """Nodes up to an {{else}} or {{end}} (returned as the stop) or the end of input."""
        nodes: list[Any] = []
        while self.pos < len(self.items):
            kind, value, line = self.items[self.pos]
            self.pos += 1
            if kind == "text":
                if value:
                    nodes.append(_Text(value))
                continue
            toks = _strip_spaces(value)
            if not toks:
                raise _fail("missing value for command", line)
            head = toks[0]
            if head.kind == "ident" and head.value in ("else", "end"):
                return nodes, (head.value, line, toks[1:])
            nodes.append(self.parse_action(toks, line))
        return nodes, None

    def parse_action(self, toks: list[_Tok], line: int) -> Any:
        head = toks[0]
        if head.kind == "ident" and head.value in ("if", "range"):
            return self.parse_control(head.value, _strip_spaces(toks[1:]), line)
        if head.kind == "ident" and head.value in _KEYWORDS:
            raise _fail(f"{{{{{head.value}}}}} is not supported in Ollama templates here", line)
        return _Action(self.parse_pipe(toks, line, allow_two=False))

    def parse_control(self, word: str, toks: list[_Tok], line: int) -> Any:
        self.scopes.append([])
        pipe = self.parse_pipe(toks, line, allow_two=word == "range")
        body, stop = self.parse_list()
        orelse = None
        if stop is None:
            raise _fail(f"unexpected EOF: {{{{{word}}}}} has no {{{{end}}}}", line)
        if stop[0] == "else":
            rest = _strip_spaces(stop[2])
            if rest and rest[0].kind == "ident" and rest[0].value == "if":
                # `else if` is an if nested in the else branch that shares this {{end}}
                orelse = [self.parse_control("if", _strip_spaces(rest[1:]), stop[1])]
            elif rest:
                raise _fail("only {{else}} and {{else if ...}} are supported", stop[1])
            else:
                orelse, stop2 = self.parse_list()
                if stop2 is None or stop2[0] != "end":
                    raise _fail(f"{{{{{word}}}}} needs {{{{end}}}} after {{{{else}}}}", stop[1])
        elif stop[2]:
            raise _fail("unexpected words after {{end}}", stop[1])
        self.scopes.pop()
        cls = _If if word == "if" else _Range
        return cls(pipe, body, orelse)

    def parse_pipe(self, toks: list[_Tok], line: int, allow_two: bool) -> _Pipe:
        decl, assign, toks = self.parse_decl(toks, line, allow_two)
        if any(t.kind == "|" for t in toks):
            raise _fail("pipelines with '|' are not supported; call functions with arguments", line)
        args = self.parse_args(toks, line)
        if not args:
            raise _fail("missing value for command", line)
        if not isinstance(args[0], _Func) and len(args) > 1:
            raise _fail("can't give argument to non-function", line)
        for name in decl:
            if not assign:
                self.scopes[-1].append(name)
        return _Pipe(decl, assign, args, line)

    def parse_decl(self, toks: list[_Tok], line: int, allow_two: bool):
        kinds = [t.kind for t in toks if t.kind != "space"]
        names = [t.value for t in toks if t.kind == "var"]
        if len(kinds) >= 2 and kinds[0] == "var" and kinds[1] in (":=", "="):
            cut = next(i for i, t in enumerate(toks) if t.kind in (":=", "="))
            op = toks[cut].kind
            decl = [names[0]]
        elif allow_two and kinds[:4] == ["var", ",", "var", ":="]:
            cut = next(i for i, t in enumerate(toks) if t.kind == ":=")
            op, decl = ":=", names[:2]
        else:
            return [], False, toks
        if op == "=":
            for name in decl:
                self.check_var(name, line)
        return decl, op == "=", _strip_spaces(toks[cut + 1:])

    def check_var(self, name: str, line: int) -> None:
        if not any(name in scope for scope in self.scopes):
            raise _fail(f"undefined variable {name!r}", line)

    def parse_args(self, toks: list[_Tok], line: int) -> list[Any]:
        args: list[Any] = []
        i = 0
        while i < len(toks):
            if toks[i].kind == "space":
                i += 1
                continue
            node, i = self.parse_operand(toks, i, line)
            args.append(node)
            if i < len(toks) and toks[i].kind not in ("space", ")"):
                raise _fail(f"unexpected {toks[i].value!r} in operand", line)
        return args

    def parse_operand(self, toks: list[_Tok], i: int, line: int) -> tuple[Any, int]:
        t = toks[i]
        i += 1
        if t.kind == "(":
            depth, j = 1, i
            while j < len(toks) and depth:
                depth += {"(": 1, ")": -1}.get(toks[j].kind, 0)
                j += 1
            if depth:
                raise _fail("unclosed left paren", line)
            sub = self.parse_pipe(_strip_spaces(toks[i:j - 1]), line, allow_two=False)
            if sub.decl:
                raise _fail("variable declarations inside parentheses are not supported", line)
            names, i = _trailing_fields(toks, j)
            return _Sub(sub, names), i
        names, i2 = _trailing_fields(toks, i)
        if t.kind == "field":
            return _Field([t.value, *names]), i2
        if t.kind == "var":
            self.check_var(t.value, line)
            return _Var(t.value, names), i2
        if names:
            raise _fail(f"can't read a field of {t.value!r}", line)
        if t.kind == "dot":
            return _Dot(), i
        if t.kind in ("str", "num", "bool", "nil"):
            return _Lit(t.value), i
        if t.kind == "ident":
            if t.value not in _FUNCS:
                raise _fail(f"function {t.value!r} not defined (supported: {', '.join(sorted(_FUNCS))})", line)
            return _Func(t.value), i
        raise _fail(f"unexpected {t.value!r} in operand", line)


def _trailing_fields(toks: list[_Tok], i: int) -> tuple[list[str], int]:
    names = []
    while i < len(toks) and toks[i].kind == "field":
        names.append(toks[i].value)
        i += 1
    return names, i


def _strip_spaces(toks: list[_Tok]) -> list[_Tok]:
    lo, hi = 0, len(toks)
    while lo < hi and toks[lo].kind == "space":
        lo += 1
    while hi > lo and toks[hi - 1].kind == "space":
        hi -= 1
    return toks[lo:hi]


# ---------------------------------------------------------------- execution

class _Exec:
    def __init__(self, data: Any) -> None:
        self.vars: list[list[Any]] = [["$", data]]
        self.out: list[str] = []

    def walk(self, nodes: list[Any], dot: Any) -> None:
        for node in nodes:
            if isinstance(node, _Text):
                self.out.append(node.text)
            elif isinstance(node, _Action):
                value = self.pipe(node.pipe, dot)
                if not node.pipe.decl:
                    self.out.append(_print(value, node.pipe.line))
            elif isinstance(node, _If):
                mark = len(self.vars)
                branch = node.body if _truth(self.pipe(node.pipe, dot)) else node.orelse
                self.walk(branch or [], dot)
                del self.vars[mark:]
            else:
                self.range(node, dot)

    def range(self, node: _Range, dot: Any) -> None:
        mark = len(self.vars)
        seq = self.pipe(node.pipe, dot)
        if isinstance(seq, dict):
            pairs = sorted(seq.items())
        elif isinstance(seq, list):
            pairs = list(enumerate(seq))
        elif seq is None:
            pairs = []
        else:
            raise _fail(f"range can't iterate over {_type(seq)}", node.pipe.line)
        for key, elem in pairs:
            names = node.pipe.decl
            if len(names) == 2:
                self.set_top(2, key)
            if names:
                self.set_top(1, elem)
            inner = len(self.vars)
            self.walk(node.body, elem)
            del self.vars[inner:]
        if not pairs and node.orelse:
            self.walk(node.orelse, dot)
        del self.vars[mark:]

    def set_top(self, n: int, value: Any) -> None:
        self.vars[-n][1] = value

    def pipe(self, pipe: _Pipe, dot: Any) -> Any:
        value = self.command(pipe.args, dot, pipe.line)
        if pipe.assign:
            for slot in reversed(self.vars):
                if slot[0] == pipe.decl[0]:
                    slot[1] = value
                    break
        else:
            for name in pipe.decl:
                self.vars.append([name, value])
        return value

    def command(self, args: list[Any], dot: Any, line: int) -> Any:
        if isinstance(args[0], _Lit) and args[0].value is None:
            raise _fail("nil is not a command", line)
        if isinstance(args[0], _Func):
            return _call(args[0].name, args[1:], lambda a: self.arg(a, dot, line), line)
        return self.arg(args[0], dot, line)

    def arg(self, node: Any, dot: Any, line: int) -> Any:
        if isinstance(node, _Lit):
            return node.value
        if isinstance(node, _Dot):
            return dot
        if isinstance(node, _Field):
            return _fields(dot, node.names, line)
        if isinstance(node, _Var):
            for name, value in reversed(self.vars):
                if name == node.name:
                    return _fields(value, node.names, line)
            raise _fail(f"undefined variable {node.name!r}", line)
        if isinstance(node, _Sub):
            return _fields(self.command(node.pipe.args, dot, line), node.names, line)
        return _call(node.name, [], lambda a: self.arg(a, dot, line), line)


def _fields(value: Any, names: list[str], line: int) -> Any:
    for name in names:
        value = _field(value, name, line)
    return value


def _field(value: Any, name: str, line: int) -> Any:
    if isinstance(value, dict):
        if name in value:
            return value[name]
        if name in TOP_LEVEL_KEYS:
            return None  # Ollama's map[string]any with missingkey=zero
        raise _fail(f"unknown field .{name}; Ollama provides {', '.join(TOP_LEVEL_KEYS)}", line)
    if isinstance(value, Message):
        if name not in _MESSAGE_FIELDS:
            raise _fail(f"can't evaluate field {name} in type *api.Message", line)
        return getattr(value, name)
    if value is None:
        raise _fail(f"nil pointer evaluating .{name}", line)
    raise _fail(f"can't evaluate field {name} in type {_type(value)}", line)


def _type(value: Any) -> str:
    return {str: "string", bool: "bool", int: "int", float: "float64", list: "slice",
            dict: "map", Message: "api.Message"}.get(type(value), type(value).__name__)


def _truth(value: Any) -> bool:
    if isinstance(value, Message):
        return True
    return bool(value)


def _print(value: Any, line: int) -> str:
    if value is None:
        return "<no value>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, int)):
        return str(value)
    if isinstance(value, float):
        return repr(value) if not value.is_integer() else str(int(value))
    raise _fail(f"refusing to print a {_type(value)} value; print one of its fields", line)


# ---------------------------------------------------------------- functions

def _call(name: str, args: list[Any], ev, line: int) -> Any:
    if name in ("and", "or"):
        if not args:
            raise _fail(f"wrong number of args for {name}: want at least 1 got 0", line)
        for a in args:  # Go 1.18+: short-circuit, the result is an operand
            value = ev(a)
            if _truth(value) != (name == "and"):
                return value
        return value
    values = [ev(a) for a in args]
    if name == "not":
        _arity(name, values, 1, line)
        return not _truth(values[0])
    if name in ("eq", "ne", "lt", "le", "gt", "ge"):
        return _compare(name, values, line)
    if name == "len":
        _arity(name, values, 1, line)
        if isinstance(values[0], str):
            return len(values[0].encode("utf-8"))
        if isinstance(values[0], (list, dict)):
            return len(values[0])
        raise _fail(f"len of {_type(values[0])}", line)
    if name == "slice":
        return _slice(values, line)
    if name == "index":
        return _index(values, line)
    _arity(name, values, 1, line)
    return go_json(values[0])


def _arity(name: str, values: list[Any], n: int, line: int) -> None:
    if len(values) != n:
        raise _fail(f"wrong number of args for {name}: want {n} got {len(values)}", line)


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    return "invalid"


def _eq(a: Any, b: Any, line: int) -> bool:
    if a is None or b is None:  # Go: a missing value equals only another missing value
        return (a is None) == (b is None)
    return _cmp(a, b, line) == 0


def _compare(name: str, values: list[Any], line: int) -> bool:
    if name == "eq":
        if len(values) < 2:
            raise _fail("missing argument for comparison", line)
        return any(_eq(values[0], v, line) for v in values[1:])
    _arity(name, values, 2, line)
    a, b = values
    if name == "ne":
        return not _eq(a, b, line)
    if _kind(a) == "bool":
        raise _fail("invalid type for comparison", line)
    c = _cmp(a, b, line)
    return {"lt": c < 0, "le": c <= 0, "gt": c > 0, "ge": c >= 0}[name]


def _cmp(a: Any, b: Any, line: int) -> int:
    ka, kb = _kind(a), _kind(b)
    if "invalid" in (ka, kb):
        raise _fail("invalid type for comparison", line)
    if ka != kb:
        raise _fail("incompatible types for comparison", line)
    return (a > b) - (a < b)


def _ints(values: list[Any], line: int) -> list[int]:
    if not all(_kind(v) == "int" for v in values):
        raise _fail("cannot index slice/array with a non-integer", line)
    return values


def _slice(values: list[Any], line: int) -> Any:
    if not 1 <= len(values) <= 3:
        raise _fail(f"wrong number of args for slice: want 1 to 3 got {len(values)}", line)
    item, idx = values[0], _ints(values[1:], line)
    if not isinstance(item, (list, str)):
        raise _fail(f"can't slice item of type {_type(item)}", line)
    seq = item.encode("utf-8") if isinstance(item, str) else item
    lo = idx[0] if idx else 0
    hi = idx[1] if len(idx) > 1 else len(seq)
    if not 0 <= lo <= hi <= len(seq) or len(idx) == 3:
        raise _fail(f"index out of range: slice [{lo}:{hi}] of length {len(seq)}", line)
    out = seq[lo:hi]
    return out.decode("utf-8", "replace") if isinstance(item, str) else out


def _index(values: list[Any], line: int) -> Any:
    if not values:
        raise _fail("wrong number of args for index: want at least 1 got 0", line)
    item = values[0]
    for key in values[1:]:
        if isinstance(item, list):
            (k,) = _ints([key], line)
            if not 0 <= k < len(item):
                raise _fail(f"error calling index: index out of range: {k}", line)
            item = item[k]
        elif isinstance(item, dict):
            item = item.get(key)
        else:
            raise _fail(f"can't index item of type {_type(item)}", line)
    return item


def go_json(value: Any) -> str:
    """encoding/json.Marshal output: compact, and <, >, & escaped as Go does."""
    if isinstance(value, Message):
        value = {"role": value.Role, "content": value.Content}
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    for raw, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                     ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(raw, esc)
    return text


# ---------------------------------------------------------------- public API

class GoTemplate:
    """A parsed template; parse once, execute many times."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.nodes = _Parser(source).parse()

    def execute(self, data: Any) -> str:
        run = _Exec(data)
        run.walk(self.nodes, data)
        return "".join(run.out)

    def identifiers(self) -> set[str]:
        """Lower-cased names the template reads, as Ollama's Template.Vars() computes them."""
        found: set[str] = set()
        _collect(self.nodes, found)
        return {n.lower() for n in found}


def _collect(nodes: list[Any], found: set[str]) -> None:
    for n in nodes:
        if isinstance(n, _Action):
            _collect_args(n.pipe.args, found)
        elif isinstance(n, (_If, _Range)):
            _collect_args(n.pipe.args, found)
            _collect(n.body, found)
            _collect(n.orelse or [], found)


def _collect_args(args: list[Any], found: set[str]) -> None:
    for a in args:
        if isinstance(a, _Field):
            found.update(a.names)
        elif isinstance(a, _Var):
            found.update([a.name, *a.names])
        elif isinstance(a, _Sub):
            _collect_args(a.pipe.args, found)


def parse(template: str) -> GoTemplate:
    if not isinstance(template, str):
        raise TemplateError(f"template must be text, got {type(template).__name__}")
    return GoTemplate(template)


def to_messages(messages: list[Any] | None) -> list[Message]:
    """Accept {"Role","Content"} or {"role","content"} dicts (or Message objects)."""
    out = []
    for i, m in enumerate(messages or []):
        if isinstance(m, Message):
            out.append(m)
            continue
        role = m.get("Role", m.get("role")) if isinstance(m, dict) else None
        content = m.get("Content", m.get("content", "")) if isinstance(m, dict) else None
        if not isinstance(role, str) or not isinstance(content, str):
            raise TemplateError(f"message {i} needs a string role and content, got {m!r}")
        out.append(Message(Role=role, Content=content))
    return out


def render(template: str, data: dict) -> str:
    """Execute `template` with Go semantics over data (System, Prompt, Response, Messages...)."""
    unknown = sorted(set(data) - set(TOP_LEVEL_KEYS))
    if unknown:
        raise TemplateError(f"data keys {unknown} are not values Ollama passes to a template")
    values = dict(data)
    if "Messages" in values:
        values["Messages"] = to_messages(values["Messages"])
    return parse(template).execute(values)


_RESPONSE = _Action(_Pipe([], False, [_Field(["Response"])], 0))


def ollama_prompt(template: str, messages: list[Any]) -> str:
    """The prompt text Ollama's Template.Execute builds for these messages.

    Templates that read .Messages see all (collated) messages plus .System, the system
    messages joined by a blank line; other templates run once per user/assistant turn
    with .System/.Prompt/.Response and the last run is cut after its {{ .Response }}.
    """
    tmpl = parse(template)
    ids = tmpl.identifiers()
    if "messages" not in ids and "response" not in ids:
        tmpl.nodes = [*tmpl.nodes, _RESPONSE]  # Ollama appends {{ .Response }} likewise
    system, msgs = _collate(to_messages(messages))
    if "messages" in ids or "document" in ids:
        return tmpl.execute({"System": system, "Messages": msgs, "Tools": [], "Response": "",
                             "Think": False, "IsThinkSet": False, "Query": "",
                             "Document": "", "Instruction": ""})
    return _legacy(tmpl, msgs)


def _collate(msgs: list[Message]) -> tuple[str, list[Message]]:
    system = [m.Content for m in msgs if m.Role == "system"]
    out: list[Message] = []
    for m in msgs:
        if out and out[-1].Role == m.Role and m.Role != "tool":
            out[-1] = Message(Role=m.Role, Content=out[-1].Content + "\n\n" + m.Content)
        else:
            out.append(Message(Role=m.Role, Content=m.Content))
    return "\n\n".join(system), out


def _legacy(tmpl: GoTemplate, msgs: list[Message]) -> str:
    parts: list[str] = []
    turn = {"System": "", "Prompt": "", "Response": ""}

    def flush() -> None:
        parts.append(tmpl.execute(dict(turn, Think=False, IsThinkSet=False)))
        turn.update(System="", Prompt="", Response="")

    for m in msgs:
        if m.Role == "system":
            if turn["Prompt"] or turn["Response"]:
                flush()
            turn["System"] = m.Content
        elif m.Role == "user":
            if turn["Response"]:
                flush()
            turn["Prompt"] = m.Content
        elif m.Role == "assistant":
            turn["Response"] = m.Content
    last = GoTemplate.__new__(GoTemplate)
    last.source, last.nodes = tmpl.source, _cut_after_response(tmpl.nodes)
    parts.append(last.execute(dict(turn, Think=False, IsThinkSet=False)))
    return "".join(parts)


def _cut_after_response(nodes: list[Any]) -> list[Any]:
    """Ollama's deleteNode: drop everything after the first {{ .Response }} so the model
    continues from there."""
    cut = [False]

    def walk_list(items: list[Any]) -> list[Any]:
        return [r for r in (walk(n) for n in items) if r is not None]

    def walk(n: Any) -> Any:
        if cut[0]:
            return None
        if isinstance(n, _Text):
            return n
        if isinstance(n, (_If, _Range)):
            body = walk_list(n.body)
            orelse = None if cut[0] or n.orelse is None else walk_list(n.orelse)
            return type(n)(n.pipe, body, orelse)
        args = walk_args(n.pipe.args)
        return _Action(_Pipe(n.pipe.decl, n.pipe.assign, args, n.pipe.line)) if args else None

    def walk_args(args: list[Any]) -> list[Any]:
        kept = []
        for a in args:
            if isinstance(a, _Field) and "Response" in a.names:
                cut[0] = True
                kept.append(a)
            elif not cut[0]:
                kept.append(a)
        return kept

    return walk_list(nodes)


def ollama_chat_prompt(template: str, messages: list[Any], *, model_system: str = "",
                       model_messages: list[Any] | None = None) -> str:
    """What /api/chat feeds the model: the model's MESSAGEs first, and its SYSTEM when the
    request does not start with a system message."""
    req = to_messages(messages)
    msgs = [*to_messages(model_messages), *req]
    if model_system and (not req or req[0].Role != "system"):
        msgs.insert(0, Message(Role="system", Content=model_system))
    return ollama_prompt(template, msgs)


def ollama_generate_prompt(template: str, prompt: str, *, system: str = "",
                           model_system: str = "",
                           model_messages: list[Any] | None = None) -> str:
    """What /api/generate (raw false) feeds the model for one prompt."""
    msgs: list[Message] = []
    if system or model_system:
        msgs.append(Message(Role="system", Content=system or model_system))
    msgs += to_messages(model_messages)
    msgs.append(Message(Role="user", Content=prompt))
    return ollama_prompt(template, msgs)
