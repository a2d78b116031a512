"""Bradley–Terry: hand-computed strengths, ordering, the ridge, bootstrap intervals."""

from __future__ import annotations

import math

import pytest
from scipy.optimize import brentq

from engine.errors import ConfigError, DataError
from engine.evals.ranking import RIDGE, bradley_terry

# A beats B 3 times of 4: outcomes are (x, y, score of y).
THREE_OF_FOUR = [("A", "B", 0.0)] * 3 + [("A", "B", 1.0)]
THREE_PLAYERS = ([("A", "B", 0.0)] * 7 + [("A", "B", 1.0)] * 3
                 + [("B", "C", 0.0)] * 6 + [("B", "C", 0.5)] * 2 + [("B", "C", 1.0)] * 2
                 + [("C", "A", 1.0)] * 8 + [("C", "A", 0.0)] * 2)


def by_name(rows):
    return {row["name"]: row for row in rows}


def test_two_players_without_prior_differ_by_log_odds():
    rows = by_name(bradley_terry(THREE_OF_FOUR, n_resamples=0, ridge=0.0))
    # P(A beats B) = 3/4 = 1 / (1 + e^-(sA - sB))  =>  sA - sB = ln 3; mean zero: ±ln(3)/2.
    assert rows["A"]["strength"] - rows["B"]["strength"] == pytest.approx(math.log(3), abs=1e-3)
    assert rows["A"]["strength"] == pytest.approx(math.log(3) / 2, abs=1e-3)
    assert (rows["A"]["rank"], rows["B"]["rank"]) == (1, 2)
    assert rows["A"]["n"] == rows["B"]["n"] == 4 and rows["A"]["low"] is None


def test_the_ridge_is_the_documented_gaussian_prior():
    # With the penalty ridge/2·(sA² + sB²) the optimum is sA = -sB = d/2 where
    # d/dsA: -3·σ(-d) + σ(d) + ridge·d/2 = 0.
    def gradient(d):
        return -3 / (1 + math.exp(d)) + 1 / (1 + math.exp(-d)) + RIDGE * d / 2

    expected = brentq(gradient, 0.0, 5.0)
    rows = by_name(bradley_terry(THREE_OF_FOUR, n_resamples=0))
    assert rows["A"]["strength"] - rows["B"]["strength"] == pytest.approx(expected, abs=1e-4)
    assert expected < math.log(3)  # shrunk towards equal strength


def test_ties_count_as_half_a_win_each():
    # 2 wins of A and 2 ties are 3 half-win pairs of 4: the same as 3 wins in 4.
    tied = [("A", "B", 0.0)] * 2 + [("A", "B", 0.5)] * 2
    rows = by_name(bradley_terry(tied, n_resamples=0, ridge=0.0))
    assert rows["A"]["strength"] - rows["B"]["strength"] == pytest.approx(math.log(3), abs=1e-3)


def test_three_players_are_ordered_and_fit_the_score_equations():
    rows = bradley_terry(THREE_PLAYERS, n_resamples=0, ridge=0.0)
    assert [row["name"] for row in rows] == ["A", "B", "C"]
    assert [row["rank"] for row in rows] == [1, 2, 3]
    strength = {row["name"]: row["strength"] for row in rows}
    assert sum(strength.values()) == pytest.approx(0.0, abs=1e-9)
    # At the maximum-likelihood fit each player's expected wins equal its actual wins:
    # A: 7 + 8 = 15, B: 3 + 6 + 1 = 10, C: 2 + 1 + 2 = 5 (ties as halves).
    def p(i, j):
        return 1 / (1 + math.exp(strength[j] - strength[i]))

    expected = {"A": 10 * p("A", "B") + 10 * p("A", "C"),
                "B": 10 * p("B", "A") + 10 * p("B", "C"),
                "C": 10 * p("C", "A") + 10 * p("C", "B")}
    assert expected == pytest.approx({"A": 15, "B": 10, "C": 5}, abs=1e-4)


def test_a_player_that_never_loses_stays_finite_with_the_prior():
    rows = by_name(bradley_terry([("A", "B", 0.0)] * 20 + [("B", "C", 0.5)] * 4,
                                 n_resamples=50))
    assert rows["A"]["rank"] == 1 and 0 < rows["A"]["strength"] < 10
    assert math.isfinite(rows["A"]["high"])


def test_bootstrap_is_deterministic_with_a_seed_and_contains_the_estimate():
    first = bradley_terry(THREE_PLAYERS, n_resamples=200, seed=7)
    again = bradley_terry(THREE_PLAYERS, n_resamples=200, seed=7)
    other = bradley_terry(THREE_PLAYERS, n_resamples=200, seed=8)
    assert first == again
    assert [(r["low"], r["high"]) for r in first] != [(r["low"], r["high"]) for r in other]
    for row in first:
        assert row["low"] < row["strength"] < row["high"]
    narrow = by_name(bradley_terry(THREE_PLAYERS, n_resamples=200, seed=7, confidence=0.5))
    for row in first:
        assert row["high"] - row["low"] > narrow[row["name"]]["high"] - narrow[row["name"]]["low"]


def test_bad_outcomes_and_settings_are_named():
    with pytest.raises(DataError):
        bradley_terry([])
    with pytest.raises(DataError) as err:
        bradley_terry([("A", "A", 1.0), ("A", "B", 2.0)])
    assert "outcome 0" in err.value.message and "outcome 1" in err.value.message
    with pytest.raises(ConfigError) as err:
        bradley_terry(THREE_OF_FOUR, confidence=1.5, n_resamples=-1)
    assert len(err.value.problems) == 2
