"""Bradley–Terry strengths of models from pairwise outcomes, with bootstrap intervals.

The model: each player i has a strength s_i (natural-log scale) and
P(j beats i) = 1 / (1 + exp(s_i - s_j)). Strengths are fitted by maximum likelihood (scipy's
Newton-CG on the negative log-likelihood, with its exact gradient and Hessian) and shifted to
mean zero. A tie counts as half a win for each player: an outcome `(x, y, w)` adds
w·log P(y beats x) + (1 - w)·log P(x beats y) to the log-likelihood, so any w in [0, 1] is
accepted.

A small ridge, `ridge/2 · Σ s_i²` added to the negative log-likelihood (a Gaussian prior
N(0, 1/ridge) on each strength; 0.1 by default, a standard deviation of about 3.2, i.e. odds
of e^3.2 ≈ 25 to 1), keeps a player that never loses (or never wins) finite and the fit unique
when the comparison graph is not connected; `ridge=0` is the plain maximum-likelihood fit.
Intervals are percentile intervals over bootstrap resamples of the outcomes (drawn with
replacement, as many as there are outcomes), each refitted.

This module knows numbers and names only: nothing of judges, people or records.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from engine.errors import ConfigError, DataError

RIDGE = 0.1


def _check(outcomes: Sequence[tuple[str, str, float]]) -> None:
    problems = []
    for index, outcome in enumerate(outcomes):
        try:
            x, y, score = outcome
        except (TypeError, ValueError):
            problems.append(f"outcome {index}: {outcome!r} is not (model_x, model_y, score)")
            continue
        if x == y:
            problems.append(f"outcome {index}: {x!r} is compared with itself")
        if not isinstance(score, (int, float)) or not 0.0 <= score <= 1.0:
            problems.append(f"outcome {index}: the score of {y!r} must be in [0, 1], "
                            f"got {score!r}")
    if problems:
        raise DataError("bad pairwise outcomes:\n" + "\n".join(f"  - {p}" for p in problems[:20]),
                        hint="each outcome is (model_x, model_y, score of y: 1, 0.5 or 0)")


def fit_strengths(x: np.ndarray, y: np.ndarray, score: np.ndarray, weight: np.ndarray,
                  n_players: int, ridge: float, start: np.ndarray | None = None) -> np.ndarray:
    """Maximum-likelihood (ridge-penalised) strengths, mean zero.

    Args:
        x, y: player indices of each outcome; score: y's score; weight: how many times each
            outcome counts (1s, or bootstrap counts).
        n_players: the number of players.
        ridge: the penalty `ridge/2 · Σ s²` (0 for none).
        start: strengths to start from.

    Returns:
        The strengths, shifted to mean zero.
    """
    from scipy.optimize import minimize

    wins_y = weight * score  # weighted half-wins: ties give both players half a win
    wins_x = weight * (1.0 - score)

    def objective(s: np.ndarray) -> tuple[float, np.ndarray]:
        diff = s[y] - s[x]
        # -log σ(d) = log(1 + e^-d), written stably with logaddexp.
        loss = wins_y @ np.logaddexp(0.0, -diff) + wins_x @ np.logaddexp(0.0, diff)
        p_y = 0.5 * (1.0 + np.tanh(0.5 * diff))  # σ(d) without overflow
        residual = weight * p_y - wins_y  # d loss / d diff
        grad = np.bincount(y, residual, n_players) - np.bincount(x, residual, n_players)
        return float(loss + 0.5 * ridge * s @ s), grad + ridge * s

    def hessian(s: np.ndarray) -> np.ndarray:
        p_y = 0.5 * (1.0 + np.tanh(0.5 * (s[y] - s[x])))
        curvature = weight * p_y * (1.0 - p_y)
        matrix = np.zeros((n_players, n_players))
        np.add.at(matrix, (x, x), curvature)
        np.add.at(matrix, (y, y), curvature)
        np.add.at(matrix, (x, y), -curvature)
        np.add.at(matrix, (y, x), -curvature)
        return matrix + ridge * np.eye(n_players)

    s0 = np.zeros(n_players) if start is None else np.asarray(start, dtype=float)
    # Newton-CG with the exact Hessian: 4-8 iterations here, 10 to 25 times faster than
    # L-BFGS-B (measured on 3 players), which matters over a thousand bootstrap refits.
    result = minimize(objective, s0, jac=True, hess=hessian, method="Newton-CG",
                      options={"xtol": 1e-10, "maxiter": 200})
    return result.x - result.x.mean()


def bradley_terry(outcomes: Sequence[tuple[str, str, float]], *, n_resamples: int = 1000,
                  seed: int = 0, confidence: float = 0.95, ridge: float = RIDGE
                  ) -> list[dict[str, Any]]:
    """Bradley–Terry strengths of every player in the outcomes, strongest first.

    Args:
        outcomes: `(model_x, model_y, score of y)`: 1 y won, 0.5 tie, 0 x won.
        n_resamples: bootstrap resamples for the intervals (0: no intervals).
        seed: seeds the resampling; the same seed gives the same intervals.
        confidence: the intervals' coverage, in (0, 1).
        ridge: the Gaussian-prior penalty on strengths (module docstring); 0 turns it off.

    Returns:
        One dict a player: `name`, `strength` (log scale, mean zero over players), `low` and
        `high` (the percentile bootstrap interval, None without resamples), `rank` (1 is the
        strongest; equal strengths share a rank) and `n` (outcomes the player took part in).

    Raises:
        DataError: no outcomes, or a bad one (each named).
        ConfigError: confidence outside (0, 1), negative resamples or ridge.
    """
    problems = []
    if not 0.0 < confidence < 1.0:
        problems.append(f"confidence must be in (0, 1), got {confidence}")
    if n_resamples < 0:
        problems.append(f"n_resamples must be 0 or more, got {n_resamples}")
    if ridge < 0:
        problems.append(f"ridge must be 0 or more, got {ridge}")
    if problems:
        raise ConfigError("invalid Bradley–Terry settings:", problems=problems)
    if not outcomes:
        raise DataError("no pairwise outcomes to rank",
                        hint="rate A/B pairs in the console, or run an automatic judge")
    _check(outcomes)
    names = sorted({name for x, y, _ in outcomes for name in (x, y)})
    index = {name: i for i, name in enumerate(names)}
    x = np.array([index[o[0]] for o in outcomes])
    y = np.array([index[o[1]] for o in outcomes])
    score = np.array([float(o[2]) for o in outcomes])
    ones = np.ones(len(outcomes))
    strength = fit_strengths(x, y, score, ones, len(names), ridge)

    low = high = [None] * len(names)
    if n_resamples:
        rng = np.random.default_rng(seed)
        draws = np.empty((n_resamples, len(names)))
        uniform = np.full(len(outcomes), 1.0 / len(outcomes))
        for r in range(n_resamples):
            counts = rng.multinomial(len(outcomes), uniform).astype(float)
            draws[r] = fit_strengths(x, y, score, counts, len(names), ridge, start=strength)
        tail = (1.0 - confidence) / 2.0
        low = np.quantile(draws, tail, axis=0).tolist()
        high = np.quantile(draws, 1.0 - tail, axis=0).tolist()

    games = np.bincount(x, minlength=len(names)) + np.bincount(y, minlength=len(names))
    order = sorted(range(len(names)), key=lambda i: (-strength[i], names[i]))
    rows, rank, previous = [], 0, None
    for position, i in enumerate(order, 1):
        rounded = round(float(strength[i]), 6)  # optimiser noise is far below 1e-6
        if rounded != previous:
            rank, previous = position, rounded
        rows.append({"name": names[i], "strength": float(strength[i]),
                     "low": low[i], "high": high[i], "rank": rank, "n": int(games[i])})
    return rows
