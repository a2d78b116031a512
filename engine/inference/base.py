"""Helpers every inference backend shares: chat-template segments, adapter choices, fit checks.

The protocol and its request/result types live in engine.backend (so that earlier stages can be
handed a backend) and are re-exported here, where the backends have always found them. This
module imports no backend; engine.inference's registry finds them by name.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from engine.backend import (
    BASE,
    AdapterChoice,
    Backend,
    ContextOverflowError,
    GenerationRequest,
    GenerationResult,
    TokenCallback,
)
from engine.errors import ConfigError

__all__ = ["BASE", "AdapterChoice", "Backend", "ContextOverflowError", "GenerationRequest",
           "GenerationResult", "Segment", "TokenCallback", "check_fits", "message_segments",
           "normalise_choice", "template_segments", "tokenize_segments"]

# (is_special, text): special text (template scaffolding, hypertokens) may become special ids,
# plain text never does.
Segment = tuple[bool, str]


_PLACEHOLDER = re.compile("\ue000(\\d+)\ue001")


def message_segments(message: dict[str, Any]) -> list[Segment]:
    """A message's content as segments: its `segments` when given, else all plain text."""
    segments = message.get("segments")
    if segments is None:
        return [(False, message["content"])]
    return [(bool(special), str(text)) for special, text in segments]


def template_segments(render: Callable[[list[dict[str, str]]], str],
                      messages: Sequence[dict[str, Any]]) -> list[Segment]:
    """Render a chat template so that message text stays plain and the scaffolding special.

    The template is rendered with a placeholder for each message's content; the text around the
    placeholders (role markers such as `<|im_start|>`) is special, each content comes back as
    its own segments. So a user who types `<|im_end|>` or `<|scene|>` gets those characters,
    never the control token, while a hypertoken segment of a RAG context does become its id.
    """
    placeholders = [{"role": m["role"], "content": f"\ue000{i}\ue001"}
                    for i, m in enumerate(messages)]
    rendered = render(placeholders)
    segments: list[Segment] = []
    position = 0
    for match in _PLACEHOLDER.finditer(rendered):
        segments.append((True, rendered[position:match.start()]))
        segments.extend(message_segments(messages[int(match.group(1))]))
        position = match.end()
    segments.append((True, rendered[position:]))
    merged: list[Segment] = []
    for special, text in segments:
        if not text:
            continue
        if merged and merged[-1][0] == special:
            merged[-1] = (special, merged[-1][1] + text)
        else:
            merged.append((special, text))
    return merged


def tokenize_segments(tokenize: Callable[..., list[int]], segments: Sequence[Segment],
                      **first: Any) -> list[int]:
    """Token ids of segments: special ones parsed for special tokens, plain ones never.

    `first` are extra keyword arguments for the first call only (e.g. `add_bos=True`).
    """
    ids: list[int] = []
    for index, (special, text) in enumerate(segments):
        ids += tokenize(text, special=special, **(first if index == 0 else {}))
    return ids


def normalise_choice(choice: AdapterChoice, loaded: list[str]) -> dict[str, float]:
    """An adapter choice as name -> scale ({} for the base model), checked against `loaded`.

    Raises:
        ConfigError: an adapter is not loaded.
    """
    if choice is None or choice == BASE or choice == {}:
        return {}
    weights = {choice: 1.0} if isinstance(choice, str) else dict(choice)
    missing = [name for name in weights if name not in loaded]
    if missing:
        raise ConfigError(f"adapter {', '.join(map(repr, missing))} is not loaded",
                          hint=f"loaded adapters: {', '.join(loaded) or 'none'}; load it with "
                               f"--adapter NAME=DIR")
    return weights


def check_fits(prompt_tokens: int, n_ctx: int) -> None:
    """Refuse a prompt that leaves no room in the context for even one answer token.

    Raises:
        ContextOverflowError: with both figures.
    """
    if prompt_tokens >= n_ctx:
        raise ContextOverflowError(
            f"the prompt is {prompt_tokens} tokens but the context holds {n_ctx}",
            hint="shorten the prompt, or raise inference.n_ctx in the profile")
