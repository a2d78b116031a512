"""The `Backend` protocol every inference backend follows, and its request/result types.

A request carries chat messages (rendered through the base model's own chat template) or a raw
prompt, sampling settings, stop strings, an optional adapter choice (a name, or names with
scales), an optional JSON schema and a cancel event. Backends stream text through `on_token`.
This module knows nothing of the daemon, the console or any one backend library.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from engine.errors import ConfigError, HyperlexError, NotAvailableError

TokenCallback = Callable[[str], None]
# (is_special, text): special text (template scaffolding, hypertokens) may become special ids,
# plain text never does.
Segment = tuple[bool, str]
# None: keep the backend's active adapters; "base" (or {}): none; a name; or name -> scale.
AdapterChoice = str | dict[str, float] | None
BASE = "base"


class ContextOverflowError(HyperlexError):
    """A prompt does not fit the model's context window."""

    title = "prompt too long"


@dataclass
class GenerationRequest:
    """One generation: chat messages (or a raw prompt) plus sampling settings.

    Raises:
        ConfigError: from `validate()`, naming every value outside its range.
    """

    messages: list[dict[str, str]] = field(default_factory=list)
    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    stop: list[str] = field(default_factory=list)
    prompt: str | None = None  # raw text, sent without the chat template
    # token ids, sent as they are (evals continue an encoded sample exactly as it was trained)
    prompt_ids: list[int] | None = None
    adapter: AdapterChoice = None
    json_schema: dict[str, Any] | None = None  # constrain the answer to this JSON schema
    cancel: threading.Event | None = field(default=None, repr=False, compare=False)

    def validate(self) -> GenerationRequest:
        """Check the sampling settings, naming every bad one."""
        problems = []
        if not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            problems.append(f"max_tokens must be a whole number of at least 1, got "
                            f"{self.max_tokens}")
        if math.isnan(self.temperature) or not 0.0 <= self.temperature <= 5.0:
            problems.append(f"temperature must be between 0 and 5, got {self.temperature}")
        if math.isnan(self.top_p) or not 0.0 < self.top_p <= 1.0:
            problems.append(f"top_p must be in (0, 1], got {self.top_p}")
        if self.seed < 0:
            problems.append(f"seed must be 0 or more, got {self.seed}")
        if any(not isinstance(s, str) or not s for s in self.stop):
            problems.append(f"stop strings must be non-empty strings, got {self.stop!r}")
        if not self.messages and self.prompt is None and not self.prompt_ids:
            problems.append("messages is empty: give at least one user message")
        for index, message in enumerate(self.messages):
            if message.get("role") not in ("system", "user", "assistant") or \
                    not isinstance(message.get("content"), str):
                problems.append(f"messages[{index}] needs a role (system, user or assistant) "
                                f"and a string content, got {message!r}")
            segments = message.get("segments")
            if segments is not None and not all(
                    isinstance(s, (list, tuple)) and len(s) == 2 and isinstance(s[1], str)
                    for s in segments):
                problems.append(f"messages[{index}].segments must be [is_special, text] pairs")
        if isinstance(self.adapter, dict):
            bad = {k: v for k, v in self.adapter.items() if not math.isfinite(v)}
            if bad:
                problems.append(f"adapter scales must be finite numbers, got {bad}")
        if problems:
            raise ConfigError("invalid generation request:", problems=problems)
        return self

    @property
    def cancelled(self) -> bool:
        return self.cancel is not None and self.cancel.is_set()


@dataclass
class GenerationResult:
    """What a generation produced, with its figures."""

    text: str
    tokens: int
    prompt_tokens: int
    seconds: float
    finish_reason: str  # "stop" | "length" | "cancelled"
    extra: dict[str, Any] = field(default_factory=dict)
    # the generated ids (hypertokens included), where the backend has them; not sent on the wire
    token_ids: list[int] = field(default_factory=list)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "tokens": self.tokens, "prompt_tokens": self.prompt_tokens,
                "seconds": round(self.seconds, 4), "tokens_per_s": round(self.tokens_per_s, 2),
                "finish_reason": self.finish_reason, **self.extra}


class Backend(Protocol):
    """What every inference backend provides."""

    name: str
    n_ctx: int

    def generate(self, request: GenerationRequest, on_token: TokenCallback | None = None
                 ) -> GenerationResult:
        """Generate an answer, calling `on_token` with each piece of text as it comes."""
        ...

    def prompt_tokens(self, request: GenerationRequest) -> list[int]:
        """The token ids the request's prompt becomes (after the chat template)."""
        ...

    def tokenize(self, text: str, *, special: bool = False) -> list[int]:
        """The backend's token ids for `text` (`special`: parse special-token text as such)."""
        ...

    def logits(self, token_ids: list[int], *, all_positions: bool = False) -> Any:
        """Next-token logits after `token_ids`: (vocab,), or (len, vocab) for every position."""
        ...

    def load_adapter(self, name: str, path: str) -> None:
        """Load an adapter once under `name`; it stays loaded until `unload_adapter`."""
        ...

    def set_active(self, choice: AdapterChoice) -> None:
        """Activate no adapter ("base"), one by name, or several with scales."""
        ...

    def unload_adapter(self, name: str) -> None:
        """Free an adapter."""
        ...

    @property
    def adapters(self) -> list[str]:
        """Names of the loaded adapters."""
        ...

    def close(self) -> None:
        """Free the model."""
        ...


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


def open_backend(profile: Any, backend: str | None = None) -> Backend:
    """Load the backend a profile asks for (or `backend`, overriding it).

    Raises:
        ConfigError: unknown backend name.
    """
    name = backend or profile.inference.backend
    if name == "llamacpp":
        from engine.inference.llamacpp import LlamaCppBackend

        return LlamaCppBackend.from_profile(profile)
    if name == "hf":
        from engine.inference.hf import HFBackend

        return HFBackend.from_profile(profile)
    if name == "openai":
        from engine.inference.openai import OpenAIBackend

        return OpenAIBackend.from_profile(profile)
    raise NotAvailableError(f"unknown inference backend '{name}'",
                            hint="use one of: hf, llamacpp, openai")
