"""Maximal marginal relevance: re-rank search candidates so the top k are not near-duplicates.

Knows numpy only.
"""

from __future__ import annotations

import numpy as np


def mmr_select(query: np.ndarray, candidates: np.ndarray, k: int, lam: float = 0.5) -> np.ndarray:
    """Pick k candidates greedily by `lam * sim(query) - (1 - lam) * max sim(already picked)`.

    Args:
        query: the normalised query vector `[dim]`.
        candidates: normalised candidate vectors `[n, dim]`, best first.
        k: how many to pick.
        lam: 1.0 ranks by relevance alone, 0.0 by diversity alone.

    Returns:
        Indices into `candidates`, in pick order.
    """
    relevance = candidates @ query
    similarity = candidates @ candidates.T
    picked: list[int] = []
    redundancy = np.full(len(candidates), -np.inf)
    for _ in range(min(k, len(candidates))):
        penalty = np.where(np.isfinite(redundancy), redundancy, 0.0)
        score = lam * relevance - (1.0 - lam) * penalty
        score[picked] = -np.inf
        best = int(np.argmax(score))
        picked.append(best)
        redundancy = np.maximum(redundancy, similarity[best])
    return np.asarray(picked, dtype=np.int64)
