"""A chat session: history through the model's template, fitted to the context, cancellable.

When the history no longer fits (prompt plus the answer's max_tokens within the backend's
context), the oldest turns are dropped first; the system prompt never is. A running answer is
stopped with `cancel()` from another thread. Works with any `Backend`; knows no front end.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field, replace

from engine.inference.base import (
    AdapterChoice,
    Backend,
    ContextOverflowError,
    GenerationRequest,
    GenerationResult,
    TokenCallback,
)


@dataclass
class ChatSession:
    """Turns of one conversation with a backend.

    Attributes:
        backend: where answers come from.
        settings: sampling settings used for every turn (its messages are ignored).
        system_prompt: sent first on every turn, never dropped ("" for the model's default).
        adapter: the adapter choice for every turn (None: whatever the backend has active).
    """

    backend: Backend
    settings: GenerationRequest = field(default_factory=GenerationRequest)
    system_prompt: str = ""
    adapter: AdapterChoice = None
    history: list[dict[str, str]] = field(default_factory=list)
    dropped_turns: int = 0
    _cancel: threading.Event = field(default_factory=threading.Event, repr=False)

    def messages(self) -> list[dict[str, str]]:
        """The messages of the next request: system prompt, then history that fits."""
        system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        while True:
            candidate = system + self.history
            request = replace(self.settings, messages=candidate, prompt=None)
            needed = len(self.backend.prompt_tokens(request)) + self.settings.max_tokens
            if needed <= self.backend.n_ctx:
                return candidate
            if len(self.history) <= 1:
                raise ContextOverflowError(
                    f"the message needs {needed} tokens with its answer (max_tokens "
                    f"{self.settings.max_tokens}) but the context holds {self.backend.n_ctx}",
                    hint="send a shorter message, lower max_tokens or raise inference.n_ctx")
            self._drop_oldest_turn()

    def _drop_oldest_turn(self) -> None:
        """Drop the oldest user message and the answers that followed it."""
        self.history.pop(0)
        while self.history and self.history[0]["role"] != "user":
            self.history.pop(0)
        self.dropped_turns += 1

    def send(self, text: str, on_token: TokenCallback | None = None) -> GenerationResult:
        """Add a user message, stream the answer, keep both in the history.

        A cancelled answer keeps what was produced so far.
        """
        self.history.append({"role": "user", "content": text})
        self._cancel = threading.Event()
        try:
            request = replace(self.settings, messages=self.messages(), prompt=None,
                              adapter=self.adapter, cancel=self._cancel)
            result = self.backend.generate(request, on_token=on_token)
        except BaseException:
            self.history.pop()
            raise
        self.history.append({"role": "assistant", "content": result.text})
        return result

    def cancel(self) -> None:
        """Stop the running answer (safe to call from another thread)."""
        self._cancel.set()

    def reset(self) -> None:
        """Forget the history (the system prompt stays)."""
        self.history.clear()
        self.dropped_turns = 0
