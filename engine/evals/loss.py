"""Held-out loss: corpus perplexity and bits per byte, per register and per field.

Definitions (every sum runs over the examples of one side; an example is one encoded sample):

- `nll`: the summed negative log-likelihood, in nats, of the answer tokens — the tokens training
  takes a loss on (labels not -100, the first position never counted), with the same masking
  as training, so the base and the adapter are scored on exactly what the adapter was trained
  to produce.
- `tokens`: how many such tokens; `bytes`: the UTF-8 bytes of those tokens decoded with special
  and hypertokens spelled out (so every token has bytes).
- `seq_nll`, `seq_tokens`, `seq_bytes`: the same over the whole sequence, prompt included, every
  token after the first.
- `field_nll`/`field_tokens` and `text_nll`/`text_tokens`: the answer tokens split by the field
  mask: scene structure (fields, markers, register) against scene text.
- corpus perplexity `ppl = exp(Σ nll / Σ tokens)` — a ratio of sums, not a mean of per-example
  perplexities (which would weight a 5-token example like a 500-token one);
  bits per byte `bpb = Σ nll / (ln 2 · Σ bytes)`, comparable across tokenizers.
- per register: the same ratio over the examples of that register.

Perplexity needs prompt log-probabilities: a backend that cannot give them (an OpenAI-style
server) is refused with a message rather than scored wrongly. Knows the `Backend` protocol and
`Sample`; nothing of adapters' files or reports.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from engine.errors import NotAvailableError
from engine.evals.records import EvalRecord
from engine.types import REGISTERS, Sample

IGNORE = -100
SUMS = ("nll", "tokens", "bytes", "seq_nll", "seq_tokens", "seq_bytes", "field_nll",
        "field_tokens", "text_nll", "text_tokens")


def token_logprobs(backend: Any, input_ids: Sequence[int]) -> np.ndarray:
    """`log p(ids[t+1] | ids[:t+1])` for t = 0 … n-2, from the active side of `backend`.

    Raises:
        NotAvailableError: the backend cannot return logits for every prompt position.
    """
    import torch

    try:
        logits = backend.logits(list(input_ids), all_positions=True)
    except NotAvailableError as exc:
        raise NotAvailableError(
            f"perplexity needs the log-probability of every prompt token, and the "
            f"{getattr(backend, 'name', 'chosen')} backend cannot give it ({exc.message})",
            hint="score with the hf backend, or llamacpp (a GGUF base, logits for all "
                 "positions)") from None
    logits = torch.as_tensor(np.asarray(logits))[:-1].float()
    targets = torch.as_tensor(list(input_ids[1:]), dtype=torch.long)
    picked = logits.gather(1, targets[:, None])[:, 0] - torch.logsumexp(logits, dim=-1)
    return picked.double().numpy()


def loss_values(sample: Sample, logprobs: np.ndarray, decode: Callable[[list[int]], str]
                ) -> dict[str, float]:
    """The summed statistics of one example (see the module docstring)."""
    ids = list(sample.input_ids)
    targets = np.asarray(sample.labels[1:])
    answer = targets != IGNORE
    nll = -logprobs
    field = np.asarray((sample.field_mask or [False] * len(ids))[1:], dtype=bool) & answer
    text = answer & ~field
    answer_ids = [int(t) for t in targets[answer]]
    return {"nll": float(nll[answer].sum()), "tokens": int(answer.sum()),
            "bytes": len(decode(answer_ids).encode("utf-8")),
            "seq_nll": float(nll.sum()), "seq_tokens": len(ids) - 1,
            "seq_bytes": len(decode(ids[1:]).encode("utf-8")),
            "field_nll": float(nll[field].sum()), "field_tokens": int(field.sum()),
            "text_nll": float(nll[text].sum()), "text_tokens": int(text.sum())}


def loss_records(sides: Any, samples: Sequence[Sample], decode: Callable[[list[int]], str],
                 *, task: str = "loss", on_progress: Callable[[int, int], None] | None = None
                 ) -> list[EvalRecord]:
    """One `loss` record per sample and side, every side scored on the same samples.

    Args:
        task: the records' task: "loss" for the training format's held-out samples, "text"
            for the plain texts (the plain-vs-hyper experiment's common ground).
        sides: an `engine.evals.sides.Sides`.
        samples: encoded held-out samples (their `example_id`s must be unique).
        decode: token ids → text, special and hypertokens spelled out (for byte counts).
        on_progress: called with (done, total) after each scored example.
    """
    total = len(samples) * len(sides.names)
    done = 0
    records = []
    for name in sides.names:
        sides.use(name)
        for index, sample in enumerate(samples):
            values = loss_values(sample, token_logprobs(sides.backend, sample.input_ids), decode)
            records.append(EvalRecord(
                example_id=sample.example_id or f"sample-{index}", side=name, task=task,
                adapter_sha256=sides.sha256(name), register=sample.register, values=values,
                reference=_answer_text(sample, decode)))
            done += 1
            if on_progress is not None:
                on_progress(done, total)
    return records


def _answer_text(sample: Sample, decode: Callable[[list[int]], str]) -> str:
    return decode([t for t in sample.labels[1:] if t != IGNORE])


def _ppl(nll: float, tokens: float) -> float | None:
    return math.exp(nll / tokens) if tokens else None


def aggregate_loss(records: Iterable[EvalRecord], task: str = "loss"
                   ) -> dict[str, float | None]:
    """Corpus figures of one side's `loss` (or `text`) records: ppl, bpb, seq_ppl, seq_bpb,
    field_ppl, text_ppl, nll_per_token and `ppl[<register>]` (see the module docstring)."""
    mine = [r for r in records if r.task == task]
    sums = {key: sum(r.values[key] for r in mine) for key in SUMS}
    out: dict[str, float | None] = {
        "ppl": _ppl(sums["nll"], sums["tokens"]),
        "bpb": sums["nll"] / (math.log(2) * sums["bytes"]) if sums["bytes"] else None,
        "seq_ppl": _ppl(sums["seq_nll"], sums["seq_tokens"]),
        "seq_bpb": (sums["seq_nll"] / (math.log(2) * sums["seq_bytes"])
                    if sums["seq_bytes"] else None),
        "field_ppl": _ppl(sums["field_nll"], sums["field_tokens"]),
        "text_ppl": _ppl(sums["text_nll"], sums["text_tokens"]),
        "nll_per_token": sums["nll"] / sums["tokens"] if sums["tokens"] else None,
        "tokens": sums["tokens"], "examples": len(mine)}
    for register in REGISTERS:
        chosen = [r for r in mine if r.register == register]
        if chosen:
            out[f"ppl[{register}]"] = _ppl(sum(r.values["nll"] for r in chosen),
                                           sum(r.values["tokens"] for r in chosen))
    return out
