"""Proof that the served model is the trained model: tokenizer, template, quantization, checksums."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from loraship import paths
from loraship.errors import ExportError
from loraship.export import llama_runtime
from loraship.store import atomic
from loraship.store.hashing import artifact_record

PROBE_TEXTS = [
    "Hello, world! How are you today?",
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n",
    # Non-ASCII. Not "½": llama.cpp and HF split " ½" differently for SmolLM2's
    # pre-tokenizer (\p{N} handling), a known edge that would block every export.
    "Zürich, São Paulo, 東京, Москва — naïve café €5",
    "  leading spaces and\ttabs\n\nnewlines  ",
    "Numbers: 3.14159, 2026-11-22, 1e-4, 0x1F",
]
MAX_TOKENS = 512  # per val text in the quantization check
LOGITS_BYTES = 256 << 20  # float32 logits per forward pass of the reference (a 152k vocabulary: ~440 tokens)
PROBE_CONVERSATION = [
    {"role": "system", "content": "You are a careful assistant."},
    {"role": "user", "content": "Name one mineral."},
    {"role": "assistant", "content": "Quartz."},
    {"role": "user", "content": "And another?"},
]


def _special_probes(tok: Any) -> list[str]:
    specials = [t for t in tok.all_special_tokens if t]
    template_markers = [t for t in ("<|im_start|>", "<|im_end|>", "<|eot_id|>", "<|start_header_id|>",
                                    "<start_of_turn>", "<end_of_turn>", "[INST]", "[/INST]", "<|end|>")
                        if t in tok.get_vocab()]
    return [f"{a}user\nhi{b}" for a, b in zip(specials + template_markers, reversed(specials + template_markers))]


def tokenizer_parity(tok: Any, gguf_path: Path, extra_texts: list[str], llm: Any = None) -> dict[str, Any]:
    """HF tokenizer and the GGUF's tokenizer give the same ids on every probe (`llm`: the
    GGUF already open in llama.cpp, else its vocabulary alone is loaded)."""
    own = llm is None
    if own:
        llm = llama_runtime.llama_cpp().Llama(model_path=str(gguf_path), vocab_only=True, verbose=False)
    try:
        mismatches = []
        probes = PROBE_TEXTS + _special_probes(tok) + extra_texts
        for text in probes:
            hf = tok(text, add_special_tokens=False)["input_ids"]
            gg = llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
            if list(hf) != list(gg):
                mismatches.append({"text": text[:80], "hf": hf[:20], "gguf": gg[:20]})
    finally:
        if own:
            llm.close()
    return {"passed": not mismatches, "probes": len(probes), "mismatches": mismatches[:5]}


def template_roundtrip(tok: Any, gguf_meta: dict[str, Any]) -> dict[str, Any]:
    """The GGUF carries the same chat template, rendering the same prompt; the end-of-turn token is known."""
    gguf_template = gguf_meta.get("chat_template")
    if not gguf_template:
        return {"passed": False, "reason": "the GGUF has no tokenizer.chat_template"}
    hf_prompt = tok.apply_chat_template(PROBE_CONVERSATION, tokenize=False, add_generation_prompt=True)
    gguf_prompt = tok.apply_chat_template(PROBE_CONVERSATION, tokenize=False, add_generation_prompt=True,
                                          chat_template=gguf_template)
    same = hf_prompt == gguf_prompt
    eos = tok.eos_token
    return {
        "passed": same and bool(eos),
        "reason": None if same else "the GGUF's chat template renders a different prompt than the HF tokenizer's",
        "eos_token": eos,
        "prompt_sha256": __import__("hashlib").sha256(hf_prompt.encode()).hexdigest(),
    }


def _log_softmax(logits):
    """Row-wise log-softmax of float32 logits (numpy), the normaliser summed in float64: a
    vocabulary-wide softmax per token in float64 was most of the check's time, for KLs
    reported to three digits."""
    import numpy as np

    logits = logits - logits.max(axis=1, keepdims=True)
    return logits - np.log(np.exp(logits).sum(axis=1, keepdims=True, dtype=np.float64)).astype(np.float32)


def _batches(rows: list[list[int]], budget: int) -> list[list[int]]:
    """Indices of `rows` grouped so that each group's padded size (rows x longest) stays
    within `budget` tokens; a row longer than the budget goes alone."""
    groups: list[list[int]] = []
    for i in sorted(range(len(rows)), key=lambda i: len(rows[i])):
        if groups and (len(groups[-1]) + 1) * len(rows[i]) <= budget:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def reference_logprobs(model: Any, tok: Any, texts: list[str], max_tokens: int = MAX_TOKENS,
                       logits_bytes: int = LOGITS_BYTES) -> list[tuple]:
    """(token ids, per-position log-probabilities) of each text under the merged model itself.

    Computed while the merged model is still loaded, before conversion: the quantized GGUF is
    then measured against the very weights that were trained (so a conversion fault counts
    too), and no F16 GGUF has to be loaded and run a second time. Ids come from the HF
    tokenizer without added specials (the chat template renders its own BOS), and the GGUF
    is fed the same ids; tokenizer_parity checks separately that llama.cpp would produce them.
    Texts go through in right-padded batches (a causal model's real positions never see the
    padding after them) of at most `logits_bytes` of float32 logits, whatever the vocabulary."""
    import numpy as np
    import torch

    rows = [ids for ids in (tok(t, add_special_tokens=False)["input_ids"][:max_tokens] for t in texts) if len(ids) >= 2]
    head = model.get_output_embeddings()
    vocab = head.weight.shape[0] if head is not None else model.config.vocab_size
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    out: list[tuple | None] = [None] * len(rows)
    for group in _batches(rows, max(1, logits_bytes // (4 * vocab))):
        width = max(len(rows[i]) for i in group)
        ids = torch.tensor([rows[i] + [pad] * (width - len(rows[i])) for i in group], device=model.device)
        mask = torch.tensor([[1] * len(rows[i]) + [0] * (width - len(rows[i])) for i in group], device=model.device)
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask).logits.float().cpu().numpy()
        for row, i in enumerate(group):
            out[i] = (rows[i], _log_softmax(logits[row, :len(rows[i])].astype(np.float32, copy=False)))
    return out


def _logprobs(llm: Any, tokens: list[int]):
    import numpy as np

    llm.reset()
    llm.eval(tokens)
    return _log_softmax(np.array(llm.scores[: len(tokens)], dtype=np.float32))


def open_quant(quant_gguf: Path, reference: list[tuple]) -> Any:
    """The quantized GGUF in llama.cpp with every position's logits, its context just long
    enough for the longest reference text: llama-cpp-python keeps an n_ctx x vocabulary
    logits buffer, which at a fixed 512 cost more than evaluating a short val split."""
    if not reference:
        raise ExportError("no text to measure quantization quality on (the val split is empty)")
    n_ctx = -(-max(len(ids) for ids, _ in reference) // 64) * 64
    return llama_runtime.llama_cpp().Llama(model_path=str(quant_gguf), n_ctx=n_ctx, logits_all=True, verbose=False)


def quant_quality(qnt: Any, reference: list[tuple]) -> dict[str, Any]:
    """llama.cpp's method (KL per token, top-1 agreement, perplexity of both) for the quantized
    model `qnt` (open_quant), with the merged model's own log-probabilities (reference_logprobs)
    as the reference side."""
    import numpy as np

    kls, agree, nll_ref, nll_q, n = [], 0, 0.0, 0.0, 0
    for tokens, lp_r in reference:
        lp_q = _logprobs(qnt, tokens)
        p_r = np.exp(lp_r[:-1])
        kls.extend((p_r * (lp_r[:-1] - lp_q[:-1])).sum(axis=1).tolist())
        agree += int((lp_r[:-1].argmax(1) == lp_q[:-1].argmax(1)).sum())
        nxt = np.array(tokens[1:])
        nll_ref -= float(lp_r[np.arange(len(nxt)), nxt].sum())
        nll_q -= float(lp_q[np.arange(len(nxt)), nxt].sum())
        n += len(nxt)
    return {
        "reference": "merged model",
        "tokens": n,
        "mean_kl": float(np.mean(kls)),
        "max_kl": float(np.max(kls)),
        "top1_agreement": agree / n,
        "ppl_ref": math.exp(nll_ref / n),
        "ppl_quant": math.exp(nll_q / n),
    }


def record_checksums(version_dir: Path, files: list[Path]) -> dict[str, dict]:
    """sha256 + bytes of each artifact into checksums.txt (sha256sum format) and the manifest's artifacts."""
    records = {}
    lines = []
    for f in files:
        rec = artifact_record(f, version_dir)
        records[rec["path"]] = rec
        if f.is_file():
            lines.append(f"{rec['sha256']}  {rec['path']}")
        else:
            for sub in sorted(p for p in f.rglob("*") if p.is_file()):
                lines.append(f"{artifact_record(sub, version_dir)['sha256']}  {sub.relative_to(version_dir).as_posix()}")
    atomic.write_text(version_dir / paths.CHECKSUMS, "\n".join(lines) + "\n")
    return records


def add_checksum(version_dir: Path, f: Path) -> None:
    """Add or replace one file's line in checksums.txt (the Modelfile is written at register)."""
    from loraship.store.hashing import sha256_file

    listing = version_dir / paths.CHECKSUMS
    rel = f.relative_to(version_dir).as_posix()
    lines = [ln for ln in listing.read_text(encoding="utf-8").splitlines() if ln and not ln.endswith(f"  {rel}")]
    lines.append(f"{sha256_file(f)}  {rel}")
    atomic.write_text(listing, "\n".join(lines) + "\n")


def check_checksums(version_dir: Path) -> list[str]:
    """Names of files whose content no longer matches checksums.txt (missing files count)."""
    from loraship.store.hashing import sha256_file

    listing = version_dir / paths.CHECKSUMS
    if not listing.exists():
        raise ExportError(f"{listing} is missing: export this version first")
    changed = []
    for line in listing.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        digest, rel = line.split("  ", 1)
        f = version_dir / rel
        if not f.exists() or sha256_file(f) != digest:
            changed.append(rel)
    return changed
