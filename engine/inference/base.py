"""The `Backend` protocol every inference backend follows, and its request/result types."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from engine.errors import ConfigError, NotAvailableError

TokenCallback = Callable[[str], None]


@dataclass
class GenerationRequest:
    """One generation: chat messages plus sampling settings.

    Raises:
        ConfigError: from `validate()`, for sampling values outside their ranges.
    """

    messages: list[dict[str, str]]
    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    stop: list[str] = field(default_factory=list)

    def validate(self) -> GenerationRequest:
        """Check the sampling settings, naming every bad one."""
        problems = []
        if self.max_tokens < 1:
            problems.append(f"max_tokens must be at least 1, got {self.max_tokens}")
        if not 0.0 <= self.temperature <= 5.0:
            problems.append(f"temperature must be between 0 and 5, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            problems.append(f"top_p must be in (0, 1], got {self.top_p}")
        if not self.messages:
            problems.append("messages is empty: give at least one user message")
        if problems:
            raise ConfigError("invalid generation request:", problems=problems)
        return self


@dataclass
class GenerationResult:
    """What a generation produced, with its figures."""

    text: str
    tokens: int
    prompt_tokens: int
    seconds: float
    finish_reason: str  # "stop" | "length" | "cancelled"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


class Backend(Protocol):
    """What every inference backend provides."""

    name: str

    def generate(self, request: GenerationRequest, on_token: TokenCallback | None = None
                 ) -> GenerationResult:
        """Generate an answer, calling `on_token` with each piece of text as it comes."""
        ...

    def tokenize(self, text: str) -> list[int]:
        """The backend's token ids for `text`."""
        ...

    def close(self) -> None:
        """Free the model."""
        ...


def open_backend(profile: Any, backend: str | None = None) -> Backend:
    """Load the backend a profile asks for (or `backend`, overriding it).

    Raises:
        NotAvailableError: the backend is not built into this version.
    """
    name = backend or profile.inference.backend
    if name == "llamacpp":
        from engine.inference.llamacpp import LlamaCppBackend

        return LlamaCppBackend.from_profile(profile)
    raise NotAvailableError(f"the '{name}' inference backend is not available in this version",
                            hint="use --backend llamacpp with a GGUF model")
