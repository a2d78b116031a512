"""Inference: one `Backend` protocol and its backends: `llamacpp` (GGUF, hot-swapped LoRAs),
`hf` (transformers + PEFT) and `openai` (a remote vLLM/TGI-style server); chat sessions.

Backends are found by name in `BACKENDS`, a table of `"module:Class"` targets imported only when
a backend is opened: asking for `hf` never imports llama.cpp, and the protocol module
(engine.backend, re-exported here and by engine.inference.base) imports no backend at all.
Another backend joins with `register_backend`; its class needs a `from_profile(profile)`.
Backends take chat messages or raw prompts and stream text; they know nothing of the daemon or
the console.
"""

from __future__ import annotations

import importlib
from typing import Any

from engine.backend import Backend, ContextOverflowError, GenerationRequest, GenerationResult
from engine.errors import ConfigError, NotAvailableError

# name -> "module:Class"; the module is imported when the backend is first opened
BACKENDS: dict[str, str] = {
    "hf": "engine.inference.hf:HFBackend",
    "llamacpp": "engine.inference.llamacpp:LlamaCppBackend",
    "openai": "engine.inference.openai:OpenAIBackend",
}


def register_backend(name: str, target: str) -> None:
    """Make a backend class openable by `name` (`target` is `"package.module:Class"`).

    Raises:
        ConfigError: `target` is not of the form `module:Class`.
    """
    module, _, attribute = target.partition(":")
    if not module or not attribute:
        raise ConfigError(f"backend target {target!r} is not of the form 'module:Class'",
                          hint="name the module and the class, e.g. 'mypkg.backend:MyBackend'")
    BACKENDS[name] = target


def backend_class(name: str) -> Any:
    """The class registered under `name`, importing its module now.

    Raises:
        NotAvailableError: no backend has that name.
    """
    if name not in BACKENDS:
        raise NotAvailableError(f"unknown inference backend '{name}'",
                                hint=f"use one of: {', '.join(sorted(BACKENDS))}")
    module, _, attribute = BACKENDS[name].partition(":")
    return getattr(importlib.import_module(module), attribute)


def open_backend(profile: Any, backend: str | None = None) -> Backend:
    """Load the backend a profile asks for (or `backend`, overriding it).

    Raises:
        NotAvailableError: unknown backend name.
    """
    return backend_class(backend or profile.inference.backend).from_profile(profile)


__all__ = ["BACKENDS", "Backend", "ContextOverflowError", "GenerationRequest",
           "GenerationResult", "backend_class", "open_backend", "register_backend"]
