"""The one chat turn every front end runs: route -> adapter -> RAG -> fit -> generate.

A turn takes the conversation so far, the new user message, a target (the base model, the
router's choice, or named adapters), the RAG settings and the sampling, and:

1. decides the adapter choice (routing the message when the target is `routed`);
2. makes sure each adapter it needs is loaded on the backend, once (`LoadedAdapters`);
3. retrieves the k nearest scenes and puts them in the user message as hypertoken segments,
   which the backend tokenizes segment by segment, so scene or user text never becomes a
   special id;
4. fits the prompt and the answer's budget into the context window by dropping the oldest
   turns (the system prompt never), then the retrieved scenes, before it gives up;
5. generates, streaming through `on_token`, and reports what it did: the route, the cited
   scene ids, the adapter, the turns dropped.

Retrieved text is never part of the history a turn hands back: later turns see the plain
question. `Conversation` keeps that history for front ends that hold one (the CLI REPL); the
daemon gets the history with each request and runs `ChatTurn.run` directly.

Knows the backend protocol, the RAG formatter and, through duck typing, a router
(`route(prompt) -> RouteDecision`, `config.adapters`) and a memory (`search`). Nothing of the
daemon, sockets or the console.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from engine.errors import ConfigError
from engine.inference.base import (
    BASE,
    AdapterChoice,
    Backend,
    ContextOverflowError,
    GenerationRequest,
    GenerationResult,
    TokenCallback,
)

if TYPE_CHECKING:
    from engine.memory.rag import RagContext

Message = dict[str, Any]


@dataclass(frozen=True)
class AdapterRef:
    """An adapter a turn may need: its name, where it is (None: already loaded), its scale."""

    name: str
    path: str | None = None
    scale: float = 1.0


@dataclass(frozen=True)
class Target:
    """What answers a turn.

    `kind` is `base` (no adapter), `routed` (the router picks per message) or `adapters`
    (the named adapters, all active with their scales).
    """

    kind: str = "base"
    adapters: tuple[AdapterRef, ...] = ()

    @classmethod
    def base(cls) -> Target:
        return cls("base")

    @classmethod
    def routed(cls) -> Target:
        return cls("routed")

    @classmethod
    def of(cls, *adapters: AdapterRef) -> Target:
        """The named adapters; none given means the base model."""
        return cls("adapters", tuple(adapters)) if adapters else cls("base")

    def describe(self) -> str:
        if self.kind == "adapters":
            return ", ".join(a.name if a.scale == 1.0 else f"{a.name}@{a.scale:g}"
                             for a in self.adapters)
        return self.kind


@dataclass
class RagSettings:
    """Retrieval for a turn: `k` scenes from `memory` (nothing when k is 0 or no memory)."""

    memory: Any = None
    k: int = 0
    filters: dict[str, Any] | None = None

    @property
    def enabled(self) -> bool:
        return self.memory is not None and self.k > 0


@dataclass
class TurnResult:
    """What a turn produced and what it did to produce it."""

    result: GenerationResult
    adapter: AdapterChoice
    history: list[Message]  # the conversation after this turn, without retrieved text
    route: dict[str, Any] | None = None
    cited: list[str] = field(default_factory=list)
    cited_scores: list[float] = field(default_factory=list)
    dropped_turns: int = 0
    dropped_scenes: int = 0
    hint: str | None = None

    @property
    def text(self) -> str:
        return self.result.text

    def report(self) -> dict[str, Any]:
        """What the turn did, as plain data (the daemon's `done` event, the CLI's --json)."""
        return {"adapter": self.adapter, "route": self.route, "cited": self.cited,
                "dropped_turns": self.dropped_turns, "dropped_scenes": self.dropped_scenes,
                **({"hint": self.hint} if self.hint else {})}


class LoadedAdapters:
    """The adapters loaded on one backend, by name and path: each is loaded once.

    Args:
        backend: the backend they are loaded on (a new backend needs a new LoadedAdapters).
    """

    def __init__(self, backend: Backend):
        self.backend = backend
        self.paths: dict[str, str] = {}
        self.loads = 0
        self._lock = threading.Lock()

    def ensure(self, ref: AdapterRef) -> None:
        """Load `ref` under its name unless that name already holds that path.

        Raises:
            ConfigError: a name without a path that the backend has not loaded.
        """
        with self._lock:
            if ref.path is None:
                if ref.name not in self.paths and ref.name not in self.backend.adapters:
                    raise ConfigError(f"adapter '{ref.name}' is not loaded",
                                      hint="give its path (NAME=DIR), or a name the profile's "
                                           "[router] adapters or the `adapters` list knows")
                return
            if self.paths.get(ref.name) == str(ref.path):
                return
            self.backend.load_adapter(ref.name, str(ref.path))
            self.paths[ref.name] = str(ref.path)
            self.loads += 1

    def drop(self, name: str) -> bool:
        """Unload adapter `name` from the backend, freeing its weights; False if not loaded."""
        with self._lock:
            if name not in self.paths and name not in self.backend.adapters:
                return False
            self.backend.unload_adapter(name)
            self.paths.pop(name, None)
            return True


class UnavailableRouter:
    """Stands in for a router that cannot be had (none trained yet): every message goes to the
    base model, and each route decision says why, so a front end can show it."""

    def __init__(self, reason: str):
        from engine.routing.router import RouterConfig

        self.reason = reason
        self.config = RouterConfig()

    def route(self, prompt: str) -> Any:
        from engine.routing.router import RouteDecision

        return RouteDecision(prompt, "", 0.0, {}, "base", reason=f"no router: {self.reason}")


def _choice_of(refs: Iterable[AdapterRef]) -> AdapterChoice:
    refs = list(refs)
    if not refs:
        return BASE
    if len(refs) == 1 and refs[0].scale == 1.0:
        return refs[0].name
    return {ref.name: ref.scale for ref in refs}


class ChatTurn:
    """Runs turns against one backend; the same object serves every conversation on it.

    Args:
        backend: where answers come from.
        adapters: the backend's loaded adapters (made here when not given).
        router: for `routed` targets: `route(prompt)` returning a RouteDecision, and
            `config.adapters` mapping registers to adapter dirs.
    """

    def __init__(self, backend: Backend, adapters: LoadedAdapters | None = None,
                 router: Any = None):
        self.backend = backend
        self.adapters = adapters or LoadedAdapters(backend)
        self.router = router

    # --- 1-2: the adapter choice ---------------------------------------------------------------

    def resolve(self, target: Target, message: str) -> tuple[AdapterChoice, dict[str, Any] | None]:
        """The adapter choice for a message, loading what it needs; and the route decision."""
        if target.kind == "base":
            return BASE, None
        if target.kind == "adapters":
            for ref in target.adapters:
                self.adapters.ensure(ref)
            return _choice_of(target.adapters), None
        if target.kind != "routed":
            raise ConfigError(f"unknown chat target '{target.kind}'",
                              hint="use base, routed or adapters")
        if self.router is None:
            raise ConfigError("this chat has no router to route with",
                              hint="train one with `hyperlex route --train ...` and map "
                                   "registers to adapters in the profile's [router] adapters")
        decision = self.router.route(message)
        paths: Mapping[str, str] = self.router.config.adapters
        weights = decision.weights if decision.mode in ("adapter", "mix") else {}
        refs = [AdapterRef(name, decision.adapter_path if name == decision.adapter and
                           decision.adapter_path else paths[name], float(weight))
                for name, weight in weights.items()]
        for ref in refs:
            self.adapters.ensure(ref)
        choice = refs[0].name if decision.mode == "adapter" else _choice_of(refs)
        return choice, decision.to_dict()

    # --- 3: the user message, with retrieved scenes -------------------------------------------

    @staticmethod
    def user_message(message: str, context: RagContext | None) -> Message:
        """The user message with its retrieved scenes, as content and segments."""
        from engine.memory.rag import rag_prompt

        if context is None:
            return {"role": "user", "content": message}
        segments = rag_prompt(context, message)
        return {"role": "user", "content": "".join(text for _, text in segments),
                "segments": segments}

    # --- 4: fitting ----------------------------------------------------------------------------

    def fit(self, history: list[Message], message: str, context: RagContext | None,
            sampling: GenerationRequest) -> tuple[list[Message], RagContext | None, int]:
        """Drop the oldest turns, then retrieved scenes, until prompt + answer fit n_ctx.

        Returns:
            (the history kept, the retrieved context kept, how many turns were dropped).

        Raises:
            ContextOverflowError: the bare message with its answer does not fit.
        """
        system = [m for m in history[:1] if m["role"] == "system"]
        turns = history[len(system):]
        dropped = 0
        while True:
            messages = system + turns + [self.user_message(message, context)]
            request = replace(sampling, messages=messages, prompt=None)
            needed = len(self.backend.prompt_tokens(request)) + sampling.max_tokens
            if needed <= self.backend.n_ctx:
                return system + turns, context, dropped
            if turns:
                turns = _without_oldest_turn(turns)
                dropped += 1
            elif context is not None and context.scene_ids:
                context = context.first(len(context.scene_ids) - 1)
            else:
                raise ContextOverflowError(
                    f"the message needs {needed} tokens with its answer (max_tokens "
                    f"{sampling.max_tokens}) but the context holds {self.backend.n_ctx}",
                    hint="send a shorter message, lower max_tokens or raise inference.n_ctx")

    # --- 5: the turn ---------------------------------------------------------------------------

    def run(self, history: list[Message], message: str, *, target: Target = Target(),
            rag: RagSettings | None = None, sampling: GenerationRequest | None = None,
            on_token: TokenCallback | None = None, cancel: threading.Event | None = None,
            on_start: Any = None) -> TurnResult:
        """One turn: the answer to `message` after `history`.

        Args:
            history: earlier messages (an optional system message first), plain text.
            message: the new user message.
            target: base, routed or named adapters.
            rag: scenes to retrieve into the message.
            sampling: max_tokens, temperature, top_p, seed, stop (its messages are ignored).
            on_token: called with each piece of the answer.
            cancel: set from another thread to stop the answer at the next token.
            on_start: called with the partial report (adapter, route, cited) before generating.

        Raises:
            ConfigError: bad sampling, an unknown adapter or no router for a routed target.
            ContextOverflowError: the message alone does not fit the context.
        """
        rag = rag or RagSettings()
        sampling = sampling or GenerationRequest()
        replace(sampling, messages=[{"role": "user", "content": message}], prompt=None).validate()
        choice, route = self.resolve(target, message)
        context = None
        if rag.enabled:
            from engine.memory.rag import build_context

            context = build_context(rag.memory, message, rag.k, rag.filters)
        retrieved = len(context.scene_ids) if context is not None else 0
        kept, context, dropped = self.fit(list(history), message, context, sampling)
        cited = list(context.scene_ids) if context is not None else []
        if on_start is not None:
            on_start({"adapter": choice, "route": route, "cited": cited,
                      "cited_scores": list(context.scores) if context is not None else [],
                      "dropped_turns": dropped})
        request = replace(sampling, messages=kept + [self.user_message(message, context)],
                          prompt=None, adapter=choice, cancel=cancel)
        result = self.backend.generate(request, on_token=on_token)
        plain = kept + [{"role": "user", "content": message},
                        {"role": "assistant", "content": result.text}]
        return TurnResult(result=result, adapter=choice, history=plain, route=route,
                          cited=cited, cited_scores=list(context.scores) if context else [],
                          dropped_turns=dropped, dropped_scenes=retrieved - len(cited),
                          hint=context.hint if context is not None else None)


def _without_oldest_turn(turns: list[Message]) -> list[Message]:
    """Drop the oldest user message and the answers that followed it."""
    rest = turns[1:]
    while rest and rest[0]["role"] != "user":
        rest = rest[1:]
    return rest


@dataclass
class Conversation:
    """A conversation held in memory (the CLI REPL): its history, target and settings.

    Attributes:
        turn: the chat turn to run each message through.
        sampling: the sampling settings of every turn.
        target: what answers (change it between messages to switch adapters).
        rag: retrieval settings.
        system_prompt: the first message, never dropped ("" for the backend's default).
    """

    turn: ChatTurn
    sampling: GenerationRequest = field(default_factory=GenerationRequest)
    target: Target = field(default_factory=Target)
    rag: RagSettings = field(default_factory=RagSettings)
    system_prompt: str = ""
    history: list[Message] = field(default_factory=list)
    dropped_turns: int = 0
    _cancel: threading.Event = field(default_factory=threading.Event, repr=False)

    def send(self, message: str, on_token: TokenCallback | None = None) -> TurnResult:
        """Answer one message and keep it (without retrieved text) in the history.

        A cancelled answer keeps what was produced so far.
        """
        self._cancel = threading.Event()
        system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt \
            else []
        outcome = self.turn.run(system + self.history, message, target=self.target,
                                rag=self.rag, sampling=self.sampling, on_token=on_token,
                                cancel=self._cancel)
        self.history = outcome.history[len(system):]
        self.dropped_turns += outcome.dropped_turns
        return outcome

    def cancel(self) -> None:
        """Stop the running answer (safe from another thread)."""
        self._cancel.set()

    def reset(self) -> None:
        """Forget the history (the system prompt stays)."""
        self.history.clear()
        self.dropped_turns = 0
