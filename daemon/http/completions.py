"""`/v1/completions` on the loaded model: raw text or token ids in, text and log-probabilities out.

What loglikelihood evals need is the log-probability of every prompt token: with `echo` and
`logprobs`, each choice carries the prompt's tokens, `token_logprobs` (the first is null: nothing
predicts it) and `top_logprobs` (the `logprobs` most likely tokens at each position), followed by
those of the tokens generated. lm-evaluation-harness's `local-completions` sends token ids with
`echo`, `logprobs=1` and `max_tokens=1`, and sums `token_logprobs[ctxlen:-1]`; `max_tokens=0`
scores the prompt alone.

The log-probabilities come from one forward pass over prompt + generated tokens with the chosen
adapter active (`Backend.logits(all_positions=True)`), the same numbers the engine's perplexity
uses. A backend that cannot give them (an OpenAI-style server) answers 400, never a silent
chance-level score. Knows the engine's Backend protocol and the gateway's schemas.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from daemon.http import schemas as s
from daemon.http.gateway import GatewayError
from engine.backend import ContextOverflowError, GenerationRequest
from engine.errors import NotAvailableError


def prompts_of(prompt: str | list[str] | list[int] | list[list[int]]) -> list[str | list[int]]:
    """The request's prompts, each text or token ids (OpenAI's four shapes)."""
    if isinstance(prompt, str):
        return [prompt]
    if not prompt:
        raise GatewayError(400, "prompt is empty", param="prompt")
    if all(isinstance(p, int) for p in prompt):
        return [list(prompt)]  # type: ignore[arg-type]
    return list(prompt)  # type: ignore[arg-type]


def activate(backend: Any, adapters: Any, adapter: dict[str, Any] | None) -> None:
    """Make `adapter` (`{name, path}`) or the base the active side of the backend."""
    from engine.inference.turn import AdapterRef

    if adapter is None:
        backend.set_active("base")
        return
    adapters.ensure(AdapterRef(adapter["name"], adapter.get("path")))
    backend.set_active(adapter["name"])


def _vocab(backend: Any) -> int:
    for getter in (lambda: backend.llama.n_vocab(), lambda: len(backend.tokenizer)):
        try:
            return int(getter())
        except Exception:
            continue
    return 2**31


def _scored(backend: Any, ids: list[int], top: int, *, with_next: bool = False
            ) -> tuple[list[float | None], list[dict[str, float] | None], int | None]:
    """Each token's log-probability given those before it, the `top` likeliest there, and
    (`with_next`) the greedy next token, whose log-probability and alternatives end the lists.
    """
    import torch

    try:
        logits = backend.logits(list(ids), all_positions=True)
    except NotAvailableError as exc:
        raise GatewayError(400, f"the {getattr(backend, 'name', 'served')} backend cannot give "
                           f"prompt log-probabilities ({exc.message})", kind="NotAvailableError",
                           hint="serve a GGUF (llamacpp) or transformers (hf) base") from None
    table = torch.log_softmax(torch.as_tensor(np.asarray(logits)).float(), dim=-1)
    following = list(ids[1:])
    after = int(table[-1].argmax()) if with_next else None
    if after is not None:
        following.append(after)
    else:
        table = table[:-1]
    targets = torch.as_tensor(following, dtype=torch.long)
    picked = table.gather(1, targets[:, None])[:, 0].tolist()
    tops: list[dict[str, float] | None] = [None]
    if top > 0:
        values, indices = torch.topk(table, k=min(top, table.shape[-1]), dim=-1)
        for row_values, row_ids in zip(values.tolist(), indices.tolist(), strict=True):
            alternatives: dict[str, float] = {}
            for value, token in zip(row_values, row_ids, strict=True):
                alternatives.setdefault(_piece(backend, token), value)
            tops.append(alternatives)
    else:
        tops += [{} for _ in picked]
    return [None, *picked], tops, after


def _piece(backend: Any, token: int) -> str:
    return backend.detokenize([int(token)])


def _one(backend: Any, body: s.CompletionRequest, index: int, prompt: str | list[int]
         ) -> tuple[s.CompletionChoice, int, int]:
    if isinstance(prompt, str):
        ids = backend.prompt_tokens(GenerationRequest(prompt=prompt))
    else:
        vocab = _vocab(backend)
        bad = [t for t in prompt if not 0 <= t < vocab]
        if bad:
            raise GatewayError(400, f"prompt {index} has token ids outside the vocabulary "
                               f"(0-{vocab - 1}): {bad[:5]}", param="prompt")
        ids = list(prompt)
    if not ids:
        raise GatewayError(400, f"prompt {index} is empty", param="prompt")
    if len(ids) + body.max_tokens > backend.n_ctx:
        raise ContextOverflowError(
            f"prompt {index} has {len(ids)} tokens and asks for {body.max_tokens} more; the "
            f"model's window is {backend.n_ctx}", hint="shorten the prompt or max_tokens")
    generated: list[int] = []
    text, finish = "", "length"
    values: list[float | None] = []
    tops: list[dict[str, float] | None] = []
    if body.max_tokens == 1 and not body.temperature and body.logprobs is not None:
        # Scoring's usual shape (lm-evaluation-harness: echo, logprobs, one greedy token): the
        # forward pass that scores the prompt also gives that token, EOS included, so the
        # answer always holds exactly one token after the prompt.
        values, tops, after = _scored(backend, ids, body.logprobs, with_next=True)
        generated, text = [int(after)], _piece(backend, int(after))  # type: ignore[arg-type]
    elif body.max_tokens > 0:
        request = GenerationRequest(
            prompt_ids=ids, max_tokens=body.max_tokens,
            temperature=0.0 if body.temperature is None else body.temperature,
            top_p=1.0 if body.top_p is None else body.top_p, seed=body.seed or 0,
            stop=body.stops()).validate()
        result = backend.generate(request)
        generated, text, finish = list(result.token_ids), result.text, result.finish_reason
        if not generated and text:
            generated = backend.tokenize(text, special=True)
    logprobs = None
    if body.logprobs is not None:
        shown = (ids if body.echo else []) + generated
        if shown and not values:
            values, tops, _ = _scored(backend, ids + generated, body.logprobs)
        if shown:
            skip = 0 if body.echo else len(ids)
            values, tops = values[skip:], tops[skip:]
            pieces = [_piece(backend, t) for t in shown]
            offsets, at = [], 0
            for piece in pieces:
                offsets.append(at)
                at += len(piece)
            logprobs = s.CompletionLogprobs(tokens=pieces, token_logprobs=values,
                                            top_logprobs=tops, text_offset=offsets)
    if body.echo:
        text = backend.detokenize(ids) + text
    choice = s.CompletionChoice(index=index, text=text, logprobs=logprobs,
                                finish_reason=finish if finish in ("stop", "length") else None)
    return choice, len(ids), len(generated)


def work(body: s.CompletionRequest, adapter: dict[str, Any] | None,
         cancelled: Callable[[], bool] = lambda: False
         ) -> Callable[[Any, Any, Any], tuple[list[s.CompletionChoice], s.Usage]]:
    """The completion as work for the chat thread: `work(backend, adapters, profile)`."""
    prompts = prompts_of(body.prompt)

    def run(backend: Any, adapters: Any, profile: Any
            ) -> tuple[list[s.CompletionChoice], s.Usage]:
        activate(backend, adapters, adapter)
        choices, prompt_tokens, completion_tokens = [], 0, 0
        for index, prompt in enumerate(prompts):
            if cancelled():
                break  # the client went away: the rest is not scored
            choice, used, made = _one(backend, body, index, prompt)
            choices.append(choice)
            prompt_tokens += used
            completion_tokens += made
        return choices, s.Usage(prompt_tokens=prompt_tokens,
                                completion_tokens=completion_tokens,
                                total_tokens=prompt_tokens + completion_tokens)

    return run
