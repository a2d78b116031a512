"""The tokenizer stage: a base tokenizer plus hypertokens, its embedding rows, checks and tools.

Public API: `hypertokens_for(profile)`, `Hypertokenizer`, `resize_embeddings(model, tok)` and
`new_rows_peft_kwargs(model, tok, train_new_rows)` / `profile_peft_kwargs(model, tok, profile)`.
Training, mining, checks and the edge-case suite live in their own modules of this package.
This package knows nothing of scenes' formatting, training loops, the daemon or the console.
"""

from __future__ import annotations

from engine.tokenizer.embeddings import new_rows_peft_kwargs, profile_peft_kwargs, resize_embeddings
from engine.tokenizer.hypertokenizer import Hypertokenizer, Segment
from engine.tokenizer.hypertokens import (
    FIELD_NAMES,
    field_token,
    hypertokens_for,
    is_control,
    register_token,
    structural_hypertokens,
)

__all__ = [
    "FIELD_NAMES",
    "Hypertokenizer",
    "Segment",
    "field_token",
    "hypertokens_for",
    "is_control",
    "new_rows_peft_kwargs",
    "profile_peft_kwargs",
    "register_token",
    "resize_embeddings",
    "structural_hypertokens",
]
