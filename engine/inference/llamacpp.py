"""The llama.cpp backend: a GGUF model on CPU (or CUDA when llama.cpp was built with it).

The GGUF header is checked before llama.cpp sees the file, since llama.cpp may abort the whole
interpreter on a corrupt file instead of raising.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from engine.errors import MissingDependencyError, ModelFormatError
from engine.inference.base import GenerationRequest, GenerationResult, TokenCallback
from engine.models import gguf_path, read_gguf_info


def import_llama_cpp() -> Any:
    """The llama_cpp module, or an error that says how to install it."""
    try:
        import llama_cpp
    except ImportError as exc:
        raise MissingDependencyError(
            "llama-cpp-python", "the llamacpp backend",
            install="pip install llama-cpp-python diskcache   (builds llama.cpp, ~5 min on 2 "
                    "cores; ./install.sh does this)") from exc
    return llama_cpp


class LlamaCppBackend:
    """llama-cpp-python on one GGUF file."""

    name = "llamacpp"

    def __init__(self, model_file: Path, *, n_ctx: int = 2048, threads: int = 0, seed: int = 0,
                 system_prompt: str = "", chat_format: str | None = None):
        llama_cpp = import_llama_cpp()
        read_gguf_info(model_file)
        self.model_file = model_file
        self.system_prompt = system_prompt
        try:
            self.llama = llama_cpp.Llama(
                model_path=str(model_file), n_ctx=n_ctx, seed=seed, verbose=False,
                n_threads=threads or max(1, (os.cpu_count() or 2)), chat_format=chat_format)
        except ValueError as exc:
            raise ModelFormatError(f"llama.cpp could not load {model_file}: {exc}") from exc

    @classmethod
    def from_profile(cls, profile: Any) -> LlamaCppBackend:
        """Load the profile's GGUF (`model.gguf`, or `model.base` when that is a GGUF)."""
        spec = profile.model.gguf or profile.model.base
        return cls(gguf_path(spec), n_ctx=profile.inference.n_ctx,
                   threads=profile.device.threads, seed=profile.inference.seed,
                   system_prompt=profile.inference.system_prompt)

    def _messages(self, request: GenerationRequest) -> list[dict[str, str]]:
        messages = list(request.messages)
        if self.system_prompt and not any(m["role"] == "system" for m in messages):
            messages.insert(0, {"role": "system", "content": self.system_prompt})
        return messages

    def generate(self, request: GenerationRequest, on_token: TokenCallback | None = None
                 ) -> GenerationResult:
        """Stream a chat completion through the model's own chat template."""
        request.validate()
        started = time.perf_counter()
        pieces: list[str] = []
        finish = "length"
        stream = self.llama.create_chat_completion(
            messages=self._messages(request), max_tokens=request.max_tokens,
            temperature=request.temperature, top_p=request.top_p, seed=request.seed,
            stop=request.stop or None, stream=True)
        tokens = 0
        for chunk in stream:
            choice = chunk["choices"][0]
            piece = choice.get("delta", {}).get("content")
            if piece:
                tokens += 1
                pieces.append(piece)
                if on_token is not None:
                    on_token(piece)
            if choice.get("finish_reason"):
                finish = choice["finish_reason"]
        prompt_tokens = self.llama.n_tokens - tokens if hasattr(self.llama, "n_tokens") else 0
        return GenerationResult(text="".join(pieces), tokens=tokens,
                                prompt_tokens=max(0, prompt_tokens),
                                seconds=time.perf_counter() - started, finish_reason=finish)

    def tokenize(self, text: str) -> list[int]:
        return list(self.llama.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    def close(self) -> None:
        self.llama.close()
