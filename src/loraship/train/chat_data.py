"""Rows → token ids with loss only on the assistant's answers, formatted by the model's own template."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Encoded:
    input_ids: list[list[int]] = field(default_factory=list)
    labels: list[list[int]] = field(default_factory=list)
    replay: list[bool] = field(default_factory=list)  # row replayed from an earlier version (origin)
    truncated: int = 0
    dropped_no_answer: int = 0

    @property
    def n_label_tokens(self) -> int:
        return sum(sum(1 for t in lab if t != -100) for lab in self.labels)


def _render(tokenizer: Any, messages: list[dict], generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def training_texts(tokenizer: Any, messages: list[dict]) -> list[tuple[str, list[tuple[int, int]]]]:
    """The texts one conversation trains on, each with the character spans of its assistant
    answers (with their end-of-turn markers): the loss falls on those spans only.

    Most templates render the first k turns plus the generation prompt as a prefix of the
    whole conversation: then the whole conversation is one text. Some write in the generation
    prompt what the history form of a turn leaves out (Gemma 4 opens an empty thought channel,
    `<|channel>thought\n<channel|>`, after `<|turn>model\n`, and strips it from earlier
    turns): then every answer is trained after the very prompt it is served with, one text
    per answer, because that prompt is what Ollama will render before the model speaks.
    """
    full = _render(tokenizer, messages, False)
    turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    spans = []
    for i in turns:
        start_text = _render(tokenizer, messages[:i], True)
        end_text = _render(tokenizer, messages[: i + 1], False)
        if not full.startswith(start_text) or not full.startswith(end_text):
            return [_served_turn(tokenizer, messages, i) for i in turns]
        spans.append((len(start_text), len(end_text)))
    return [(full, spans)]


def _served_turn(tokenizer: Any, messages: list[dict], i: int) -> tuple[str, list[tuple[int, int]]]:
    """Answer i after its served prompt, followed by the end-of-turn text the template writes
    after an answer (read from the history form of the turn)."""
    from loraship.errors import DataError

    prompt = _render(tokenizer, messages[:i], True)
    before = _render(tokenizer, messages[:i], False)
    after = _render(tokenizer, messages[: i + 1], False)
    answer = str(messages[i]["content"]).strip()
    turn = after[len(before):] if after.startswith(before) else ""
    at = turn.rfind(answer) if answer else -1
    if at < 0:
        raise DataError(
            "the model's chat template renders conversations neither prefix-consistently nor with "
            "each answer as sent, so loss masking cannot find the answers (use a model with a "
            "standard chat template)"
        )
    answer_text = turn[at:]
    return prompt + answer_text, [(len(prompt), len(prompt) + len(answer_text))]


def with_system(messages: list[dict], system: str | None) -> list[dict]:
    """Train under the system prompt the model will be served with (the Modelfile's SYSTEM)."""
    if not system or (messages and messages[0]["role"] == "system"):
        return messages
    return [{"role": "system", "content": system}, *messages]


def encode_rows(tokenizer: Any, rows: list[dict], max_len: int, system: str | None = None) -> Encoded:
    out = Encoded()
    for row in rows:
        for text, spans in training_texts(tokenizer, with_system(row["messages"], system)):
            enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
            ids, offsets = enc["input_ids"], enc["offset_mapping"]
            labels = [
                tok if b > a and any(s <= a < e for s, e in spans) else -100
                for tok, (a, b) in zip(ids, offsets)
            ]
            if len(ids) > max_len:
                out.truncated += 1
                ids, labels = ids[:max_len], labels[:max_len]
            if all(t == -100 for t in labels):
                out.dropped_no_answer += 1  # truncation cut the whole answer: nothing to learn from
                continue
            out.input_ids.append(ids)
            out.labels.append(labels)
            out.replay.append(row.get("origin") == "replay")
    return out


def row_lengths(enc: Encoded) -> tuple[list[int], list[int]]:
    """(tokens, label tokens) of each encoded row: what the memory estimate needs."""
    return [len(i) for i in enc.input_ids], [sum(t != -100 for t in lab) for lab in enc.labels]


class FlattenCollator:
    """Padding-free batches: the rows laid end to end in one row, position_ids restarting per row.

    Built on transformers' DataCollatorWithFlattening (5.17+): labels get -100 at each
    row's first token, so no row learns to predict the next row's start; no attention_mask,
    so the model finds the row boundaries from position_ids. `flash_kwargs` also hands flash
    attention the boundaries directly (cu_seq_lens), sparing it a device sync per layer.
    Rows with a `replay` flag give the same per-token `replay` mask as PadCollator.

    The batch also says `use_cache=False`: models default to their config's use_cache
    (True) even in training, and with a cache transformers skips the position_ids check
    that keeps sdpa/eager attention inside each row (measured: rows then attend to the
    rows before them). Training never reads the cache anyway.
    """

    def __init__(self, flash_kwargs: bool = False):
        from transformers import DataCollatorWithFlattening

        self._flatten = DataCollatorWithFlattening(return_position_ids=True, separator_id=-100,
                                                   return_flash_attn_kwargs=flash_kwargs)

    def __call__(self, features: list[dict]) -> dict:
        import torch

        batch = self._flatten([{"input_ids": f["input_ids"], "labels": f["labels"]} for f in features])
        batch["use_cache"] = False
        if "replay" in features[0]:
            batch["replay"] = torch.tensor([bool(f["replay"]) for f in features for _ in f["input_ids"]])[None]
        return batch


class PadCollator:
    """Dynamic padding to the longest row of the batch (not to max_seq_length).

    Rows that carry a `replay` flag give the batch a per-token `replay` mask (True on
    every token of a replayed row), which distillation reads (train/retention.py).
    """

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, features: list[dict]) -> dict:
        import torch

        width = max(len(f["input_ids"]) for f in features)
        ids = torch.full((len(features), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(features), width), -100, dtype=torch.long)
        mask = torch.zeros((len(features), width), dtype=torch.long)
        for i, f in enumerate(features):
            n = len(f["input_ids"])
            ids[i, :n] = torch.tensor(f["input_ids"])
            labels[i, :n] = torch.tensor(f["labels"])
            mask[i, :n] = 1
        batch = {"input_ids": ids, "labels": labels, "attention_mask": mask}
        if "replay" in features[0]:
            batch["replay"] = mask.bool() & torch.tensor([bool(f["replay"]) for f in features])[:, None]
        return batch
