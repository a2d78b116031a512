"""The `Backend` protocol every inference backend follows, and its request/result types.

A request carries chat messages (rendered through the base model's own chat template) or a raw
prompt, sampling settings, stop strings, an optional adapter choice (a name, or names with
scales), an optional JSON schema and a cancel event. Backends stream text through `on_token`.

These types sit at the bottom of the engine so that any stage may be handed a backend: the LLM
sceneformer and the LLM corpus writer take one from their caller and never import
engine.inference, which comes later in the data order. This module knows nothing of any one
backend, the daemon or the console.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from engine.errors import ConfigError, HyperlexError

TokenCallback = Callable[[str], None]
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
