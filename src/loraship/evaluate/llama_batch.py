"""k answers to one prompt decoded together: one llama.cpp context, k sequences.

The prompt is evaluated once and shared by every sequence (its tokens carry all k sequence
ids in one batch); each step then decodes one token of every unfinished sequence in a single
`llama_decode`, so the model's weights are read once per step for all k answers instead of k
times. Each sequence has its own sampler chain and seed.

The chain is Ollama's own sampler (its `sample` package: top_k -> temperature -> softmax ->
top_p -> min_p -> draw), with Ollama's defaults for what is not set: top_k 40, top_p 0.9,
min_p 0; temperature 0 is greedy. So a sampled answer here is drawn as a person chatting
with the served tag gets one, not with llama-cpp-python's own defaults (min_p 0.05, top_p
0.95, temperature applied last).

What is and is not the same as one answer at a time: one sequence decoded here is token for
token create_chat_completion's answer (same context settings, same prompt; tested). k
sequences in one batch are reproducible for the same seeds, but llama.cpp is not
batch-invariant (each sequence's attention sums over its own cells of the shared cache), so
where two tokens are nearly tied a sequence may go another way than it would alone: float
noise of the size that already separates two CPUs, which moves no expected share.

The prompt is the one `Llama.create_chat_completion` renders from the GGUF's own chat
template (llama-cpp-python's Jinja2ChatFormatter, as it builds its default handler), and an
answer ends, as there, at an end-of-generation token, at the formatter's stop strings or at
max_tokens. `prompt_for` returns None when the Llama object uses another chat format (a
named one it guessed, or a handler given to it): then the caller samples one answer at a
time through create_chat_completion instead (backends.LlamaCppBackend.samples).

Uses only llama-cpp-python's public APIs: the Llama object's `model`, `context_params`,
`metadata`, `chat_format`, `tokenize` and `detokenize`, and the low-level `llama_cpp` bindings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

TOP_K, TOP_P, MIN_P = 40, 0.9, 0.0  # Ollama's defaults (api/types.go DefaultOptions)
DEFAULT_TEMPLATE_FORMAT = "chat_template.default"  # llama-cpp-python's name for the GGUF's template
PROMPT_BATCH = 512


@dataclass(frozen=True)
class SamplerSettings:
    temperature: float
    top_k: int = TOP_K
    top_p: float = TOP_P
    min_p: float = MIN_P


def prompt_for(llm: Any, messages: list[dict]) -> tuple[list[int], list[str]] | None:
    """(prompt tokens, stop strings) as create_chat_completion makes them; None when `llm`
    formats chats another way than with the GGUF's own template."""
    template = (llm.metadata or {}).get("tokenizer.chat_template")
    if llm.chat_format != DEFAULT_TEMPLATE_FORMAT or llm.chat_handler is not None or not template:
        return None
    from llama_cpp import llama_chat_format

    eos, bos = llm.token_eos(), llm.token_bos()
    formatter = llama_chat_format.Jinja2ChatFormatter(
        template=template,
        eos_token=_token_text(llm, eos), bos_token=_token_text(llm, bos), stop_token_ids=[eos])
    result = formatter(messages=messages)
    tokens = llm.tokenize(result.prompt.encode("utf-8"), add_bos=not result.added_special, special=True)
    stops = result.stop if isinstance(result.stop, list) else [result.stop] if result.stop else []
    return tokens, [s for s in stops if s]


def _token_text(llm: Any, token: int) -> str:
    return "" if token == -1 else llm.detokenize([token], special=True).decode("utf-8", errors="ignore")


class BatchSampler:
    """A second context on a loaded Llama's weights, sized for k sequences of one prompt.

    Not thread-safe: the caller holds the model's lock (LlamaCppBackend does)."""

    def __init__(self, llm: Any, sequences: int, n_ctx: int, n_threads: int | None = None):
        import llama_cpp

        self._lib, self._llm, self.sequences, self.n_ctx = llama_cpp, llm, sequences, n_ctx
        # The Llama object's own settings (flash attention off, KV types, RoPE, ...), so a sequence
        # here computes what create_chat_completion computes; only size and sequences change.
        params = llama_cpp.llama_context_params.from_buffer_copy(llm.context_params)
        params.n_ctx = n_ctx
        self.n_batch = params.n_batch = params.n_ubatch = min(n_ctx, PROMPT_BATCH)
        params.n_seq_max = sequences
        params.kv_unified = True  # one cache shared by the sequences: the prompt is stored once
        if n_threads:
            params.n_threads = params.n_threads_batch = n_threads
        self._ctx = llama_cpp.llama_init_from_model(llm.model, params)
        if not self._ctx:
            raise RuntimeError(f"llama.cpp could not create a context for {sequences} sequences of {n_ctx} tokens")
        self._batch = llama_cpp.llama_batch_init(max(self.n_batch, sequences), 0, sequences)
        self._vocab = llama_cpp.llama_model_get_vocab(llm.model)

    def close(self) -> None:
        if self._ctx:
            self._lib.llama_batch_free(self._batch)
            self._lib.llama_free(self._ctx)
            self._ctx = None

    def fits(self, prompt_tokens: int, max_tokens: int, k: int) -> bool:
        return k <= self.sequences and prompt_tokens + k * max_tokens <= self.n_ctx

    def _chain(self, s: SamplerSettings, seed: int) -> Any:
        lib = self._lib
        chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
        if s.temperature <= 0:
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_greedy())
            return chain
        for smpl in (lib.llama_sampler_init_top_k(s.top_k), lib.llama_sampler_init_temp(s.temperature),
                     lib.llama_sampler_init_top_p(s.top_p, 1), lib.llama_sampler_init_min_p(s.min_p, 1),
                     lib.llama_sampler_init_dist(seed & 0xFFFFFFFF)):
            lib.llama_sampler_chain_add(chain, smpl)
        return chain

    def _fill(self, entries: list[tuple[int, int, list[int], bool]]) -> None:
        """entries: (token, position, sequence ids, wants logits)."""
        b = self._batch
        b.n_tokens = len(entries)
        for j, (token, pos, seqs, logits) in enumerate(entries):
            b.token[j], b.pos[j], b.n_seq_id[j], b.logits[j] = token, pos, len(seqs), logits
            for s, seq in enumerate(seqs):
                b.seq_id[j][s] = seq

    def _decode(self, entries: list[tuple[int, int, list[int], bool]]) -> None:
        self._fill(entries)
        rc = self._lib.llama_decode(self._ctx, self._batch)
        if rc != 0:
            raise RuntimeError(f"llama_decode failed with {rc} (batch of {len(entries)} tokens)")

    def sample(self, prompt: list[int], stops: list[str], seeds: list[int], settings: SamplerSettings,
               max_tokens: int) -> list[str]:
        """One answer per seed, all decoded together."""
        k = len(seeds)
        if not self.fits(len(prompt), max_tokens, k):
            raise ValueError(f"{k} answers of {max_tokens} tokens after a {len(prompt)}-token prompt do not fit "
                             f"{self.sequences} sequences of a {self.n_ctx}-token context")
        lib = self._lib
        lib.llama_memory_clear(lib.llama_get_memory(self._ctx), True)
        everyone = list(range(k))
        step = self.n_batch
        for start in range(0, len(prompt), step):  # the prompt once, in every sequence
            chunk = prompt[start:start + step]
            last = start + len(chunk) == len(prompt)
            self._decode([(t, start + i, everyone, last and i == len(chunk) - 1) for i, t in enumerate(chunk)])
        chains = [self._chain(settings, seed) for seed in seeds]
        try:
            out = self._generate(chains, len(prompt), max_tokens, len(chunk) - 1)
        finally:
            for chain in chains:
                lib.llama_sampler_free(chain)
        return [self._text(prompt, toks, stops) for toks in out]

    def _generate(self, chains: list[Any], n_prompt: int, max_tokens: int, first_index: int) -> list[list[int]]:
        lib, k = self._lib, len(chains)
        out: list[list[int]] = [[] for _ in range(k)]
        index = dict.fromkeys(range(k), first_index)  # where each live sequence's logits are in the batch
        for step in range(max_tokens):
            entries = []
            for seq, at in list(index.items()):
                token = lib.llama_sampler_sample(chains[seq], self._ctx, at)  # also accepts the token
                if lib.llama_vocab_is_eog(self._vocab, token):
                    del index[seq]
                    continue
                out[seq].append(token)
                if step + 1 < max_tokens:
                    index[seq] = len(entries)
                    entries.append((token, n_prompt + step, [seq], True))
                else:
                    del index[seq]
            if not entries:
                break
            self._decode(entries)
        return out

    def _text(self, prompt: list[int], tokens: list[int], stops: list[str]) -> str:
        raw = self._llm.detokenize(tokens, prev_tokens=prompt)
        cuts = [raw.index(s.encode("utf-8")) for s in stops if s.encode("utf-8") in raw]
        return raw[:min(cuts)].decode("utf-8", errors="ignore") if cuts else raw.decode("utf-8", errors="ignore")
