"""What the HTTP gateway reaches in the daemon: its request table, its chat scheduler and model,
and the adapters it serves.

The gateway is a front end like the console, with one difference: it runs inside the daemon.
So it uses the daemon's own objects, never a second copy of them:

- jobs and lists go through the same handlers as ZeroMQ requests (daemon.api's table), run on
  the loop thread (or a request worker, as the table says), so both front ends validate and
  answer alike;
- chats are the chat scheduler's chats (one queue, one loaded model, one `ChatTurn`), their
  events handed to the HTTP stream instead of the event bus;
- work on the loaded model (scoring a prompt, tokenizing, generating from raw text) is queued on
  the chat thread, which owns the model, between chats.

Adapters served: every succeeded train job's adapter (`job-N`), the profile's router adapters,
and those loaded over HTTP (admin key; only from under the adapter roots, only for the served
base). Unloading one frees its weights on the model, not only its name.

This module knows the daemon's server and the engine; it knows nothing of FastAPI.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from daemon import api
from daemon import protocol as proto
from daemon.chat_scheduler import Chat
from engine.errors import HyperlexError

if TYPE_CHECKING:
    from daemon.http.settings import HttpSettings
    from daemon.server import Server

ROUTE_MODEL = "route"
BASE_ALIAS = "base"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


class GatewayError(HyperlexError):
    """An error the gateway answers with an HTTP status (OpenAI's error body)."""

    def __init__(self, status: int, message: str, *, kind: str = "invalid_request_error",
                 hint: str | None = None, param: str | None = None,
                 retry_after: float | None = None):
        super().__init__(message, hint=hint)
        self.status = status
        self.kind = kind
        self.param = param
        self.retry_after = retry_after


# Engine and daemon errors as HTTP statuses; anything else is a 500.
STATUS_OF = {"BadRequest": 400, "ConfigError": 400, "DataError": 400,
             "ContextOverflowError": 400, "ModelFormatError": 400, "UnknownMemoryError": 404,
             "ModelNotFoundError": 404, "NotFound": 404, "JobNotFoundError": 404,
             # What the served backend cannot do is the request's problem (as vLLM answers),
             # not a server failure: 400, with the hint saying which backend can.
             "NotAvailableError": 400, "MissingDependencyError": 400, "SidesError": 400,
             "RemoteServerError": 502, "HyperlexError": 400,
             "ChatQueueFullError": 429, "Busy": 429, "BusyError": 429, "QueueFull": 429,
             "ShuttingDown": 503, "DiskFullError": 507}


def as_gateway_error(kind: str, message: str, hint: str | None = None) -> GatewayError:
    status = STATUS_OF.get(kind, 500)
    return GatewayError(status, message, hint=hint, kind=kind,
                        retry_after=1.0 if status == 429 else None)


@dataclass
class ServedAdapter:
    """An adapter the gateway lists as a model."""

    name: str
    path: str
    source: str  # "job", "router" or "loaded"
    created: int
    rank: int | None = None
    alpha: float | None = None
    target_modules: list[str] | None = None
    sha256: str | None = None
    base: str | None = None

    def card(self, parent: str) -> dict[str, Any]:
        return {"id": self.name, "object": "model", "created": self.created,
                "owned_by": "hyperlex", "parent": parent, "root": self.path,
                "source": self.source, "sha256": self.sha256, "rank": self.rank,
                "lora_alpha": self.alpha, "target_modules": self.target_modules}


_describe_cache: dict[tuple[str, float], dict[str, Any]] = {}


def describe_adapter(path: Path) -> dict[str, Any]:
    """Rank, alpha, target modules, the weights' sha256 and the base an adapter dir records.

    Raises:
        ModelNotFoundError / ModelFormatError: not a PEFT LoRA dir.
    """
    from engine.adapters import WEIGHTS_FILES, adapter_config

    config = adapter_config(path)
    weights = next((path / name for name in WEIGHTS_FILES if (path / name).is_file()), None)
    key = (str(weights or path), weights.stat().st_mtime if weights else 0.0)
    if key not in _describe_cache:
        sha = None
        if weights is not None:
            sha = hashlib.sha256()
            with weights.open("rb") as data:
                for block in iter(lambda: data.read(1 << 20), b""):
                    sha.update(block)
        base = None
        card = path / "hyperlex_run_card.json"
        if card.is_file():
            try:
                base = json.loads(card.read_text())["profile"]["model"]["base"]
            except (ValueError, KeyError, TypeError):
                base = None
        modules = config.get("target_modules")
        _describe_cache[key] = {
            "rank": config.get("r"), "alpha": config.get("lora_alpha"),
            "target_modules": sorted(modules) if isinstance(modules, list) else modules,
            "sha256": sha.hexdigest() if sha else None,
            "base": base, "base_model_name_or_path": config.get("base_model_name_or_path")}
    return _describe_cache[key]


def base_model_id(spec: str) -> str:
    """The base model's name in `/v1/models`: its file or dir name, or the spec."""
    from engine.models import resolve_model

    try:
        ref = resolve_model(spec)
    except HyperlexError:
        return spec
    if ref.kind == "gguf":
        return Path(ref.path).stem
    if ref.kind == "hf":
        return Path(ref.path).name
    return spec.replace(":", "-")


class Gateway:
    """The daemon, as the HTTP routes see it.

    Args:
        server: the running daemon (its loop thread serves `call`).
        settings: the gateway's settings (adapter roots, timeout).
    """

    def __init__(self, server: Server, settings: HttpSettings):
        self.server = server
        self.settings = settings
        self._lock = threading.Lock()
        self._loaded: dict[str, ServedAdapter] = {}  # over HTTP, by name
        self._jobs_cache: tuple[float, list[dict[str, Any]]] = (0.0, [])
        self.adapter_load_s: dict[str, float] = {}
        self.ready_once = False  # the model has loaded: /ready stays ready after idle unloads
        self._profile_cache: tuple[str, float, Any] | None = None
        self._base_ids: dict[str, str] = {}

    # --- the request table ------------------------------------------------------------------

    def call(self, verb: str, content: dict[str, Any], timeout: float | None = None
             ) -> dict[str, Any]:
        """Run one request of the daemon's table as the ZeroMQ front end would (blocking).

        Raises:
            GatewayError: the handler's error, with its HTTP status.
        """
        spec = api.VERBS[verb]
        if self.server.stopping and not spec.while_stopping:
            raise GatewayError(503, "the daemon is shutting down", kind="ShuttingDown")
        msg = SimpleNamespace(content=content, msg_type=f"{verb}_request",
                              header={"session": "http", "via": "http"})
        done: concurrent.futures.Future[tuple[dict[str, Any], str]] = concurrent.futures.Future()

        def run() -> None:
            try:
                done.set_result(self.server.dispatcher.call(spec, msg))  # type: ignore[arg-type]
            except BaseException as exc:
                done.set_exception(exc)

        if spec.runs == "pool":
            self.server.dispatcher.pool.submit(run)
        else:
            self.server.on_loop(run)
        reply, _ = done.result(timeout=timeout or self.settings.request_timeout_s)
        if reply.get("status") != "ok":
            error = reply.get("error") or {}
            raise as_gateway_error(error.get("type", "InternalError"),
                                   error.get("message", "the daemon gave no reason"),
                                   error.get("hint"))
        return {k: v for k, v in reply.items() if k != "status"}

    # --- models -----------------------------------------------------------------------------

    @property
    def profile(self) -> Any:
        """The daemon's current profile, read again when it is switched or 2 s have passed
        (parsing and checking a profile costs milliseconds; a request must not)."""
        from engine.profiles import load_profile

        name, now = self.server.profile, time.monotonic()
        cached = self._profile_cache
        if cached is None or cached[0] != name or now - cached[1] > 2.0:
            cached = (name, now, load_profile(name))
            self._profile_cache = cached
        return cached[2]

    def base_id(self) -> str:
        spec = self.profile.model.base
        if spec not in self._base_ids:
            self._base_ids[spec] = base_model_id(spec)
        return self._base_ids[spec]

    def adapters(self) -> dict[str, ServedAdapter]:
        """Every adapter served, by name: train jobs, the router's, and loaded ones."""
        served: dict[str, ServedAdapter] = {}
        now = time.monotonic()
        stamp, known = self._jobs_cache
        if now - stamp > 2.0:
            known = self.call("adapters", {})["known"]
            self._jobs_cache = (now, known)
        for job in known:
            served[job["name"]] = ServedAdapter(job["name"], job["path"], "job",
                                                int(job.get("finished") or 0))
        for register, path in sorted(self.profile.router.adapters.items()):
            if Path(path).expanduser().is_dir():
                served.setdefault(register, ServedAdapter(register,
                                                          str(Path(path).expanduser()),
                                                          "router", 0))
        with self._lock:
            served.update(self._loaded)
        for adapter in served.values():
            try:
                info = describe_adapter(Path(adapter.path))
            except HyperlexError:
                continue  # listed without details; chatting with it says what is wrong
            adapter.rank, adapter.alpha = info["rank"], info["alpha"]
            adapter.target_modules, adapter.sha256 = info["target_modules"], info["sha256"]
            adapter.base = info["base"]
        return served

    def models(self) -> list[dict[str, Any]]:
        base = self.base_id()
        created = int(self.server.started_at)
        cards = [{"id": base, "object": "model", "created": created, "owned_by": "hyperlex",
                  "parent": None, "root": self.profile.model.base, "kind": "base",
                  "aliases": [BASE_ALIAS]},
                 {"id": ROUTE_MODEL, "object": "model", "created": created,
                  "owned_by": "hyperlex", "parent": base, "root": None, "kind": "router",
                  "description": "the router picks the adapter for each prompt's register"}]
        cards += [dict(a.card(base), kind="adapter") for a in self.adapters().values()]
        return cards

    def target(self, model: str) -> dict[str, Any]:
        """Chat options for a model name: base, `route`, or an adapter `{name, path}`.

        Raises:
            GatewayError: 404 for a name that is not served.
        """
        if model in (BASE_ALIAS, self.base_id()):
            return {}
        if model == ROUTE_MODEL:
            return {"route": True}
        adapter = self.adapters().get(model)
        if adapter is None:
            raise GatewayError(404, f"the model {model!r} does not exist",
                               kind="model_not_found", param="model",
                               hint="GET /v1/models lists the base, `route` and every adapter")
        return {"adapter": {"name": adapter.name, "path": adapter.path}}

    # --- the model thread -------------------------------------------------------------------

    def submit_chat(self, messages: list[dict[str, Any]], options: dict[str, Any],
                    sink: Callable[[dict[str, Any]], None]) -> Chat:
        """Queue a chat on the daemon's scheduler; its events go to `sink` (chat thread).

        Raises:
            GatewayError: 429 when the chat queue is full.
        """
        chat = Chat(proto.new_id(), "http", messages, options, sink=sink)
        try:
            return self.server.chats.submit(chat)
        except HyperlexError as exc:
            raise as_gateway_error(type(exc).__name__, exc.message, exc.hint) from None

    def on_model(self, work: Callable[[Any, Any, Any], Any]) -> Chat:
        """Queue `work(backend, adapters, profile)` on the chat thread; await `chat.result`.

        Raises:
            GatewayError: 429 when the chat queue is full.
        """
        chat = Chat(proto.new_id(), "http", [], {}, work=work)
        try:
            return self.server.chats.submit(chat)
        except HyperlexError as exc:
            raise as_gateway_error(type(exc).__name__, exc.message, exc.hint) from None

    def preload(self) -> None:
        """Load the chat model now (so `/ready` turns ready without waiting for a chat)."""
        chat = self.on_model(lambda backend, adapters, profile: None)
        chat.result.add_done_callback(self._loaded_once)

    def _loaded_once(self, result: concurrent.futures.Future[Any]) -> None:
        if not result.cancelled() and result.exception() is None:
            self.ready_once = True

    def ready(self) -> bool:
        if self.ready_once:
            return True
        self.ready_once = self.server.chats.status()["loaded"] is not None
        return self.ready_once

    # --- adapters over HTTP (admin) ---------------------------------------------------------

    def load_adapter(self, name: str, path: str) -> dict[str, Any]:
        """Check and load an adapter on the model, then serve it under `name`.

        Raises:
            GatewayError: a bad name (400), a path outside the adapter roots (403), not an
                adapter (400), an adapter of another base (409), a load that fails (400).
        """
        if not _NAME.fullmatch(name) or name in (ROUTE_MODEL, BASE_ALIAS, self.base_id()):
            raise GatewayError(400, f"adapter name {name[:80]!r} is not allowed", param="name",
                               hint="1-64 letters, digits, '_', '-' or '.', not a base or "
                                    "`route`")
        resolved = Path(path).expanduser().resolve()
        roots = self.settings.adapter_roots
        if not any(resolved.is_relative_to(root) for root in roots):
            # Checked before existence: a client learns nothing of paths outside the roots.
            raise GatewayError(403, f"{resolved} is outside the adapter roots "
                               f"({', '.join(map(str, roots))})", param="path",
                               kind="permission_error",
                               hint="put the adapter under a root, or add one to the "
                                    "profile's [http] adapter_roots")
        try:
            info = describe_adapter(resolved)
        except HyperlexError as exc:
            raise GatewayError(400, exc.message, hint=exc.hint, param="path") from None
        served_base = self.profile.model.base
        if info["base"] is not None and info["base"] != served_base:
            raise GatewayError(409, f"the adapter was trained on {info['base']}, and this "
                               f"daemon serves {served_base}", kind="base_mismatch",
                               hint="load it into a daemon whose profile serves that base")
        existing = self.adapters().get(name)
        if existing is not None and existing.path != str(resolved):
            raise GatewayError(409, f"an adapter named {name!r} is served already",
                               param="name", hint="unload it first, or pick another name")

        def load(backend: Any, adapters: Any, profile: Any) -> float:
            from engine.inference.turn import AdapterRef

            began = time.monotonic()
            adapters.ensure(AdapterRef(name, str(resolved)))  # the backend checks shapes
            return time.monotonic() - began

        chat = self.on_model(load)
        try:
            seconds = chat.result.result(timeout=self.settings.request_timeout_s)
        except HyperlexError as exc:
            raise GatewayError(400, f"the adapter did not load: {exc.message}",
                               hint=exc.hint) from None
        adapter = ServedAdapter(name, str(resolved), "loaded", int(time.time()))
        with self._lock:
            self._loaded[name] = adapter
        self.adapter_load_s[name] = seconds
        return {"name": name, "path": str(resolved), "load_s": round(seconds, 4),
                **{k: info[k] for k in ("rank", "target_modules", "sha256")}}

    def unload_adapter(self, name: str) -> dict[str, Any]:
        """Stop serving an adapter loaded over HTTP and free its weights on the model.

        Raises:
            GatewayError: 404 for a name not loaded over HTTP.
        """
        with self._lock:
            adapter = self._loaded.get(name)
        if adapter is None:
            raise GatewayError(404, f"no adapter named {name[:80]!r} was loaded over HTTP",
                               param="name", hint="GET /v1/models lists what is served; "
                               "train-job and router adapters are not unloaded here")
        chat = self.on_model(lambda backend, adapters, profile: adapters.drop(name))
        freed = bool(chat.result.result(timeout=self.settings.request_timeout_s))
        with self._lock:
            self._loaded.pop(name, None)
        self.adapter_load_s.pop(name, None)
        return {"name": name, "unloaded": True, "freed": freed}
