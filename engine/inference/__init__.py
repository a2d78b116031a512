"""Inference: one `Backend` protocol, and the backends that implement it (llama.cpp, ...).

Backends take chat messages and stream tokens; they know nothing of the daemon or the console.
"""

from engine.inference.base import Backend, GenerationRequest, GenerationResult, open_backend

__all__ = ["Backend", "GenerationRequest", "GenerationResult", "open_backend"]
