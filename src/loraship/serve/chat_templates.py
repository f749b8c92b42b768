"""Hugging Face chat template (Jinja) -> equivalent Ollama TEMPLATE (Go) and stop tokens.

Ollama falls back to `{{ .Prompt }}` when it cannot recognise a chat template, and a
fine-tune then rambles past its turn. So we never guess: the family is recognised by
its markers, its details (default system prompt, date line) are read by rendering the
Jinja template on probe conversations, and the Go template is accepted only when it
renders the probes exactly as the Jinja template does. Anything else raises.

Rules where Go and Jinja cannot agree, applied identically in every family:
- BOS: the Go template never writes the BOS token; llama.cpp prepends it when it
  tokenizes (tokenizer.ggml.add_bos_token). Comparisons strip one leading bos_token
  from the Jinja output.
- `| trim` in Jinja (llama3, gemma, gemma4) has no Go equivalent: message text is used as sent.
  The probes use text without surrounding whitespace.
- Families without a system role (gemma 1/2, Mistral v0.1/v0.2): .System (all system
  messages, joined by a blank line, as Ollama collates them) is prepended to the first
  user turn followed by a blank line - what Gemma 3's and Mistral's later templates do.
  Mistral v3 puts it on the final user turn, as its Jinja template does.
- Llama 3.1+ "Today Date": Go cannot read the clock, so the template's literal fallback
  date (the date Jinja uses without strftime_now) is written in.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from loraship.errors import ConfigError, ExportError, ToolchainError
from loraship.serve import gotemplate

UNKNOWN = "unknown chat template family; pass --template FILE with an Ollama Go template"

PROBE_USER = "What is the capital of France?"
PROBE_ASSISTANT = "The capital of France is Paris."
PROBE_USER_2 = "And of Italy?"
PROBE_SYSTEM = "You answer in one short sentence."
_SENTINEL = "Xq7-sentinel-Zr4"
_BOS = "<bos-sentinel-Qk9>"


@dataclass(frozen=True)
class ChatFormat:
    """What the Modelfile needs: the Go TEMPLATE and the stop strings."""

    family: str
    variant: str
    template: str
    stops: tuple[str, ...]
    system_rule: str


def _conversations() -> dict[str, list[dict]]:
    u1 = {"role": "user", "content": PROBE_USER}
    a1 = {"role": "assistant", "content": PROBE_ASSISTANT}
    u2 = {"role": "user", "content": PROBE_USER_2}
    s = {"role": "system", "content": PROBE_SYSTEM}
    return {"user": [u1], "user-assistant-user": [u1, a1, u2], "system-user": [s, u1],
            "system-user-assistant-user": [s, u1, a1, u2]}


# ------------------------------------------------------------- Jinja side

def hf_render(chat_template: str, messages: list[dict], *, bos_token: str = "",
              eos_token: str = "", add_generation_prompt: bool = True) -> str:
    """Render like transformers' apply_chat_template(tokenize=False), without strftime_now."""
    try:
        import jinja2
        from jinja2.ext import loopcontrols
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError as e:
        raise ToolchainError("jinja2 is needed to read the model's chat template: "
                             "pip install jinja2 (transformers brings it)") from e

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = raise_exception
    return env.from_string(chat_template).render(
        messages=messages, add_generation_prompt=add_generation_prompt,
        bos_token=bos_token, eos_token=eos_token)


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    import json

    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent,
                      separators=separators, sort_keys=sort_keys)


def _hf_or_none(chat_template: str, messages: list[dict], bos: str, eos: str) -> str | None:
    """The Jinja rendering minus the leading bos_token, or None when the template refuses
    the conversation. A sentinel stands in for bos_token so that only what the template
    writes *as* bos_token is stripped (SmolLM2's BOS text is <|im_start|>, which its
    template also writes as ordinary text)."""
    import jinja2

    try:
        out = hf_render(chat_template, messages, bos_token=_BOS, eos_token=eos)
    except jinja2.exceptions.TemplateError:
        return None
    out = out.removeprefix(_BOS)
    if _BOS in out and not bos:
        raise ExportError("the chat template writes bos_token between turns; pass the model's "
                          "BOS token text")
    return out.replace(_BOS, bos)


# ------------------------------------------------------------- Go side, per family

def _lit(text: str) -> str:
    """Template text for a literal; a Go string action when it would read as an action."""
    if "{{" not in text:
        return text
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return '{{ "' + escaped + '" }}'


def _chatml(default_system: str | None) -> str:
    default = ""
    if default_system is not None:
        default = ('{{- if and (eq $i 0) (ne .Role "system") }}<|im_start|>system\n'
                   + _lit(default_system) + "<|im_end|>\n{{ end }}")
    return ("{{- range $i, $_ := .Messages }}" + default
            + "<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n"
            "{{ end }}<|im_start|>assistant\n")


def _llama3() -> str:
    return ("{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n"
            "{{ .Content }}<|eot_id|>\n{{- end }}<|start_header_id|>assistant<|end_header_id|>\n\n")


def _llama31(preamble: str, always: bool) -> str:
    first_is_system = '(and .Messages (eq (index .Messages 0).Role "system"))'
    header = ("<|start_header_id|>system<|end_header_id|>\n\n" + _lit(preamble)
              + "{{ if " + first_is_system + " }}{{ (index .Messages 0).Content }}{{ end }}<|eot_id|>")
    if not always:
        header = "{{ if " + first_is_system + " }}" + header + "{{ end }}"
    return (header + "\n{{- range $i, $_ := .Messages }}"
            '{{ if not (and (eq $i 0) (eq .Role "system")) }}'
            "<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>"
            "{{ end }}{{ end }}<|start_header_id|>assistant<|end_header_id|>\n\n")


def _mistral(inst: str, close: str, assistant: str, eos: str, system_on: str) -> str:
    """inst/close wrap user turns; assistant + reply + eos; system_on: first | last."""
    if system_on == "last":
        cond, track = "(and $.System (eq (len (slice $.Messages $i)) 1))", ""
    else:
        cond, track = "(and $first $.System)", "{{ $first = false }}"
    return ("{{- $first := true }}{{ range $i, $_ := .Messages }}"
            '{{- if eq .Role "user" }}' + _lit(inst) + "{{ if " + cond + " }}{{ $.System }}\n\n{{ end }}"
            + track + "{{ .Content }}" + _lit(close)
            + '{{ else if eq .Role "assistant" }}' + _lit(assistant) + "{{ .Content }}" + _lit(eos)
            + "{{ end }}{{ end }}")


def _gemma() -> str:
    return ("{{- $first := true }}{{ range .Messages }}"
            '{{- if eq .Role "user" }}<start_of_turn>user\n'
            "{{ if and $first $.System }}{{ $.System }}\n\n{{ end }}{{ $first = false }}"
            "{{ .Content }}<end_of_turn>\n"
            '{{ else if eq .Role "assistant" }}<start_of_turn>model\n{{ .Content }}<end_of_turn>\n'
            "{{ end }}{{ end }}<start_of_turn>model\n")


def _gemma4(answer_prefix: str) -> str:
    """Gemma 4: <|turn>ROLE ... <turn|> with the assistant as "model"; system in place. The
    generation prompt opens the model's turn with what the Jinja template writes there (the
    empty thought channel when thinking is off), which history turns do not carry."""
    return ('{{- range .Messages }}<|turn>{{ if eq .Role "assistant" }}model{{ else }}{{ .Role }}{{ end }}\n'
            "{{ .Content }}<turn|>\n{{ end }}<|turn>model\n" + _lit(answer_prefix))


def _phi3(skip_empty_system: bool) -> str:
    system = "<|system|>\n{{ .Content }}<|end|>\n"
    if skip_empty_system:
        system = "{{ if .Content }}" + system + "{{ end }}"
    return ('{{- range .Messages }}{{ if eq .Role "system" }}' + system
            + '{{ else if eq .Role "user" }}<|user|>\n{{ .Content }}<|end|>\n'
            '{{ else if eq .Role "assistant" }}<|assistant|>\n{{ .Content }}<|end|>\n'
            "{{ end }}{{ end }}<|assistant|>\n")


_STOPS = {
    "chatml": ("<|im_end|>", "<|im_start|>"),
    "llama3": ("<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>"),
    "mistral": ("</s>", "[INST]", "[/INST]"),
    "gemma": ("<end_of_turn>", "<start_of_turn>"),
    "gemma4": ("<turn|>", "<|turn>"),
    "phi3": ("<|end|>", "<|system|>", "<|user|>", "<|assistant|>"),
}
_FIRST_USER = "prepended to the first user turn, then a blank line"


# ------------------------------------------------------------- detection

def _probe(t: str, msgs: list[dict], bos: str, eos: str) -> str:
    out = _hf_or_none(t, msgs, bos, eos)
    if out is None:
        raise ExportError(f"the chat template refuses a plain user turn; {UNKNOWN}")
    return out


def _user(text: str) -> dict:
    return {"role": "user", "content": text}


def _system(text: str) -> dict:
    return {"role": "system", "content": text}


def _detect_chatml(t: str, bos: str, eos: str) -> ChatFormat:
    out = _probe(t, [_user(PROBE_USER)], bos, eos)
    head = "<|im_start|>system\n"
    default = out[len(head):out.index("<|im_end|>")] if out.startswith(head) else None
    variant = "default-system" if default is not None else "plain"
    return ChatFormat("chatml", variant, _chatml(default), _STOPS["chatml"],
                      "system messages are rendered in place" +
                      (f"; without one the template's default ({default!r}) is used" if default else ""))


def _detect_llama3(t: str, bos: str, eos: str) -> ChatFormat:
    if "Cutting Knowledge Date" not in t:
        return ChatFormat("llama3", "llama3", _llama3(), _STOPS["llama3"],
                          "system messages are rendered in place")
    head = "<|start_header_id|>system<|end_header_id|>\n\n"
    with_system = _probe(t, [_system(_SENTINEL), _user(PROBE_USER)], bos, eos)
    if not with_system.startswith(head) or _SENTINEL not in with_system:
        raise ExportError(f"llama3-style template without a system header; {UNKNOWN}")
    preamble = with_system[len(head):with_system.index(_SENTINEL)]
    always = _probe(t, [_user(PROBE_USER)], bos, eos).startswith(head)
    return ChatFormat("llama3", "llama3.1" if always else "llama3.1-system-optional",
                      _llama31(preamble, always), _STOPS["llama3"],
                      "the first system message goes into the header block after the "
                      "knowledge/date lines; later ones are rendered in place")


def _detect_mistral(t: str, bos: str, eos: str) -> ChatFormat:
    conv = [_user("U1" + _SENTINEL), {"role": "assistant", "content": "A1" + _SENTINEL},
            _user("U2" + _SENTINEL)]
    out = _probe(t, conv, bos, eos)
    u1, a1, u2 = (out.find(m["content"]) for m in conv)
    if min(u1, a1, u2) < 0:
        raise ExportError(f"mistral-style template drops message text; {UNKNOWN}")
    inst = out[:u1]
    mid = out[u1 + len(conv[0]["content"]):a1]
    close = out[u2 + len(conv[2]["content"]):]
    suffix = out[a1 + len(conv[1]["content"]):u2 - len(inst)]
    if not mid.startswith(close) or not out[:u2].endswith(inst):
        raise ExportError(f"mistral-style template with an irregular turn layout; {UNKNOWN}")
    system_on, rule = _mistral_system(t, bos, eos)
    return ChatFormat("mistral", f"inst={inst!r} system={system_on}",
                      _mistral(inst, close, mid[len(close):], suffix, system_on),
                      _STOPS["mistral"], rule)


def _mistral_system(t: str, bos: str, eos: str) -> tuple[str, str]:
    conv = [_system(_SENTINEL), _user(PROBE_USER), {"role": "assistant", "content": PROBE_ASSISTANT},
            _user(PROBE_USER_2)]
    out = _hf_or_none(t, conv, bos, eos)
    if out is None:
        return "first", f"the Jinja template has no system role; .System is {_FIRST_USER}"
    if out.find(_SENTINEL) > out.find(PROBE_ASSISTANT):
        return "last", "system text is prepended to the final user turn, then a blank line"
    return "first", f"system text is {_FIRST_USER}"


def _detect_gemma(t: str, bos: str, eos: str) -> ChatFormat:
    supported = _hf_or_none(t, [_system(PROBE_SYSTEM), _user(PROBE_USER)], bos, eos) is not None
    rule = f".System is {_FIRST_USER}" + ("" if supported else
                                            " (this Jinja template refuses a system role)")
    return ChatFormat("gemma", "gemma3" if supported else "gemma", _gemma(), _STOPS["gemma"], rule)


def _detect_gemma4(t: str, bos: str, eos: str) -> ChatFormat:
    out = _probe(t, [_user(PROBE_USER)], bos, eos)
    head = "<|turn>model\n"
    if head not in out:
        raise ExportError(f"gemma4-style template without a model turn; {UNKNOWN}")
    answer_prefix = out[out.rindex(head) + len(head):]
    return ChatFormat("gemma4", "gemma4-thinking-off" if "<|channel>" in answer_prefix else "gemma4",
                      _gemma4(answer_prefix), _STOPS["gemma4"],
                      "system messages are rendered in place; the model's turn opens with "
                      f"{answer_prefix!r} as the Jinja template's generation prompt writes it")


def _detect_phi3(t: str, bos: str, eos: str) -> ChatFormat:
    out = _probe(t, [_system(""), _user(PROBE_USER)], bos, eos)
    skip = "<|system|>" not in out
    return ChatFormat("phi3", "phi3.5" if skip else "phi3", _phi3(skip), _STOPS["phi3"],
                      "system messages are rendered in place" + (" unless empty" if skip else ""))


_FAMILIES = (
    ("chatml", ("<|im_start|>", "<|im_end|>"), _detect_chatml),
    ("llama3", ("<|start_header_id|>", "<|eot_id|>"), _detect_llama3),
    ("gemma", ("<start_of_turn>", "<end_of_turn>"), _detect_gemma),
    ("gemma4", ("<|turn>", "<turn|>"), _detect_gemma4),
    ("phi3", ("<|user|>", "<|end|>"), _detect_phi3),
    ("mistral", ("[INST]", "[/INST]"), _detect_mistral),
)


def derive_chat_format(chat_template: str, *, bos_token: str = "",
                       eos_token: str = "") -> ChatFormat:
    """The Ollama TEMPLATE and stops for a Hugging Face chat template, verified by rendering."""
    if not isinstance(chat_template, str) or not chat_template.strip():
        raise ExportError(f"the model has no chat template; {UNKNOWN}")
    if "eos_token" in chat_template and not eos_token:
        raise ExportError("the chat template writes eos_token; pass the model's EOS token text "
                          "(tokenizer.ggml.eos_token_id in the GGUF)")
    matches = [f for f in _FAMILIES if all(m in chat_template for m in f[1])]
    if len(matches) != 1:
        found = ", ".join(f[0] for f in matches) or "none"
        raise ExportError(f"{UNKNOWN} (family markers found: {found})")
    fmt = matches[0][2](chat_template, bos_token, eos_token)
    verify_chat_format(chat_template, fmt, bos_token=bos_token, eos_token=eos_token)
    return fmt


def verify_chat_format(chat_template: str, fmt: ChatFormat, *, bos_token: str = "",
                       eos_token: str = "") -> None:
    """Raise unless the Go template renders every probe conversation as Jinja does."""
    for name, conv in _conversations().items():
        want = _hf_or_none(chat_template, conv, bos_token, eos_token)
        if want is None:
            if conv[0]["role"] == "system":
                continue  # no system role in Jinja; the documented rule applies instead
            raise ExportError(f"the chat template refuses a {name} conversation; {UNKNOWN}")
        got = gotemplate.ollama_prompt(fmt.template, conv)
        if got != want:
            at = next((i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b),
                      min(len(got), len(want)))
            raise ExportError(
                f"looks like {fmt.family} but the Go template renders the {name} conversation "
                f"differently at char {at} (Go {got[at:at + 30]!r}, Jinja {want[at:at + 30]!r}); "
                f"{UNKNOWN}")


def custom_chat_format(template_file: str | Path, stops: list[str] | tuple[str, ...]) -> ChatFormat:
    """A user's own Ollama Go template (--template FILE); it must parse and execute."""
    path = Path(template_file)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"--template {path}: cannot read it ({e.__class__.__name__})") from e
    try:
        tmpl = gotemplate.parse(text)
        ids = tmpl.identifiers()
        if "messages" not in ids and "prompt" not in ids:
            raise ConfigError(f"--template {path}: it reads neither .Messages nor .Prompt, "
                              "so the user's text would never reach the model")
        gotemplate.ollama_prompt(text, _conversations()["system-user-assistant-user"])
    except gotemplate.TemplateError as e:
        raise ConfigError(f"--template {path}: {e}") from e
    stops = tuple(stops or ())
    if not stops or not all(isinstance(s, str) and s for s in stops):
        raise ConfigError(f"--template {path}: pass the end-of-turn marker(s) with --stop, "
                          "or the model will not stop at the end of its turn")
    return ChatFormat("custom", path.name, text, stops, "as written in the template")


def resolve_chat_format(chat_template: str | None, *, template_file: str | Path | None = None,
                        stops: list[str] | None = None, bos_token: str = "",
                        eos_token: str = "") -> ChatFormat:
    """--template FILE wins; else derive from the model's own chat template."""
    if template_file is not None:
        return custom_chat_format(template_file, stops or ())
    fmt = derive_chat_format(chat_template or "", bos_token=bos_token, eos_token=eos_token)
    if stops:
        fmt = ChatFormat(fmt.family, fmt.variant, fmt.template, tuple(stops), fmt.system_rule)
    return fmt


# ------------------------------------------------------------- from a GGUF file

def gguf_chat_metadata(path: str | Path) -> tuple[str | None, str, str]:
    """(chat_template, bos_token, eos_token) as written in a GGUF's metadata (read with gguf-py)."""
    from loraship.export.gguf_tools import describe

    info = describe(Path(path))
    return info["chat_template"], info["bos_token"] or "", info["eos_token"] or ""
