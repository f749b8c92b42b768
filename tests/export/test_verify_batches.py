"""The reference log-probabilities' batching: padded batches within a token budget, and the
same numbers as one text at a time."""

from __future__ import annotations

import pytest

from loraship.export import verify


def test_batches_keep_every_row_once_within_the_padded_budget():
    rows = [[0] * n for n in (5, 40, 7, 12, 3, 40, 90)]
    groups = verify._batches(rows, budget=64)
    assert sorted(i for g in groups for i in g) == list(range(len(rows)))
    for g in groups:
        assert len(g) == 1 or len(g) * max(len(rows[i]) for i in g) <= 64
    assert [6] in groups  # longer than the budget: alone


@pytest.mark.slow
def test_batched_reference_matches_one_text_at_a_time(tiny_base):
    import numpy as np
    import torch

    from loraship.base import model as base_model

    tok = base_model.load_tokenizer(tiny_base)
    model = base_model.load_model(tiny_base, torch.float32).eval()
    texts = ["Where is the Harrow Shaft?", "A much longer text about kessrite, orvalite and the Dunmere Pit " * 3,
             "x", "Hello there."]
    batched = verify.reference_logprobs(model, tok, texts)
    alone = verify.reference_logprobs(model, tok, texts, logits_bytes=1)  # budget of one token: one text per pass
    assert [ids for ids, _ in batched] == [ids for ids, _ in alone] and len(batched) == 3  # "x" is one token
    for (_, a), (_, b) in zip(batched, alone):
        np.testing.assert_allclose(a, b, atol=1e-4)
        np.testing.assert_allclose(np.exp(a).sum(axis=1), 1.0, atol=1e-4)
