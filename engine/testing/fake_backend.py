"""A fake inference backend, router and memory: the chat turn and schedulers tested in-process.

The fake follows the `Backend` protocol exactly (generate, prompt_tokens, tokenize, adapters,
close) with a character-level tokenizer: every character is one id, and the special strings it
knows (`<|im_start|>`, `<|im_end|>`, the hypertokens) are single ids only when tokenized with
`special=True`. Its chat template is ChatML. An answer is a fixed text or an echo of the last
user message, streamed one character a token with an optional delay, so cancellation, queueing
and keep-alive can be watched in about a second. It records every request it was given, every
adapter load and every close, for tests to assert on.

Ollama tests its scheduler the same way, with a fake runner injected where the real one goes.
Knows the backend protocol; nothing of the daemon or front ends.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from engine.errors import ModelNotFoundError
from engine.inference.base import (
    AdapterChoice,
    GenerationRequest,
    GenerationResult,
    TokenCallback,
    check_fits,
    normalise_choice,
    template_segments,
    tokenize_segments,
)

SPECIALS = ("<|im_start|>", "<|im_end|>", "<|scene|>", "<|/scene|>", "<|reg:logic|>",
            "<|reg:emotion|>", "<|reg:archetype|>", "<|reg:function|>", "<|field:mood|>",
            "<|field:actors|>", "<|marker|>", "<|link|>")
SPECIAL_BASE = 1_000_000  # special ids live above every character's code point


def chatml(messages: list[dict[str, str]]) -> str:
    """The ChatML rendering of messages, ending with the assistant's turn."""
    return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n"
                   for m in messages) + "<|im_start|>assistant\n"


class FakeBackend:
    """A deterministic backend with the real protocol and observable behaviour.

    Args:
        n_ctx: the context window in tokens (characters).
        answer: the answer text; None echoes the last user message's content.
        token_delay_s: pause before each answer token (to test cancel and queueing).
        name: the backend's name.
    """

    def __init__(self, *, n_ctx: int = 4096, answer: str | None = "ok", token_delay_s: float = 0.0,
                 name: str = "fake", system_prompt: str = ""):
        self.name = name
        self.n_ctx = n_ctx
        self.answer = answer
        self.token_delay_s = token_delay_s
        self.system_prompt = system_prompt
        self.requests: list[GenerationRequest] = []
        self.prompts: list[list[int]] = []
        self.load_calls: list[tuple[str, str]] = []
        self.active: dict[str, float] = {}
        self.closed = False
        self._adapters: dict[str, str] = {}
        self.started = threading.Event()  # set when a generation begins

    # --- tokens --------------------------------------------------------------------------------

    def tokenize(self, text: str, *, special: bool = False, add_bos: bool = False) -> list[int]:
        ids: list[int] = []
        position = 0
        while position < len(text):
            if special:
                found = next((s for s in SPECIALS if text.startswith(s, position)), None)
                if found is not None:
                    ids.append(SPECIAL_BASE + SPECIALS.index(found))
                    position += len(found)
                    continue
            ids.append(ord(text[position]))
            position += 1
        return ids

    def detokenize(self, ids: list[int]) -> str:
        return "".join(SPECIALS[i - SPECIAL_BASE] if i >= SPECIAL_BASE else chr(i) for i in ids)

    @staticmethod
    def is_special(token_id: int) -> bool:
        return token_id >= SPECIAL_BASE

    def _messages(self, request: GenerationRequest) -> list[dict[str, Any]]:
        messages = list(request.messages)
        if self.system_prompt and not any(m["role"] == "system" for m in messages):
            messages.insert(0, {"role": "system", "content": self.system_prompt})
        return messages

    def prompt_tokens(self, request: GenerationRequest) -> list[int]:
        if request.prompt_ids:
            return list(request.prompt_ids)
        if request.prompt is not None:
            return self.tokenize(request.prompt)
        return tokenize_segments(self.tokenize, template_segments(chatml, self._messages(request)))

    # --- adapters ------------------------------------------------------------------------------

    @property
    def adapters(self) -> list[str]:
        return list(self._adapters)

    def load_adapter(self, name: str, path: str) -> None:
        if str(path).startswith("missing"):
            raise ModelNotFoundError(f"adapter {path} does not exist")
        self._adapters[name] = str(path)
        self.load_calls.append((name, str(path)))

    def unload_adapter(self, name: str) -> None:
        self._adapters.pop(name, None)
        self.active.pop(name, None)

    def set_active(self, choice: AdapterChoice) -> None:
        self.active = normalise_choice(choice, self.adapters)

    # --- generation ----------------------------------------------------------------------------

    def generate(self, request: GenerationRequest, on_token: TokenCallback | None = None
                 ) -> GenerationResult:
        request.validate()
        if request.adapter is not None:
            self.set_active(request.adapter)
        tokens = self.prompt_tokens(request)
        check_fits(len(tokens), self.n_ctx)
        self.requests.append(request)
        self.prompts.append(tokens)
        self.started.set()
        started = time.perf_counter()
        text = self.answer
        if text is None:
            text = next((m["content"] for m in reversed(request.messages)
                         if m["role"] == "user"), "")
        produced: list[str] = []
        finish = "stop"
        for index, char in enumerate(text):
            if index >= min(request.max_tokens, self.n_ctx - len(tokens)):
                finish = "length"
                break
            if self.token_delay_s:
                time.sleep(self.token_delay_s)
            if request.cancelled:
                finish = "cancelled"
                break
            produced.append(char)
            if on_token is not None:
                on_token(char)
        return GenerationResult(text="".join(produced), tokens=len(produced),
                                prompt_tokens=len(tokens), seconds=time.perf_counter() - started,
                                finish_reason=finish,
                                extra={"backend": self.name, "adapters": dict(self.active)})

    def logits(self, token_ids: list[int], *, all_positions: bool = False) -> Any:
        """Uniform logits over the whole id space (as nanochat's mock model): (vocab,) or
        (len, vocab)."""
        import numpy as np

        vocab = SPECIAL_BASE + len(SPECIALS)
        check_fits(len(token_ids), self.n_ctx + 1)
        shape = (len(token_ids), vocab) if all_positions else (vocab,)
        return np.zeros(shape, dtype=np.float32)

    def close(self) -> None:
        self.closed = True


@dataclass
class FakeDecision:
    """A route decision with the fields the chat turn reads (as engine.routing's)."""

    prompt: str
    register: str
    mode: str
    adapter: str | None = None
    adapter_path: str | None = None
    weights: dict[str, float] = field(default_factory=dict)
    confidence: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class FakeRouterConfig:
    adapters: dict[str, str]


class FakeRouter:
    """Routes by keyword: the first register whose keyword is in the prompt, else the base.

    Args:
        keywords: register -> keyword.
        adapters: register -> adapter path (as the profile's [router] adapters).
    """

    def __init__(self, keywords: dict[str, str], adapters: dict[str, str]):
        self.keywords = keywords
        self.config = FakeRouterConfig(dict(adapters))

    def route(self, prompt: str) -> FakeDecision:
        for register, keyword in self.keywords.items():
            if keyword in prompt.lower() and register in self.config.adapters:
                return FakeDecision(prompt, register, "adapter", register,
                                    self.config.adapters[register], {register: 1.0})
        return FakeDecision(prompt, "none", "base", confidence=0.0)


@dataclass
class FakeHit:
    scene_id: str
    score: float
    scene: dict[str, Any]


@dataclass
class FakeSearch:
    hits: list[FakeHit]
    hint: str | None = None


class FakeMemory:
    """A scene memory that ranks its scenes by shared words with the query.

    Args:
        scenes: scene dicts with `id`, `text` and optionally `register`, `fields`.
    """

    def __init__(self, scenes: list[dict[str, Any]]):
        self.scenes = scenes
        self.queries: list[str] = []

    def search(self, query: str, k: int, filters: dict[str, Any] | None = None) -> FakeSearch:
        self.queries.append(query)
        words = set(query.lower().split())

        def score(scene: dict[str, Any]) -> float:
            return len(words & set(scene["text"].lower().split())) / (len(words) or 1)

        ranked = sorted(self.scenes, key=score, reverse=True)[:k]
        hint = None if self.scenes else "the scene memory is empty"
        return FakeSearch([FakeHit(s["id"], score(s), s) for s in ranked], hint)


def fake_opener(backends: list[FakeBackend] | None = None, profile: Any = None,
                factory: Callable[[], FakeBackend] | None = None
                ) -> Callable[[str], tuple[FakeBackend, Any]]:
    """An `opener(profile_name) -> (backend, profile)` for the daemon's chat scheduler that
    makes a new FakeBackend each load and appends it to `backends`."""
    made = backends if backends is not None else []

    def opener(profile_name: str) -> tuple[FakeBackend, Any]:
        from engine.profiles import load_profile

        backend = factory() if factory else FakeBackend()
        made.append(backend)
        return backend, profile if profile is not None else load_profile(profile_name)

    return opener
