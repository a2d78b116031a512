"""The daemon's chat scheduler: one model kept loaded, chats queued fairly, streamed.

`ChatScheduler` opens the profile's inference backend (llama.cpp on a GGUF) on first use, keeps
it while chats come (unloading after `keep_alive_s` idle) and unloads it on a profile switch.
One chat thread runs generations one at a time; waiting chats are served round-robin across
client sessions, so a client with ten queued chats does not starve one with a single chat.
Tokens are handed to `publish(topic, data)` as they come; a cancelled chat stops at the next
token. Every failure, a model that does not load included, is an `error` event followed by
`done`; the chat thread keeps serving. Waiting chats are bounded in count and in bytes (their
prompts and histories): past either bound `submit` raises `ChatQueueFullError` ("daemon busy"),
so a flood of chats costs the daemon a bounded amount of memory. A running chat is not counted.

Each chat is one run of engine.inference.turn's `ChatTurn`, the chat turn every front end
shares: it routes (when asked), loads the adapter it needs once (`LoadedAdapters`; switching
never reloads the model), retrieves scenes from the scene memory (when asked), fits the history
into the context by dropping the oldest turns, and generates. The `start` event carries what the
turn decided (adapter, route, cited scene ids, turns dropped); `done` repeats it with the text.
A chat without an adapter runs on the base model.

The backend, the router and the memory come from injected openers (the engine's by default), so
the scheduler is tested in-process with engine.testing's fake backend. Not to be confused with
engine.models, which resolves model specs to files. Knows nothing of sockets or requests.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from engine.errors import ConfigError, HyperlexError

log = logging.getLogger("hyperlexd.chat")
Publish = Callable[[str, dict[str, Any]], None]
# profile name -> the profile's router (engine.routing.Router: `route(prompt)`, `config.adapters`)
RouterFn = Callable[[str], Any]
# (profile name, memory name) -> a scene memory to search, used as a context manager
MemoryFn = Callable[[str, str], Any]


class ChatCancelled(Exception):
    """Raised from the token callback to stop a generation mid-stream."""


class ChatQueueFullError(HyperlexError):
    """Too many chats, or too many bytes of chats, are waiting for the model."""

    title = "daemon busy"


def open_profile_backend(profile_name: str) -> tuple[Any, Any]:
    """Load a profile and open its inference backend: (backend, profile)."""
    from engine.inference import open_backend
    from engine.profiles import load_profile

    profile = load_profile(profile_name)
    return open_backend(profile), profile


@dataclass
class Chat:
    """One queued or running chat."""

    chat_id: str
    session: str
    messages: list[dict[str, str]]
    options: dict[str, Any]
    topic: str = ""
    cancelled: threading.Event = field(default_factory=threading.Event)
    state: str = "queued"
    # Where the chat's events go instead of the event bus (the HTTP gateway's stream), called
    # on the chat thread with each event.
    sink: Callable[[dict[str, Any]], None] | None = None
    # Work on the loaded model instead of a chat turn: called on the chat thread as
    # `work(backend, adapters, profile)`; what it returns (or raises) settles `result`.
    work: Callable[[Any, Any, Any], Any] | None = None
    result: concurrent.futures.Future[Any] = field(default_factory=concurrent.futures.Future)

    def __post_init__(self) -> None:
        self.topic = f"chat.{self.chat_id}.token"

    @property
    def size_bytes(self) -> int:
        """What the chat's prompt and history weigh, in UTF-8 bytes (the queue's byte bound)."""
        # surrogatepass: a lone surrogate in a message must be counted, not raise.
        return sum(len(str(value).encode("utf-8", "surrogatepass"))
                   for message in self.messages for value in message.values())


def _drop(data: dict[str, Any]) -> None:
    """The sink of a chat whose reader has gone."""


class ChatScheduler:
    """Owns the loaded model, the chat queue and the one chat thread that serves it.

    Args:
        publish: thread-safe event publisher.
        profile: the profile whose model chats use.
        keep_alive_s: unload after this long without a chat.
        opener: profile name -> (backend, profile); engine.inference by default.
        router: profile name -> its router, for chats with `route`.
        memory: (profile name, memory name) -> a scene memory, for chats with `rag_k`.
        max_queued: chats that may wait at once (the running one not counted).
        max_queued_bytes: bytes of prompts and histories that may wait at once.
    """

    def __init__(self, publish: Publish, profile: str, keep_alive_s: float = 300.0,
                 opener: Callable[[str], tuple[Any, Any]] = open_profile_backend,
                 router: RouterFn | None = None, memory: MemoryFn | None = None,
                 max_queued: int = 64, max_queued_bytes: int = 16 * 1024 * 1024):
        self.max_queued = max_queued
        self.max_queued_bytes = max_queued_bytes
        self._queued_count = 0
        self._queued_bytes = 0
        self._opener = opener
        self._router = router
        self._memory = memory
        self._adapters: Any = None  # engine LoadedAdapters of the current backend
        self._past_adapter_loads = 0
        self._active: Any = "base"
        self._publish = publish
        self.profile = profile
        self.keep_alive_s = keep_alive_s
        self._backend: Any = None
        self._backend_profile: Any = None
        self._loaded_name: str | None = None
        self.loads = 0
        self.last_load_s: float | None = None  # seconds the last model load took
        self._last_used = time.monotonic()
        self._cond = threading.Condition()
        self._queues: OrderedDict[str, deque[Chat]] = OrderedDict()  # session -> its chats
        self._chats: dict[str, Chat] = {}
        self._served: dict[str, int] = {}  # session -> turn it was last served
        self._turn = 0
        self._unload_requested = False
        self._stopping = False
        self._thread = threading.Thread(target=self._run, daemon=True, name="chat")
        self._thread.start()

    # --- called from the daemon's loop thread ---------------------------------------------------

    def submit(self, chat: Chat) -> Chat:
        """Queue a chat; a known chat id (a retried request) returns the first one.

        Raises:
            ChatQueueFullError: `max_queued` chats, or `max_queued_bytes` of them, wait already
                (or this one alone is bigger than that).
        """
        size = chat.size_bytes
        with self._cond:
            if chat.chat_id in self._chats:
                return self._chats[chat.chat_id]
            if size > self.max_queued_bytes:
                raise ChatQueueFullError(
                    f"this chat's prompt and history ({size} bytes) are more than the daemon "
                    f"queues ({self.max_queued_bytes} bytes)",
                    hint="send a shorter history, or raise daemon.max_queued_chat_bytes")
            if (self._queued_count >= self.max_queued
                    or self._queued_bytes + size > self.max_queued_bytes):
                raise ChatQueueFullError(
                    f"the chat queue is full ({self._queued_count} chats, "
                    f"{self._queued_bytes} bytes waiting; at most {self.max_queued} chats, "
                    f"{self.max_queued_bytes} bytes)",
                    hint="wait for chats to finish or cancel some, then send it again")
            self._chats[chat.chat_id] = chat
            self._queues.setdefault(chat.session, deque()).append(chat)
            self._queued_count += 1
            self._queued_bytes += size
            self._cond.notify()
        return chat

    def cancel(self, chat_id: str) -> bool:
        with self._cond:
            chat = self._chats.get(chat_id)
            if chat is None:
                return False
            chat.cancelled.set()
            self._cond.notify()
            return True

    def switch_profile(self, profile: str) -> None:
        """Use another profile from now on; its model loads on the next chat."""
        with self._cond:
            self.profile = profile
            self._unload_requested = True
            self._cond.notify()

    def status(self) -> dict[str, Any]:
        with self._cond:
            queued = self._queued_count
            loaded = None
            if self._backend is not None:
                loaded = str(getattr(self._backend, "model_file", self._loaded_name))
            return {"loaded": loaded, "profile": self.profile, "queued_chats": queued,
                    "keep_alive_s": self.keep_alive_s, "loads": self.loads,
                    "last_load_s": self.last_load_s,
                    "backend": getattr(self._backend, "name", None),
                    # Same number across chats = the same model object: adapters switched
                    # without a reload.
                    "instance": id(self._backend) if self._backend is not None else None,
                    "adapters": [{"name": n, "path": p} for n, p in self._paths().items()],
                    "active_adapter": self._active if self._backend is not None else None,
                    "adapter_loads": self.adapter_loads}

    def _paths(self) -> dict[str, str]:
        return dict(self._adapters.paths) if self._adapters is not None else {}

    @property
    def adapter_loads(self) -> int:
        """Adapter files loaded since start (switching between loaded ones loads none)."""
        return self._past_adapter_loads + (self._adapters.loads if self._adapters else 0)

    def loaded_adapters(self) -> list[dict[str, Any]]:
        """The adapters loaded on the current model: `[{name, path, active}]`."""
        with self._cond:
            active = self._active
            names = set(active) if isinstance(active, dict) else {active}
            return [{"name": n, "path": p, "active": n in names}
                    for n, p in self._paths().items()]

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            for chat in self._chats.values():
                chat.cancelled.set()
            self._cond.notify()
        self._thread.join(timeout=10)

    # --- the chat thread ------------------------------------------------------------------------

    def _next_chat(self) -> Chat | None:
        """Round-robin over sessions: the queued session served longest ago goes first."""
        while self._queues:
            session = min(self._queues, key=lambda s: self._served.get(s, -1))
            queue = self._queues[session]
            chat = queue.popleft()
            self._queued_count -= 1
            self._queued_bytes -= chat.size_bytes
            if not queue:
                del self._queues[session]
            self._turn += 1
            self._served[session] = self._turn
            while len(self._served) > 10_000:
                self._served.pop(next(iter(self._served)))
            if chat.cancelled.is_set():
                self._finish(chat, "cancelled", 0, "", 0.0)
                continue
            return chat
        return None

    def _run(self) -> None:
        while True:
            with self._cond:
                chat = None
                while not self._stopping:
                    chat = self._next_chat()
                    if chat is not None:
                        break
                    if self._unload_requested:
                        self._unload()
                    idle = time.monotonic() - self._last_used
                    if self._backend is not None and idle > self.keep_alive_s:
                        log.info("model idle for %.0f s: unloading", idle)
                        self._unload()
                    self._cond.wait(timeout=min(1.0, max(self.keep_alive_s, 0.05)))
                if self._stopping:
                    self._unload()
                    return
                if self._unload_requested:
                    self._unload()
                profile = self.profile
            self._generate(chat, profile)

    def _unload(self) -> None:
        if self._backend is not None:
            log.info("unloading the model of profile %s", self._loaded_name)
            self._backend.close()
        if self._adapters is not None:
            self._past_adapter_loads += self._adapters.loads
        self._backend = None
        self._loaded_name = None
        self._adapters = None
        self._active = "base"
        self._unload_requested = False

    def _load(self, profile_name: str) -> tuple[Any, Any]:
        """The backend for `profile_name`, loading it (once) when needed."""
        if self._backend is None or self._loaded_name != profile_name:
            self._unload()
            log.info("loading the model of profile %s", profile_name)
            from engine.inference.turn import LoadedAdapters

            began = time.monotonic()
            self._backend, self._backend_profile = self._opener(profile_name)
            self._adapters = LoadedAdapters(self._backend)
            self._loaded_name = profile_name
            self.loads += 1
            self.last_load_s = time.monotonic() - began
        return self._backend, self._backend_profile

    def _emit(self, chat: Chat, data: dict[str, Any]) -> None:
        """One event of a chat: to its sink when it has one, else on the event bus."""
        if chat.sink is not None:
            try:
                chat.sink(data)
            except Exception as exc:  # the reader is gone (its loop closed): stop the chat
                log.info("chat %s: its reader is gone (%s); cancelling", chat.chat_id, exc)
                chat.sink = _drop  # the rest of its events go nowhere, not to the bus
                chat.cancelled.set()
        else:
            self._publish(chat.topic, data)

    def _work(self, chat: Chat, profile_name: str) -> None:
        """Run a chat's `work` on the loaded model, settling its `result`."""
        chat.state = "running"
        try:
            backend, profile = self._load(profile_name)
            if chat.cancelled.is_set():
                raise ChatCancelled
            value = chat.work(backend, self._adapters, profile)  # type: ignore[misc]
        except BaseException as exc:  # handed to the waiting caller, never lost here
            chat.result.set_exception(exc)
        else:
            chat.result.set_result(value)
        finally:
            chat.state = "done"
            self._last_used = time.monotonic()
            with self._cond:
                self._chats.pop(chat.chat_id, None)

    def _generate(self, chat: Chat, profile_name: str) -> None:
        if chat.work is not None:
            self._work(chat, profile_name)
            return
        from engine.inference.base import GenerationRequest
        from engine.inference.turn import ChatTurn

        chat.state = "running"
        pieces: list[str] = []
        started = time.monotonic()
        report: dict[str, Any] = {}

        def on_token(text: str) -> None:
            if chat.cancelled.is_set():
                raise ChatCancelled
            self._emit(chat, {"event": "token", "index": len(pieces), "text": text})
            pieces.append(text)

        def on_start(decided: dict[str, Any]) -> None:
            nonlocal started
            report.update(decided)
            with self._cond:
                self._active = decided["adapter"]
            self._emit(chat, {"event": "start", "chat_id": chat.chat_id,
                              "profile": profile_name, **decided})
            started = time.monotonic()
            if chat.cancelled.is_set():
                raise ChatCancelled

        try:
            backend, profile = self._load(profile_name)
            inference = profile.inference
            sampling = GenerationRequest(
                max_tokens=int(chat.options.get("max_tokens") or inference.max_tokens),
                temperature=float(chat.options.get("temperature", inference.temperature)),
                top_p=float(chat.options.get("top_p", inference.top_p)),
                seed=int(chat.options.get("seed", inference.seed)),
                stop=list(chat.options.get("stop") or []),
                json_schema=chat.options.get("json_schema"))
            router = self._router_for(chat, profile_name)
            history, message = chat.messages[:-1], chat.messages[-1]["content"]
            with self._rag_for(chat, profile_name) as rag:
                outcome = ChatTurn(backend, self._adapters, router).run(
                    history, message, target=self._target(chat), rag=rag, sampling=sampling,
                    on_token=on_token, cancel=chat.cancelled, on_start=on_start)
            result = outcome.result
            if result.finish_reason == "cancelled":
                raise ChatCancelled
            self._finish(chat, result.finish_reason, len(pieces), "".join(pieces),
                         time.monotonic() - started, prompt_tokens=result.prompt_tokens,
                         **outcome.report())
        except ChatCancelled:
            self._finish(chat, "cancelled", len(pieces), "".join(pieces),
                         time.monotonic() - started, **report)
        except Exception as exc:  # the daemon reports every failure as an event, never dies
            if isinstance(exc, HyperlexError):
                # A failure the engine explains (a message longer than the context, an adapter
                # that does not exist) is usually the request's: one line, not a traceback a
                # client could make the daemon write at every chat.
                log.warning("chat %s failed: %s: %s", chat.chat_id, type(exc).__name__,
                            exc.message[:300])
            else:
                log.exception("chat %s failed", chat.chat_id)
            self._emit(chat, {"event": "error", "type": type(exc).__name__,
                              "message": getattr(exc, "message", str(exc)),
                              **({"hint": exc.hint} if getattr(exc, "hint", None) else {})})
            self._finish(chat, "error", len(pieces), "".join(pieces), time.monotonic() - started)
        finally:
            self._last_used = time.monotonic()

    @staticmethod
    def _target(chat: Chat) -> Any:
        """The turn's target: routed, the chat's adapter, or the base model."""
        from engine.inference.turn import AdapterRef, Target

        if chat.options.get("route"):
            return Target.routed()
        spec = chat.options.get("adapter")
        if not spec:
            return Target.base()
        return Target.of(AdapterRef(spec["name"], spec.get("path")))

    def _router_for(self, chat: Chat, profile_name: str) -> Any:
        if not chat.options.get("route"):
            return None
        from engine.errors import HyperlexError
        from engine.inference.turn import UnavailableRouter

        if self._router is None:
            return UnavailableRouter("this daemon has no router")
        try:
            return self._router(profile_name)
        except HyperlexError as error:  # none trained yet: answer with base and say why
            return UnavailableRouter(f"{error.message}" + (f" ({error.hint})" if error.hint
                                                           else ""))

    @contextlib.contextmanager
    def _rag_for(self, chat: Chat, profile_name: str) -> Iterator[Any]:
        """The turn's RAG settings: the named scene memory, open for the turn, when asked."""
        from engine.inference.turn import RagSettings

        k = int(chat.options.get("rag_k") or 0)
        if k <= 0:
            yield RagSettings()
            return
        if self._memory is None:
            raise ConfigError("this daemon has no scene memory for RAG")
        with self._memory(profile_name, str(chat.options.get("memory") or "default")) as memory:
            yield RagSettings(memory, k)

    def _finish(self, chat: Chat, reason: str, n_tokens: int, text: str, elapsed: float,
                **report: Any) -> None:
        chat.state = "cancelled" if reason == "cancelled" else "done"
        if chat.work is not None:  # a work item cancelled while queued
            chat.result.cancel()
        else:
            self._emit(chat, {"event": "done", "reason": reason, "n_tokens": n_tokens,
                              "text": text, "elapsed_s": round(elapsed, 4),
                              "tokens_per_s": round(n_tokens / elapsed, 2) if elapsed else 0,
                              "adapter": report.pop("adapter", None), **report})
        with self._cond:
            self._chats.pop(chat.chat_id, None)
