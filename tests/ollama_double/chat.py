"""/api/chat and /api/generate: the model's TEMPLATE rendered as Ollama's Go template would, the
GGUF blob run with llama-cpp-python, stop strings cut as Ollama's runner cuts them.

A mixin of OllamaDouble: it uses self.model(), self.model_blob(), self.store, self._gen_lock
and self._llamas.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

# llama_runtime only loads llama.cpp's CPU backend: nothing of loraship's validates here
from loraship.export import llama_runtime

from .blobs_manifests import Model
from .faults import HTTPError
from .gorender import GoTemplateError, render
from .params import DEFAULTS, check_options, name_of, now


class ChatAPI:
    def _prepare(self, body: dict):
        for key in ("format", "tools", "images", "suffix", "think"):
            if body.get(key):  # fail loudly rather than answer as if honoured
                raise HTTPError(501, f"the Ollama test double does not implement {key!r}")
        name = name_of(body, "model")
        if not name:
            raise HTTPError(400, "model is required")
        m = self.model(name, 404, f"model '{name}' not found")
        opts = {**DEFAULTS, **check_options(m.params(self.store), strict=False),
                **check_options(body.get("options"), strict=False)}
        return m, opts

    def chat(self, body: dict):
        m, opts = self._prepare(body)
        msgs = body.get("messages") or []
        if not isinstance(msgs, list) or not all(isinstance(x, dict) for x in msgs):
            raise HTTPError(400, "json: cannot unmarshal messages into []api.Message")
        head = {"model": body["model"]}
        if not msgs:
            return iter([{**head, "created_at": now(), "message": {"role": "assistant", "content": ""},
                          "done_reason": "load", "done": True}])
        # ChatHandler: the model's MESSAGEs, then the request's; the model's SYSTEM first unless the
        # request starts with a system message of its own.
        req = [{"role": x.get("role", ""), "content": x.get("content", "")} for x in msgs]
        conversation = [*json.loads(m.text(self.store, "messages") or "[]"), *req]
        system = m.text(self.store, "system") or ""
        if system and req[0]["role"] != "system":
            conversation.insert(0, {"role": "system", "content": system})
        prompt = self._render(m.text(self.store, "template") or "{{ .Prompt }}", conversation)
        return self._replies(m, prompt, opts, head, chat=True)

    def generate(self, body: dict):
        m, opts = self._prepare(body)
        head = {"model": body["model"]}
        prompt = body.get("prompt") or ""
        if not prompt:
            return iter([{**head, "created_at": now(), "response": "", "done": True,
                          "done_reason": "load"}])
        if not body.get("raw"):  # GenerateHandler: a system (the request's, else the model's), MESSAGEs, the prompt
            system = body.get("system") or m.text(self.store, "system") or ""
            conversation = [{"role": "system", "content": system}] if system else []
            conversation += json.loads(m.text(self.store, "messages") or "[]")
            conversation.append({"role": "user", "content": prompt})
            prompt = self._render(body.get("template") or m.text(self.store, "template") or "{{ .Prompt }}",
                                  conversation)
        return self._replies(m, prompt, opts, head, chat=False)

    def _render(self, template: str, conversation: list[dict]) -> str:
        try:
            prompt = render(template, conversation)
        except GoTemplateError as e:
            raise HTTPError(500, f"template: {e}") from None
        self.prompts.append(prompt)  # what the runner was given: the recordings' "completion request"
        return prompt

    def _replies(self, m: Model, prompt: str, opts: dict, head: dict, chat: bool):
        def chunk(text: str) -> dict:
            body = {"message": {"role": "assistant", "content": text}} if chat else {"response": text}
            return {**head, "created_at": now(), **body, "done": False}

        stats: dict[str, Any] = {}
        for piece in self._generate(self.model_blob(m), prompt, opts, stats):
            yield chunk(piece)
        final = {**chunk(""), "done": True, **stats}
        if not chat:
            final["context"] = final.pop("_tokens")
        final.pop("_tokens", None)
        yield final

    def _llama(self, path: Path, n_ctx: int) -> tuple[Any, int]:
        t0 = time.perf_counter_ns()
        key = (str(path), n_ctx)
        if key not in self._llamas:
            llama_cpp = llama_runtime.llama_cpp()  # loads the CPU backend a dispatch build needs
            self._llamas[key] = llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, verbose=False)
        return self._llamas[key], time.perf_counter_ns() - t0

    def _generate(self, path: Path, prompt: str, opts: dict, stats: dict):
        """Text pieces, with stop strings held back and cut as Ollama's runner does."""
        llama_cpp = llama_runtime.llama_cpp()
        start = time.perf_counter_ns()
        with self._gen_lock:
            llm, load_ns = self._llama(path, int(opts["num_ctx"]))
            tokens = llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)
            room = llm.n_ctx() - len(tokens)
            if room <= 0:
                raise HTTPError(500, f"prompt is {len(tokens)} tokens, more than num_ctx {llm.n_ctx()}")
            limit = min(room, opts["num_predict"]) if opts["num_predict"] > 0 else room
            seed = opts["seed"] if opts["seed"] >= 0 else random.randrange(2**31)
            llm.set_seed(seed)
            stops = list(opts["stop"] or [])
            out, pending, raw, count, reason = [], "", b"", 0, "length"
            t_eval = None
            for tok in llm.generate(tokens, top_k=int(opts["top_k"]), top_p=opts["top_p"],
                                    min_p=opts["min_p"], typical_p=opts["typical_p"],
                                    temp=opts["temperature"], repeat_penalty=opts["repeat_penalty"],
                                    presence_penalty=opts["presence_penalty"],
                                    frequency_penalty=opts["frequency_penalty"]):
                t_eval = t_eval or time.perf_counter_ns()
                if llama_cpp.llama_vocab_is_eog(llm._model.vocab, tok):
                    reason = "stop"
                    break
                count += 1
                out.append(tok)
                raw += llm.detokenize([tok], special=True)
                text, raw = _utf8_prefix(raw)
                pending += text
                cut = min((pending.find(s) for s in stops if s in pending), default=-1)
                if cut >= 0:
                    pending, reason = pending[:cut], "stop"
                    break
                hold = max((n for s in stops for n in range(len(s), 0, -1)
                            if pending.endswith(s[:n])), default=0)
                if len(pending) > hold:
                    yield pending[:len(pending) - hold]
                    pending = pending[len(pending) - hold:]
                if count >= limit:
                    break
            if pending:
                yield pending
            end = time.perf_counter_ns()
        t_eval = t_eval or end
        stats.update(done_reason=reason, total_duration=end - start, load_duration=load_ns,
                     prompt_eval_count=len(tokens), prompt_eval_duration=t_eval - start - load_ns,
                     eval_count=count, _tokens=tokens + out)
        if count > 1:  # the runner times the tokens after the first; 0 is left out (omitempty), as recorded
            stats["eval_duration"] = end - t_eval


def _utf8_prefix(raw: bytes) -> tuple[str, bytes]:
    """Decode what is complete; keep a trailing partial UTF-8 sequence for the next token."""
    for cut in range(len(raw), max(len(raw) - 4, -1), -1):
        try:
            return raw[:cut].decode("utf-8"), raw[cut:]
        except UnicodeDecodeError:
            continue
    return raw.decode("utf-8", "replace"), b""
