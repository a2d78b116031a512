"""Tokenizer round-trip rate: the share of texts that come back exactly through the tokenizer.

`round_trip = |{t : decode(encode_text(t)) == t}| / n`, character for character (no
normalisation of spaces, case or Unicode). A tokenizer that fails here makes every text metric
downstream compare against text the model never saw. The check itself is
`engine.tokenizer.checks.reversibility`; this module reports it in the shape the evals use.

This module knows nothing of models, scenes or files.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from engine.tokenizer.checks import reversibility
from engine.tokenizer.hypertokenizer import Hypertokenizer

SHOWN = 5  # failures listed in full; `failed` counts them all


def round_trip(hypertokenizer: Hypertokenizer, texts: Sequence[str],
               shown: int = SHOWN) -> dict[str, Any]:
    """The exact round-trip rate of `texts` through `encode_text` and `decode`.

    Args:
        hypertokenizer: the tokenizer.
        texts: the texts.
        shown: how many failures to list.

    Returns:
        `round_trip` (the share that round-trips; 1.0 for no texts), `n`, `passed`, `failed`,
        and `failures`: the first `shown`, each with the text's `index`, the first differing
        character `at`, and twelve characters from there of the `expected` and the `got` text.
    """
    checked = reversibility(hypertokenizer, texts)
    return {"round_trip": checked["rate"], "n": checked["total"],
            "passed": checked["round_trip"], "failed": checked["failures"],
            "failures": checked["exceptions"][:shown]}
