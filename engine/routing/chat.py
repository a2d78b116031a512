"""A routed chat: every user message is routed, its adapter activated, then answered.

The loop runs over any backend that keeps several adapters loaded and switches between them
(`AdapterBackend`; engine.routing.multi_lora.MultiLoraModel is the transformers one). With a
memory it also retrieves scenes for each message (RAG) and the answer cites their ids.

Knows the router, the memory's RAG and the backend protocol; nothing of front ends.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from engine.routing.router import RouteDecision, Router


class AdapterBackend(Protocol):
    """What a routed chat needs from an inference backend."""

    adapters: dict[str, str]

    @property
    def active(self) -> Any: ...

    def load_adapters(self, adapters: dict[str, str]) -> None: ...

    def activate(self, target: Any) -> None: ...

    def generate(self, messages: list[dict[str, str]], max_tokens: int = 32) -> Any: ...


@dataclass
class RoutedTurn:
    """One exchange: the routing decision, what was active while answering, and the answer."""

    message: str
    decision: RouteDecision
    active: Any
    answer: str
    citations: list[str] = field(default_factory=list)


def target_of(decision: RouteDecision) -> Any:
    """What the backend should activate for a decision: a name, weights or None (base)."""
    if decision.mode == "adapter":
        return decision.adapter
    if decision.mode == "mix":
        return dict(decision.weights)
    return None


class RoutedChat:
    """A conversation whose every message is routed to an adapter before it is answered.

    Args:
        router: the prompt router (its config maps registers to adapter paths).
        backend: a backend with `load_adapters / activate / generate`.
        memory: a SceneMemory for RAG, or None.
        rag_k: scenes retrieved per message when a memory is given.
        max_tokens: answer length.
        system_prompt: optional first message.
    """

    def __init__(self, router: Router, backend: AdapterBackend, *, memory: Any = None,
                 rag_k: int = 3, max_tokens: int = 32, system_prompt: str | None = None):
        self.router = router
        self.backend = backend
        self.memory = memory
        self.rag_k = rag_k
        self.max_tokens = max_tokens
        self.history: list[dict[str, str]] = []
        if system_prompt:
            self.history.append({"role": "system", "content": system_prompt})
        # Every register's adapter is loaded up front, so switching per message reads no file.
        backend.load_adapters(dict(router.config.adapters))

    def send(self, message: str) -> RoutedTurn:
        """Route one user message, activate its adapter(s), answer, and keep the history."""
        decision = self.router.route(message)
        self.backend.activate(target_of(decision))
        content, citations = message, []
        if self.memory is not None and self.rag_k > 0:
            from engine.memory.rag import build_context, rag_prompt

            context = build_context(self.memory, message, self.rag_k)
            content = "".join(text for _, text in rag_prompt(context, message))
            citations = context.scene_ids
        self.history.append({"role": "user", "content": content})
        active = self.backend.active
        generation = self.backend.generate(self.history, max_tokens=self.max_tokens)
        answer = getattr(generation, "text", generation)
        self.history[-1] = {"role": "user", "content": message}  # keep retrieved text out of
        self.history.append({"role": "assistant", "content": answer})  # later turns' prompts
        return RoutedTurn(message, decision, active, answer, citations)
