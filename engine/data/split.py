"""The held-out split: whole documents go to evaluation, chosen by a hash of the seed and the id.

Splitting by document keeps a document's scenes on one side, so evaluation never sees text whose
neighbours it trained on. The choice depends only on (seed, document id): adding documents does
not move the old ones across. This module knows nothing of tokens or models.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable


def _unit(seed: int, doc: str) -> float:
    digest = hashlib.sha256(f"hyperlex-split:{seed}:{doc}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def held_out_documents(docs: Iterable[str], fraction: float, seed: int) -> set[str]:
    """The documents kept for evaluation.

    Args:
        docs: document ids (repeats are fine).
        fraction: the share of documents to hold out; 0 holds out none.
        seed: the split's seed.

    Returns:
        The held-out ids: about `fraction` of them, at least one when `fraction` > 0 and there
        are two documents or more, and never all of them.
    """
    unique = sorted(set(docs))
    if fraction <= 0 or len(unique) < 2:
        return set()
    ranked = sorted(unique, key=lambda doc: _unit(seed, doc))
    chosen = {doc for doc in unique if _unit(seed, doc) < fraction}
    if not chosen:
        chosen = {ranked[0]}
    if len(chosen) == len(unique):
        chosen.discard(ranked[-1])
    return chosen
