"""The openai backend: a remote OpenAI-compatible server (vLLM, TGI, llama_cpp.server).

The adapter is chosen by model name, as in vLLM's LoRA convention: a server started with
`--lora-modules NAME=PATH` (or llama_cpp.server with a model alias per LoRA) serves the adapter
as the model `NAME`; "base" sends the base model's name. `load_adapter(name, path)` asks vLLM to
load a new one at run time (`/v1/load_lora_adapter`) and otherwise only checks that the server
lists `name`. Answers stream over server-sent events; only the standard library is used.
A server that is down or slow is reported with its address. Knows nothing of front ends.
"""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from typing import Any

from engine.errors import ConfigError, NotAvailableError
from engine.inference.base import (
    AdapterChoice,
    GenerationRequest,
    GenerationResult,
    TokenCallback,
    normalise_choice,
)
from engine.inference.streaming import StopScanner


class RemoteServerError(NotAvailableError):
    """The remote inference server is down, slow, or answered with an error."""

    title = "inference server unavailable"


class OpenAIBackend:
    """Chat completions from an OpenAI-compatible server."""

    name = "openai"

    def __init__(self, base_url: str, *, model: str = "", timeout_s: float = 60.0,
                 n_ctx: int = 2048, system_prompt: str = ""):
        if not base_url:
            raise ConfigError("the openai backend needs a server address",
                              hint="set inference.openai_url in the profile, e.g. "
                                   "http://127.0.0.1:8000")
        self.base_url = base_url.rstrip("/").removesuffix("/v1")
        self.timeout_s = timeout_s
        self.n_ctx = n_ctx
        self.system_prompt = system_prompt
        self.base_model = model or self._first_model()
        self._adapters: list[str] = []
        self._active: dict[str, float] = {}

    @classmethod
    def from_profile(cls, profile: Any) -> OpenAIBackend:
        settings = profile.inference
        return cls(settings.openai_url, model=settings.openai_model,
                   timeout_s=settings.timeout_s, n_ctx=settings.n_ctx,
                   system_prompt=settings.system_prompt)

    # --- HTTP ----------------------------------------------------------------------------------

    def _open(self, path: str, payload: dict[str, Any] | None = None) -> Any:
        url = f"{self.base_url}{path}"
        data = json.dumps(payload).encode() if payload is not None else None
        request = urllib.request.Request(url, data=data, headers={
            "Content-Type": "application/json", "Accept": "application/json"})
        try:
            return urllib.request.urlopen(request, timeout=self.timeout_s)
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", "replace")[:300]
            raise RemoteServerError(f"{url} answered HTTP {exc.code}: {detail}") from exc
        except TimeoutError as exc:
            raise RemoteServerError(f"the server at {self.base_url} did not answer within "
                                    f"{self.timeout_s:g} s",
                                    hint="raise inference.timeout_s, or check the server") from exc
        except (urllib.error.URLError, ConnectionError) as exc:
            reason = getattr(exc, "reason", exc)
            if isinstance(reason, (TimeoutError, socket.timeout)):
                raise RemoteServerError(f"the server at {self.base_url} did not answer within "
                                        f"{self.timeout_s:g} s") from exc
            raise RemoteServerError(f"cannot reach the inference server at {self.base_url}: "
                                    f"{reason}",
                                    hint="start the server, or fix inference.openai_url") from exc

    def _json(self, path: str, payload: dict[str, Any] | None = None) -> Any:
        with self._open(path, payload) as response:
            return json.loads(response.read())

    def models(self) -> list[str]:
        """Model names the server lists (base and adapters)."""
        return [str(m["id"]) for m in self._json("/v1/models").get("data", [])]

    def _first_model(self) -> str:
        names = self.models()
        if not names:
            raise RemoteServerError(f"the server at {self.base_url} lists no models")
        return names[0]

    # --- adapters ------------------------------------------------------------------------------

    @property
    def adapters(self) -> list[str]:
        return list(self._adapters)

    def load_adapter(self, name: str, path: str | None = None) -> None:
        """Make the server's adapter `name` usable: loaded at run time when the server can
        (vLLM), otherwise it must already be listed by the server.

        Raises:
            RemoteServerError: the server neither lists nor can load it.
        """
        if name in self.models():
            self._adapters.append(name)
            return
        if path is not None:
            try:
                self._open("/v1/load_lora_adapter", {"lora_name": name, "lora_path": str(path)}
                           ).close()
                self._adapters.append(name)
                return
            except RemoteServerError:
                pass
        raise RemoteServerError(
            f"the server at {self.base_url} has no model or adapter named '{name}'",
            hint="start it with the adapter (vLLM: --lora-modules NAME=PATH; llama_cpp.server: "
                 "a model_alias with lora_path)")

    def unload_adapter(self, name: str) -> None:
        if name in self._adapters:
            self._adapters.remove(name)
            self._active.pop(name, None)

    def set_active(self, choice: AdapterChoice) -> None:
        """One adapter by name, or none; servers choose adapters by model name, so weighted
        combinations are refused."""
        weights = normalise_choice(choice, self.adapters)
        if len(weights) > 1 or any(scale != 1.0 for scale in weights.values()):
            raise NotAvailableError("an OpenAI-compatible server serves one adapter per request "
                                    "at scale 1", hint="use the hf or llamacpp backend to mix")
        self._active = weights

    @property
    def model_name(self) -> str:
        return next(iter(self._active), self.base_model)

    # --- generation ----------------------------------------------------------------------------

    def _messages(self, request: GenerationRequest) -> list[dict[str, str]]:
        # A remote server tokenizes text itself: segments travel as their joined content.
        messages = [{"role": m["role"], "content": m["content"]} for m in request.messages]
        if self.system_prompt and not any(m["role"] == "system" for m in messages):
            messages.insert(0, {"role": "system", "content": self.system_prompt})
        return messages

    def prompt_tokens(self, request: GenerationRequest) -> list[int]:
        """Token ids of the prompt as the server counts them (its tokenize endpoint), plus a
        few per message for the template's markers."""
        if request.prompt is not None:
            return self.tokenize(request.prompt)
        messages = self._messages(request)
        ids: list[int] = []
        for message in messages:
            ids += self.tokenize(message["content"]) + [0] * 4
        return ids

    def tokenize(self, text: str, *, special: bool = False) -> list[int]:
        """Ids from the server: vLLM's `/tokenize`, or llama_cpp.server's `/extras/tokenize`."""
        payload = {"model": self.model_name, "prompt": text, "input": text,
                   "add_special_tokens": False}
        for path in ("/tokenize", "/extras/tokenize"):
            try:
                answer = self._json(path, payload)
            except RemoteServerError:
                continue
            return [int(i) for i in answer.get("tokens", [])]
        raise NotAvailableError(f"the server at {self.base_url} has no tokenize endpoint")

    def logits(self, token_ids: list[int], *, all_positions: bool = False) -> Any:
        raise NotAvailableError("OpenAI-compatible servers do not return full logits",
                                hint="use the hf or llamacpp backend for evaluations")

    def generate(self, request: GenerationRequest, on_token: TokenCallback | None = None
                 ) -> GenerationResult:
        """Stream a chat completion (or a completion for a raw prompt) from the server.

        Raises:
            RemoteServerError: the server is down, slow (timeout) or refused the request.
        """
        request.validate()
        if request.adapter is not None:
            self.set_active(request.adapter)
        payload: dict[str, Any] = {
            "model": self.model_name, "max_tokens": request.max_tokens,
            "temperature": request.temperature, "top_p": request.top_p, "seed": request.seed,
            "stream": True,
            # Plain sampling as in the other backends: llama_cpp.server defaults to top_k 40,
            # min_p 0.05 and a repeat penalty of 1.1 (vLLM reads repetition_penalty).
            "top_k": 0, "min_p": 0.0, "repeat_penalty": 1.0, "repetition_penalty": 1.0}
        if request.stop:
            payload["stop"] = request.stop
        if request.json_schema is not None:
            payload["response_format"] = {"type": "json_object", "schema": request.json_schema}
        if request.prompt_ids:
            path, payload["prompt"] = "/v1/completions", list(request.prompt_ids)
        elif request.prompt is not None:
            path, payload["prompt"] = "/v1/completions", request.prompt
        else:
            path, payload["messages"] = "/v1/chat/completions", self._messages(request)
        started = time.perf_counter()
        scanner = StopScanner(request.stop)  # servers apply stops too; this keeps it exact
        pieces: list[str] = []
        produced = 0
        finish = "length"
        with self._open(path, payload) as response:
            for piece, reason in _events(response):
                if request.cancelled:
                    finish = "cancelled"
                    break
                if piece:
                    produced += 1
                    text = scanner.feed(piece)
                    if text:
                        pieces.append(text)
                        if on_token is not None:
                            on_token(text)
                if reason:
                    finish = "stop" if reason == "stop" else reason
                if scanner.stopped:
                    finish = "stop"
                    break
        tail = scanner.flush()
        if tail and finish != "cancelled":
            pieces.append(tail)
            if on_token is not None:
                on_token(tail)
        return GenerationResult(
            text="".join(pieces), tokens=produced, prompt_tokens=0,
            seconds=time.perf_counter() - started, finish_reason=finish,
            extra={"backend": self.name, "model": self.model_name})

    def close(self) -> None:
        """Nothing to free: the server owns the model."""


def _events(response: Any) -> Any:
    """(text piece, finish reason) from a server-sent-events stream of completion chunks."""
    for raw in response:
        line = raw.decode("utf-8").strip()
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            return
        chunk = json.loads(data)
        for choice in chunk.get("choices", []):
            piece = (choice.get("delta") or {}).get("content") or choice.get("text") or ""
            yield piece, choice.get("finish_reason")
