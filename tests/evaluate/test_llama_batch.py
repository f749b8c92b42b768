"""k answers decoded together in one llama.cpp context (evaluate/llama_batch.py), on the real
SmolLM2 GGUF: the same prompt and stops as create_chat_completion, reproducible per seed, and
the one-at-a-time fallback."""

from __future__ import annotations

import pytest

from loraship.evaluate import llama_batch
from loraship.evaluate.backends import LlamaCppBackend
from loraship.evaluate.candidate import Candidate

pytestmark = pytest.mark.slow

ASK = [{"role": "system", "content": "You answer in one sentence."},
       {"role": "user", "content": "What colour is the sky on a clear day?"}]


@pytest.fixture(scope="module")
def backend():
    with LlamaCppBackend(n_ctx=1024, n_threads=2) as b:
        yield b


@pytest.fixture(scope="module")
def candidate(smollm2_gguf):
    return Candidate("smollm2:v1", "v1", gguf_path=smollm2_gguf)


def test_one_greedy_sequence_is_create_chat_completions_answer_without_repeat_penalty(backend, candidate,
                                                                                   smollm2_gguf):
    opts = {"temperature": 0, "num_predict": 48}
    batched = backend.samples(candidate, ASK, opts, [1])
    assert batched[0].strip()
    # 3 answers of 48 tokens do not fit 128: sampled one at a time through create_chat_completion
    with LlamaCppBackend(n_ctx=128, n_threads=2) as small:
        one_at_a_time = small.samples(candidate, ASK, opts, [1, 2, 3])
    assert one_at_a_time == batched * 3
    # Three greedy sequences in one batch: llama.cpp is not batch-invariant (each sequence's
    # attention sums over its own cells of the shared cache), so a near-tie may fall another
    # way further on; they agree on how they begin, and are the same on every run.
    three = backend.samples(candidate, ASK, opts, [1, 2, 3])
    assert all(t.split()[:8] == batched[0].split()[:8] for t in three)
    assert three == backend.samples(candidate, ASK, opts, [1, 2, 3])


def test_sampled_answers_are_reproducible_per_seed_and_differ_between_seeds(backend, candidate):
    opts = {"temperature": 1.2, "num_predict": 16}
    seeds = [11, 12, 13, 14, 15, 16]
    first = backend.samples(candidate, ASK, opts, seeds)
    assert first == backend.samples(candidate, ASK, opts, seeds)
    assert len(first) == 6 and len(set(first)) >= 3


def test_the_prompt_is_the_ggufs_own_chat_template(backend, candidate):
    llm, _ = backend._model(candidate, {})
    tokens, stops = llama_batch.prompt_for(llm, ASK)
    text = llm.detokenize(tokens, special=True).decode()
    assert text.endswith("<|im_start|>assistant\n") and "You answer in one sentence." in text
    assert stops == ["<|im_end|>"]


def test_answers_sampled_one_at_a_time_do_not_depend_on_what_was_asked_before(smollm2_gguf):
    c = Candidate("smollm2:v1", "v1", gguf_path=smollm2_gguf)
    opts = {"temperature": 0.9, "num_predict": 48}
    with LlamaCppBackend(n_ctx=128, n_threads=2) as small:
        first = small.samples(c, ASK, opts, [3, 4, 5])  # 3 x 48 tokens after the prompt > 128
        small.answer(c, [{"role": "user", "content": "Name a colour."}], {"temperature": 0, "num_predict": 8})
        again = small.samples(c, ASK, opts, [3, 4, 5])
    assert first == again and len(set(first)) >= 2
