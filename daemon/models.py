"""Chat inference inside the daemon: one model kept loaded, chats queued fairly, streamed.

`ModelManager` opens the profile's inference backend (llama.cpp on a GGUF) on first use, keeps it while chats come
(unloading after `keep_alive_s` idle) and unloads it on a profile switch. One chat thread runs
generations one at a time; waiting chats are served round-robin across client sessions, so a
client with ten queued chats does not starve one with a single chat. Tokens are handed to
`publish(topic, data)` as they come; a cancelled chat stops at the next token.

Adapters: a chat may name an adapter (resolved by the server to a name and a PEFT dir or GGUF
LoRA) or ask to be routed. An adapter is loaded onto the loaded model once, through the backend's
`load_adapter`, and then only activated per chat (`GenerationRequest.adapter`): switching never
reloads the model. A chat without an adapter runs on the base model.

Generation goes through engine.inference's `Backend`; this module knows nothing of sockets.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import ConfigError, ModelFormatError

log = logging.getLogger("hyperlexd.models")
Publish = Callable[[str, dict[str, Any]], None]
# (profile name, prompt) -> a route decision as engine.routing's RouteDecision.to_dict()
RouteFn = Callable[[str, str], dict[str, Any]]


class ChatCancelled(Exception):
    """Raised from the token callback to stop a generation mid-stream."""


def open_profile_backend(profile_name: str) -> tuple[Any, Any]:
    """Load a profile and open its inference backend: (backend, profile)."""
    from engine.inference.base import open_backend
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

    def __post_init__(self) -> None:
        self.topic = f"chat.{self.chat_id}.token"


class ModelManager:
    """Owns the loaded llama.cpp model and the chat thread.

    Args:
        publish: thread-safe event publisher.
        profile: the profile whose model chats use.
        keep_alive_s: unload after this long without a chat.
        opener: profile name -> (backend, profile); engine.inference by default.
        router: (profile name, prompt) -> route decision dict, for chats with `route`.
    """

    def __init__(self, publish: Publish, profile: str, keep_alive_s: float = 300.0,
                 opener: Callable[[str], tuple[Any, Any]] = open_profile_backend,
                 router: RouteFn | None = None):
        self._opener = opener
        self._router = router
        self._adapter_paths: dict[str, str] = {}  # adapters loaded on the current backend
        self._active: Any = "base"
        self.adapter_loads = 0
        self._publish = publish
        self.profile = profile
        self.keep_alive_s = keep_alive_s
        self._backend: Any = None
        self._backend_profile: Any = None
        self._loaded_name: str | None = None
        self.loads = 0
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
        """Queue a chat; a known chat id (a retried request) returns the first one."""
        with self._cond:
            if chat.chat_id in self._chats:
                return self._chats[chat.chat_id]
            self._chats[chat.chat_id] = chat
            self._queues.setdefault(chat.session, deque()).append(chat)
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
            queued = sum(len(q) for q in self._queues.values())
            loaded = None
            if self._backend is not None:
                loaded = str(getattr(self._backend, "model_file", self._loaded_name))
            return {"loaded": loaded, "profile": self.profile, "queued_chats": queued,
                    "keep_alive_s": self.keep_alive_s, "loads": self.loads,
                    "backend": getattr(self._backend, "name", None),
                    # Same number across chats = the same model object: adapters switched
                    # without a reload.
                    "instance": id(self._backend) if self._backend is not None else None,
                    "adapters": [{"name": n, "path": p} for n, p in self._adapter_paths.items()],
                    "active_adapter": self._active if self._backend is not None else None,
                    "adapter_loads": self.adapter_loads}

    def loaded_adapters(self) -> list[dict[str, Any]]:
        """The adapters loaded on the current model: `[{name, path, active}]`."""
        with self._cond:
            active = self._active
            names = set(active) if isinstance(active, dict) else {active}
            return [{"name": n, "path": p, "active": n in names}
                    for n, p in self._adapter_paths.items()]

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
        self._backend = None
        self._loaded_name = None
        self._adapter_paths = {}
        self._active = "base"
        self._unload_requested = False

    def _load(self, profile_name: str) -> tuple[Any, Any]:
        """The backend for `profile_name`, loading it (once) when needed."""
        if self._backend is None or self._loaded_name != profile_name:
            self._unload()
            log.info("loading the model of profile %s", profile_name)
            self._backend, self._backend_profile = self._opener(profile_name)
            self._loaded_name = profile_name
            self.loads += 1
        return self._backend, self._backend_profile

    def _generate(self, chat: Chat, profile_name: str) -> None:
        from engine.inference.base import GenerationRequest

        chat.state = "running"
        pieces: list[str] = []
        started = time.monotonic()

        def on_token(text: str) -> None:
            if chat.cancelled.is_set():
                raise ChatCancelled
            self._publish(chat.topic, {"event": "token", "index": len(pieces), "text": text})
            pieces.append(text)

        try:
            backend, profile = self._load(profile_name)
            choice, route = self._adapter_choice(chat, backend, profile, profile_name)
            inference = profile.inference
            request = GenerationRequest(
                messages=list(chat.messages),
                max_tokens=int(chat.options.get("max_tokens") or inference.max_tokens),
                temperature=float(chat.options.get("temperature", inference.temperature)),
                top_p=float(chat.options.get("top_p", inference.top_p)),
                seed=int(chat.options.get("seed", inference.seed)),
                adapter=choice).validate()
            with self._cond:
                self._active = choice
            self._publish(chat.topic, {"event": "start", "chat_id": chat.chat_id,
                                       "profile": profile_name, "adapter": choice,
                                       "route": route})
            started = time.monotonic()
            if chat.cancelled.is_set():
                raise ChatCancelled
            result = backend.generate(request, on_token)
            self._finish(chat, result.finish_reason, len(pieces), "".join(pieces),
                         time.monotonic() - started, adapter=choice)
        except ChatCancelled:
            self._finish(chat, "cancelled", len(pieces), "".join(pieces),
                         time.monotonic() - started)
        except Exception as exc:  # the daemon reports every failure as an event, never dies
            log.exception("chat %s failed", chat.chat_id)
            self._publish(chat.topic, {"event": "error", "type": type(exc).__name__,
                                       "message": getattr(exc, "message", str(exc))})
            self._finish(chat, "error", len(pieces), "".join(pieces), time.monotonic() - started)
        finally:
            self._last_used = time.monotonic()

    def _adapter_choice(self, chat: Chat, backend: Any, profile: Any, profile_name: str
                        ) -> tuple[Any, dict[str, Any] | None]:
        """The adapter choice for this chat, loading adapters it needs that are not loaded yet.

        Returns:
            (choice for GenerationRequest.adapter: "base", a name or name -> weight; the route
            decision when the chat was routed, else None).
        """
        if chat.options.get("route"):
            if self._router is None:
                raise ConfigError("this daemon has no router")
            prompt = next((m["content"] for m in reversed(chat.messages)
                           if m["role"] == "user"), chat.messages[-1]["content"])
            decision = self._router(profile_name, prompt)
            paths = dict(profile.router.adapters)
            if decision["mode"] == "adapter":
                self._ensure_adapter(backend, decision["adapter"], decision["adapter_path"])
                return decision["adapter"], decision
            if decision["mode"] == "mix":
                for register in decision["weights"]:
                    self._ensure_adapter(backend, register, paths[register])
                return dict(decision["weights"]), decision
            return "base", decision
        spec = chat.options.get("adapter")
        if not spec:
            return "base", None
        name, path = spec["name"], spec.get("path")
        if path:
            self._ensure_adapter(backend, name, path)
        elif name not in self._adapter_paths and name not in getattr(backend, "adapters", []):
            raise ConfigError(f"adapter '{name}' is not loaded",
                              hint="name a PEFT adapter dir, job:ID of a finished train job, "
                                   "or one of the `adapters` request's names")
        return name, None

    def _ensure_adapter(self, backend: Any, name: str, path: str) -> None:
        """Load `path` under `name` onto the loaded model, once."""
        if self._adapter_paths.get(name) == str(path):
            return
        log.info("loading adapter %s from %s", name, path)
        _check_vocabulary(backend, Path(path))
        backend.load_adapter(name, path)
        with self._cond:
            self._adapter_paths[name] = str(path)
            self.adapter_loads += 1

    def _finish(self, chat: Chat, reason: str, n_tokens: int, text: str, elapsed: float,
                adapter: Any = None) -> None:
        chat.state = "cancelled" if reason == "cancelled" else "done"
        self._publish(chat.topic, {"event": "done", "reason": reason, "n_tokens": n_tokens,
                                   "text": text, "elapsed_s": round(elapsed, 4),
                                   "tokens_per_s": round(n_tokens / elapsed, 2) if elapsed else 0,
                                   "adapter": adapter})
        with self._cond:
            self._chats.pop(chat.chat_id, None)


def _check_vocabulary(backend: Any, adapter_dir: Path) -> None:
    """Refuse, with a clear message, an adapter whose tokenizer adds tokens to the base's.

    Such an adapter (trained with hypertokens as new embedding rows) needs the base model's
    embeddings resized, which an adapter switch on a shared loaded model cannot do.
    """
    tokenizer_file = adapter_dir / "tokenizer.json"
    base_tokenizer = getattr(backend, "tokenizer", None)
    if not tokenizer_file.is_file() or base_tokenizer is None:
        return
    from tokenizers import Tokenizer

    adapter_vocab = Tokenizer.from_file(str(tokenizer_file)).get_vocab_size(with_added_tokens=True)
    base_vocab = len(base_tokenizer)
    if adapter_vocab > base_vocab:
        raise ModelFormatError(
            f"adapter {adapter_dir} adds {adapter_vocab - base_vocab} tokens to the base "
            f"model's {base_vocab}: it cannot be switched onto the shared loaded model",
            hint="merge it (`hyperlex export merge --adapter DIR -o OUT`) and chat with the "
                 "merged model, or train without new token rows (tokenizer.train_new_rows)")
