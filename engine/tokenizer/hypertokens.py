"""Which hypertokens a profile adds, in a stable order, and what kind each one is.

Two kinds of added token exist. *Control* hypertokens look like `<|...|>`: they mark scene
structure and only the formatter emits them (text never encodes to them). *Text* tokens are
everything else a profile adds (fractal symbols such as `∴`, couplings accepted from
`hyperlex tokenizer mine`): they are ordinary text that the tokenizer keeps as one token wherever
it appears. This module knows nothing of tokenizers or models; it only names tokens.
"""

from __future__ import annotations

import re
from typing import Any

from engine.types import REGISTERS

SCENE_OPEN = "<|scene|>"
SCENE_CLOSE = "<|/scene|>"
LINK = "<|link|>"
MARKER = "<|marker|>"
# The scene fields the formatter marks; the order is part of the vocabulary, never reorder it.
FIELD_NAMES: tuple[str, ...] = ("actors", "setting", "mood", "time", "claims", "function",
                                "markers")
_CONTROL_SHAPE = re.compile(r"^<\|[^\s|][^|]*\|>$")


def register_token(register: str) -> str:
    """The hypertoken of a register, e.g. `<|reg:logic|>`."""
    return f"<|reg:{register}|>"


def field_token(name: str) -> str:
    """The hypertoken of a scene field, e.g. `<|field:mood|>`."""
    return f"<|field:{name}|>"


def structural_hypertokens() -> list[str]:
    """The fixed structural hypertokens every profile with hypertokens gets, in vocabulary order."""
    return ([SCENE_OPEN, SCENE_CLOSE]
            + [register_token(register) for register in REGISTERS]
            + [field_token(name) for name in FIELD_NAMES]
            + [LINK, MARKER])


def is_control(token: str) -> bool:
    """True for `<|...|>` hypertokens: formatter-only, never produced from text."""
    return bool(_CONTROL_SHAPE.match(token))


def hypertokens_for(profile: Any) -> list[str]:
    """The profile's hypertokens in a stable order (their ids follow this order).

    The structural ones come first, then `tokenizer.extra_tokens`, then
    `tokenizer.fractal_symbols`; duplicates and empty strings are dropped. A profile with
    `tokenizer.hypertokens = false` adds none.

    Args:
        profile: a `Profile` (only its `tokenizer` section is read).

    Returns:
        The hypertoken strings.
    """
    section = profile.tokenizer
    if not section.hypertokens:
        return []
    ordered: list[str] = []
    for token in (structural_hypertokens() + list(section.extra_tokens)
                  + list(section.fractal_symbols)):
        if token and token not in ordered:
            ordered.append(token)
    return ordered
