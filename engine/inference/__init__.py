"""Inference: one `Backend` protocol and its backends: `llamacpp` (GGUF, hot-swapped LoRAs),
`hf` (transformers + PEFT) and `openai` (a remote vLLM/TGI-style server); chat sessions.

Backends take chat messages or raw prompts and stream text; they know nothing of the daemon or
the console.
"""

from engine.inference.base import (
    Backend,
    ContextOverflowError,
    GenerationRequest,
    GenerationResult,
    open_backend,
)

__all__ = ["Backend", "ContextOverflowError", "GenerationRequest", "GenerationResult",
           "open_backend"]
