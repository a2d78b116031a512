"""Paired statistics for A/B comparisons: is side `b` better than side `a`, and by how much?

Every function here is paired: `a` and `b` were run on the same examples, given as aligned
arrays (index i is the same example on both sides). Each returns a `Difference`: the metric on
each side, `delta = b_value - a_value`, an interval for delta, a two-sided p-value of "no
difference", and per-example wins, ties and losses. Everything is deterministic for a seed
(numpy `default_rng(seed)`, or the seed handed to `scipy.stats.bootstrap`).

An example whose value is missing (None or NaN) on either side is dropped from both sides and
counted in `n_failed`; it is never counted as a zero. Fewer than 2 paired examples left is an
error: there is nothing to resample.

This module knows numbers only: nothing of records, tasks, models, the daemon or the console.
Callers pull the arrays out of `engine.evals.records` themselves.
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import scipy.stats

from engine.errors import ConfigError, DataError

BETTER = ("lower", "higher")
# Resampled count matrices are built this many cells at a time (about 32 MB of float64), so
# 2000 resamples of 10,000 examples never hold a 2000 x 10,000 matrix at once.
_CHUNK_CELLS = 4_000_000
# scipy renamed bootstrap's `random_state` to `rng` (1.15); pass the seed under whichever
# name the installed scipy takes.
_SCIPY_SEED = ("rng" if "rng" in inspect.signature(scipy.stats.bootstrap).parameters
               else "random_state")


@dataclass
class Difference:
    """The paired comparison of one metric between side `a` and side `b`.

    `delta` is `b_value - a_value`; `low`/`high` bound it at `confidence`; `p` is the two-sided
    p-value of "no difference" (None where a method gives none). `wins` counts examples where
    `b` is better than `a` by `better`, `losses` where it is worse, `ties` the rest.
    """

    metric: str
    a: str
    b: str
    a_value: float
    b_value: float
    delta: float
    low: float
    high: float
    p: float | None
    n: int
    wins: int
    ties: int
    losses: int
    method: str
    better: str
    seed: int
    n_resamples: int
    confidence: float = 0.95
    n_failed: int = 0

    @property
    def significant(self) -> bool:
        """The interval excludes 0, and `p < 1 - confidence` where a p-value is given."""
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            return False
        if self.low <= 0.0 <= self.high:
            return False
        return self.p is None or self.p < 1.0 - self.confidence

    @property
    def verdict(self) -> str:
        """`"{b} better"`, `"{a} better"` or `"no significant difference"`."""
        if not self.significant:
            return "no significant difference"
        b_ahead = self.delta < 0 if self.better == "lower" else self.delta > 0
        return f"{self.b} better" if b_ahead else f"{self.a} better"

    def to_dict(self) -> dict[str, Any]:
        """The difference as plain JSON data, with `significant` and `verdict`.

        Non-finite floats (a NaN interval, an infinite perplexity) become None, so the result
        is valid JSON.
        """
        data = {key: _plain(value) for key, value in asdict(self).items()}
        data["significant"] = self.significant
        data["verdict"] = self.verdict
        return data


def win_tie_loss(a_values: Sequence[float] | np.ndarray, b_values: Sequence[float] | np.ndarray,
                 better: str) -> tuple[int, int, int]:
    """Per-example wins, ties and losses of `b` against `a`.

    A win is an example where `b`'s value is better than `a`'s by `better` ("lower": strictly
    smaller; "higher": strictly larger), a loss the reverse, a tie an equal pair or one where
    either value is NaN (an undefined per-example value, e.g. a ratio with denominator 0).

    Args:
        a_values: side `a`'s per-example values.
        b_values: side `b`'s per-example values, aligned with `a_values`.
        better: "lower" or "higher".

    Returns:
        `(wins, ties, losses)`, summing to the number of examples.

    Raises:
        ConfigError: `better` is neither "lower" nor "higher".
        DataError: the two sides have different lengths.
    """
    _check_better(better)
    a = np.asarray(a_values, dtype=float)
    b = np.asarray(b_values, dtype=float)
    _check_lengths("win_tie_loss", len(a), len(b))
    sign = np.sign(b - a) if better == "higher" else np.sign(a - b)
    wins = int(np.sum(sign > 0))
    losses = int(np.sum(sign < 0))
    return wins, len(a) - wins - losses, losses


def paired_corpus(metric: str, a_stats: Any, b_stats: Any, score: Callable[[np.ndarray], float],
                  *, a: str = "a", b: str = "b", better: str, n_resamples: int = 2000,
                  seed: int = 0, confidence: float = 0.95) -> Difference:
    """A metric computed from summed per-example sufficient statistics (corpus chrF, ratios).

    Definitions, with `S_a = sum_i a_stats[i]` (a k-vector) and likewise `S_b`:

    - `a_value = score(S_a)`, `b_value = score(S_b)`, `delta = b_value - a_value`. The metric
      is a function of the sums, not a mean of per-example scores.
    - Interval: paired bootstrap. Each of `n_resamples` resamples draws n example indices with
      replacement (the same indices for both sides), sums each side's rows and takes
      `score(sum_b) - score(sum_a)`; `low`/`high` are the `(1 - confidence)/2` and
      `(1 + confidence)/2` percentiles of those deltas (resamples whose score is NaN are left
      out).
    - p: paired permutation. Each of `n_resamples` permutations swaps each example's `a` and
      `b` rows with probability 1/2 and recomputes the delta from the sums;
      `p = (1 + #{|delta_perm| >= |delta_obs|}) / (1 + n_resamples)`, two-sided.
    - Wins/ties/losses: `score` on each example's own row, compared by `better`; a row whose
      score is undefined (raises ArithmeticError or ValueError, or gives NaN) is a tie.

    Args:
        metric: the metric's name, e.g. "reverse.chrf".
        a_stats: side `a`'s statistics, an (n, k) array (a row None or with a NaN is missing).
        b_stats: side `b`'s statistics, aligned with `a_stats`.
        score: maps a summed k-vector to the metric.
        a: side `a`'s name.
        b: side `b`'s name.
        better: "lower" or "higher".
        n_resamples: bootstrap resamples, and permutations for the p-value.
        seed: seed of `numpy.random.default_rng`.
        confidence: the interval's coverage.

    Returns:
        The `Difference`, method "paired-bootstrap".

    Raises:
        ConfigError: `better`, `n_resamples` or `confidence` is out of range.
        DataError: the sides differ in length, or fewer than 2 examples pair up.
    """
    _check_settings(better, n_resamples, confidence)
    a_rows, b_rows = _as_stats(a_stats, "a_stats"), _as_stats(b_stats, "b_stats")
    _check_lengths(metric, len(a_rows), len(b_rows))
    if a_rows.shape[1] != b_rows.shape[1]:
        raise DataError(f"{metric}: a has {a_rows.shape[1]} statistics per example, "
                        f"b has {b_rows.shape[1]}",
                        hint="both sides must carry the same sufficient statistics")
    keep = ~(np.isnan(a_rows).any(axis=1) | np.isnan(b_rows).any(axis=1))
    n_failed = int(np.sum(~keep))
    a_rows, b_rows = a_rows[keep], b_rows[keep]
    n = _check_count(metric, len(a_rows), n_failed)

    a_value = float(score(a_rows.sum(axis=0)))
    b_value = float(score(b_rows.sum(axis=0)))
    delta = b_value - a_value
    rng = np.random.default_rng(seed)

    boot = []
    for counts in _resample_counts(rng, n, n_resamples):
        for sum_a, sum_b in zip(counts @ a_rows, counts @ b_rows, strict=True):
            boot.append(float(score(sum_b)) - float(score(sum_a)))
    low, high = _percentile_interval(np.asarray(boot), confidence)

    total_a, total_b = a_rows.sum(axis=0), b_rows.sum(axis=0)
    shift = b_rows - a_rows
    tolerance = 1e-12 * max(1.0, abs(delta))
    extreme = 0
    for swaps in _swap_masks(rng, n, n_resamples):
        moved = swaps @ shift  # what the swapped examples move from b to a
        for move in moved:
            permuted = float(score(total_b - move)) - float(score(total_a + move))
            extreme += abs(permuted) >= abs(delta) - tolerance
    p = (1 + extreme) / (1 + n_resamples)

    a_each = np.array([_row_score(score, row) for row in a_rows])
    b_each = np.array([_row_score(score, row) for row in b_rows])
    wins, ties, losses = win_tie_loss(a_each, b_each, better)
    return Difference(metric, a, b, a_value, b_value, delta, low, high, p, n, wins, ties, losses,
                      "paired-bootstrap", better, seed, n_resamples, confidence, n_failed)


def paired_ratio(metric: str, a_num: Any, a_den: Any, b_num: Any, b_den: Any, *, a: str = "a",
                 b: str = "b", better: str, transform: Callable[[float], float] | None = None,
                 n_resamples: int = 2000, seed: int = 0, confidence: float = 0.95) -> Difference:
    """A ratio-of-sums metric: `transform(sum(num) / sum(den))` on each side.

    Perplexity is `num` = summed NLL (nats), `den` = tokens, `transform = math.exp`; bits per
    byte is `den` = bytes, `transform = lambda x: x / math.log(2)`. No transform means the ratio
    itself. This is `paired_corpus` with statistics `(num, den)`, so the interval, p-value and
    wins/ties/losses are defined as there; an example's own value is `transform(num / den)`,
    and an example with `den == 0` is a tie.

    Args:
        metric: the metric's name, e.g. "loss.ppl".
        a_num: side `a`'s per-example numerators.
        a_den: side `a`'s per-example denominators.
        b_num: side `b`'s per-example numerators.
        b_den: side `b`'s per-example denominators.
        a: side `a`'s name.
        b: side `b`'s name.
        better: "lower" or "higher".
        transform: applied to the ratio of sums; identity when None.
        n_resamples: bootstrap resamples, and permutations for the p-value.
        seed: seed of `numpy.random.default_rng`.
        confidence: the interval's coverage.

    Returns:
        The `Difference`, method "paired-bootstrap".

    Raises:
        ConfigError: `better`, `n_resamples` or `confidence` is out of range.
        DataError: the arrays differ in length, or fewer than 2 examples pair up.
    """
    columns = [_as_values(values, name) for values, name in
               ((a_num, "a_num"), (a_den, "a_den"), (b_num, "b_num"), (b_den, "b_den"))]
    if len({len(column) for column in columns}) != 1:
        lengths = ", ".join(f"{name}={len(column)}" for column, name in
                            zip(columns, ("a_num", "a_den", "b_num", "b_den"), strict=True))
        raise DataError(f"{metric}: numerators and denominators differ in length ({lengths})",
                        hint="pass one value per example on each side, in the same order")
    apply = transform or (lambda x: x)

    def score(sums: np.ndarray) -> float:
        if sums[1] == 0:
            return math.nan
        return float(apply(sums[0] / sums[1]))

    return paired_corpus(metric, np.column_stack(columns[:2]), np.column_stack(columns[2:]),
                         score, a=a, b=b, better=better, n_resamples=n_resamples, seed=seed,
                         confidence=confidence)


def paired_mean(metric: str, a_values: Any, b_values: Any, *, a: str = "a", b: str = "b",
                better: str, method: str = "BCa", n_resamples: int = 2000, seed: int = 0,
                confidence: float = 0.95) -> Difference:
    """A mean-type metric: `a_value = mean(a)`, `b_value = mean(b)`, `delta = mean(b - a)`.

    The interval is `scipy.stats.bootstrap` of the mean paired difference (`paired=True`,
    `method`, `n_resamples`, seeded with `seed`). Where BCa is degenerate (scipy warns with
    `DegenerateDataWarning` or gives NaN bounds, as when every difference is equal) the
    percentile interval is used instead; `method` on the result says which ("bca",
    "percentile" or "basic"). When every difference is exactly 0 the interval is [0, 0], p is
    1.0 and the method "percentile". p is `scipy.stats.wilcoxon` on the differences
    (`zero_method="wilcox"`: zero differences are dropped). Wins/ties/losses compare each
    example's two values by `better`.

    Args:
        metric: the metric's name, e.g. "register.agree".
        a_values: side `a`'s per-example values (None or NaN is missing).
        b_values: side `b`'s per-example values, aligned with `a_values`.
        a: side `a`'s name.
        b: side `b`'s name.
        better: "lower" or "higher".
        method: the scipy bootstrap method to try first: "BCa", "percentile" or "basic".
        n_resamples: bootstrap resamples.
        seed: the seed handed to `scipy.stats.bootstrap`.
        confidence: the interval's coverage.

    Returns:
        The `Difference`.

    Raises:
        ConfigError: `better`, `method`, `n_resamples` or `confidence` is out of range.
        DataError: the sides differ in length, or fewer than 2 examples pair up.
    """
    _check_settings(better, n_resamples, confidence)
    if method.lower() not in ("bca", "percentile", "basic"):
        raise ConfigError(f"{metric}: bootstrap method {method!r} is not known",
                          hint='use "BCa", "percentile" or "basic"')
    x, y, n_failed = _paired_values(metric, a_values, b_values)
    n = _check_count(metric, len(x), n_failed)
    differences = y - x
    if np.all(differences == 0):
        low, high, used, p = 0.0, 0.0, "percentile", 1.0
    else:
        low, high, used = _scipy_interval(x, y, method, n_resamples, seed, confidence)
        p = _wilcoxon_p(differences)
    wins, ties, losses = win_tie_loss(x, y, better)
    return Difference(metric, a, b, float(np.mean(x)), float(np.mean(y)),
                      float(np.mean(differences)), low, high, p, n, wins, ties, losses, used,
                      better, seed, n_resamples, confidence, n_failed)


def mcnemar_exact(metric: str, a_bits: Any, b_bits: Any, *, a: str = "a", b: str = "b",
                  n_resamples: int = 2000, seed: int = 0, confidence: float = 0.95
                  ) -> Difference:
    """Binary outcomes (1 = success, e.g. exact match, test passed) compared by exact McNemar.

    `a_value`/`b_value` are the success rates, `delta = mean(b) - mean(a)`. With `n_b_only`
    examples where only `b` succeeded and `n_a_only` where only `a` did,
    `p = binomtest(n_b_only, n_b_only + n_a_only, 0.5).pvalue` (two-sided), and 1.0 when no pair
    is discordant. The interval is the paired bootstrap percentile interval of the difference in
    proportions (`numpy.random.default_rng(seed)`). Higher is better: wins are `n_b_only`,
    losses `n_a_only`, ties the concordant pairs.

    Args:
        metric: the metric's name, e.g. "reverse.exact".
        a_bits: side `a`'s outcomes, 0 or 1 (None or NaN is missing).
        b_bits: side `b`'s outcomes, aligned with `a_bits`.
        a: side `a`'s name.
        b: side `b`'s name.
        n_resamples: bootstrap resamples.
        seed: seed of `numpy.random.default_rng`.
        confidence: the interval's coverage.

    Returns:
        The `Difference`, method "mcnemar-exact".

    Raises:
        ConfigError: `n_resamples` or `confidence` is out of range.
        DataError: the sides differ in length, a value is not 0 or 1, or fewer than 2 examples
            pair up.
    """
    _check_settings("higher", n_resamples, confidence)
    x, y, n_failed = _paired_values(metric, a_bits, b_bits)
    for side, bits in (("a", x), ("b", y)):
        bad = np.flatnonzero((bits != 0) & (bits != 1))
        if bad.size:
            raise DataError(f"{metric}: side {side} example {int(bad[0])} is {bits[bad[0]]!r}, "
                            "not 0 or 1", hint="McNemar compares binary outcomes only")
    n = _check_count(metric, len(x), n_failed)
    b_only = int(np.sum((y == 1) & (x == 0)))
    a_only = int(np.sum((x == 1) & (y == 0)))
    discordant = a_only + b_only
    p = float(scipy.stats.binomtest(b_only, discordant, 0.5).pvalue) if discordant else 1.0
    low, high = _bootstrap_mean_interval(y - x, n_resamples, seed, confidence)
    return Difference(metric, a, b, float(np.mean(x)), float(np.mean(y)), float(np.mean(y - x)),
                      low, high, p, n, b_only, n - discordant, a_only, "mcnemar-exact", "higher",
                      seed, n_resamples, confidence, n_failed)


def wilcoxon_scores(metric: str, a_scores: Any, b_scores: Any, *, a: str = "a", b: str = "b",
                    better: str = "higher", n_resamples: int = 2000, seed: int = 0,
                    confidence: float = 0.95) -> Difference:
    """Ordinal scores (a judge's 1-10, a person's rating) compared by the Wilcoxon test.

    `a_value`/`b_value` are the mean scores and `delta = mean(b - a)`, the mean paired
    difference (not the median, so that it matches the interval). The interval is the paired
    bootstrap percentile interval of that mean (`numpy.random.default_rng(seed)`); p is
    `scipy.stats.wilcoxon` on the differences (`zero_method="wilcox"`), 1.0 when every
    difference is 0. Missing scores (None) drop their pair into `n_failed`.

    Args:
        metric: the metric's name, e.g. "judge.score".
        a_scores: side `a`'s per-example scores.
        b_scores: side `b`'s per-example scores, aligned with `a_scores`.
        a: side `a`'s name.
        b: side `b`'s name.
        better: "lower" or "higher".
        n_resamples: bootstrap resamples.
        seed: seed of `numpy.random.default_rng`.
        confidence: the interval's coverage.

    Returns:
        The `Difference`, method "wilcoxon".

    Raises:
        ConfigError: `better`, `n_resamples` or `confidence` is out of range.
        DataError: the sides differ in length, or fewer than 2 examples pair up.
    """
    _check_settings(better, n_resamples, confidence)
    x, y, n_failed = _paired_values(metric, a_scores, b_scores)
    n = _check_count(metric, len(x), n_failed)
    differences = y - x
    p = 1.0 if np.all(differences == 0) else _wilcoxon_p(differences)
    low, high = _bootstrap_mean_interval(differences, n_resamples, seed, confidence)
    wins, ties, losses = win_tie_loss(x, y, better)
    return Difference(metric, a, b, float(np.mean(x)), float(np.mean(y)),
                      float(np.mean(differences)), low, high, p, n, wins, ties, losses,
                      "wilcoxon", better, seed, n_resamples, confidence, n_failed)


# --- resampling ---------------------------------------------------------------------------


def _chunks(n: int, n_resamples: int) -> Iterator[int]:
    size = max(1, _CHUNK_CELLS // max(n, 1))
    for start in range(0, n_resamples, size):
        yield min(size, n_resamples - start)


def _resample_counts(rng: np.random.Generator, n: int, n_resamples: int) -> Iterator[np.ndarray]:
    """(chunk, n) matrices: how often each example is drawn in each bootstrap resample."""
    for size in _chunks(n, n_resamples):
        drawn = rng.integers(0, n, size=(size, n))
        flat = (drawn + n * np.arange(size)[:, None]).ravel()
        yield np.bincount(flat, minlength=size * n).reshape(size, n).astype(float)


def _swap_masks(rng: np.random.Generator, n: int, n_resamples: int) -> Iterator[np.ndarray]:
    """(chunk, n) 0/1 matrices: which examples swap sides in each permutation."""
    for size in _chunks(n, n_resamples):
        yield (rng.random((size, n)) < 0.5).astype(float)


def _bootstrap_mean_interval(differences: np.ndarray, n_resamples: int, seed: int,
                             confidence: float) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    n = len(differences)
    means = np.concatenate([counts @ differences / n
                            for counts in _resample_counts(rng, n, n_resamples)])
    return _percentile_interval(means, confidence)


def _percentile_interval(deltas: np.ndarray, confidence: float) -> tuple[float, float]:
    deltas = deltas[~np.isnan(deltas)]
    if deltas.size == 0:
        return math.nan, math.nan
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(deltas, [tail, 100 - tail])
    return float(low), float(high)


def _scipy_interval(x: np.ndarray, y: np.ndarray, method: str, n_resamples: int, seed: int,
                    confidence: float) -> tuple[float, float, str]:
    """scipy's paired bootstrap of mean(y - x), falling back to percentile where BCa fails."""
    for attempt in dict.fromkeys([method.lower(), "percentile"]):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = scipy.stats.bootstrap(
                (x, y), statistic=_mean_difference, paired=True, vectorized=True,
                method="BCa" if attempt == "bca" else attempt, n_resamples=n_resamples,
                confidence_level=confidence, **{_SCIPY_SEED: seed})
        low, high = (float(bound) for bound in result.confidence_interval)
        degenerate = any(isinstance(w.message, scipy.stats.DegenerateDataWarning)
                         for w in caught)
        if not degenerate and math.isfinite(low) and math.isfinite(high):
            return low, high, attempt
    return low, high, attempt


def _mean_difference(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(y - x, axis=axis)


def _wilcoxon_p(differences: np.ndarray) -> float:
    with warnings.catch_warnings():
        # scipy warns that it leaves the exact distribution for a normal approximation on ties
        # or zeros; the p-value it returns is still the one wanted.
        warnings.simplefilter("ignore", UserWarning)
        return float(scipy.stats.wilcoxon(differences, zero_method="wilcox").pvalue)



# --- input checks -------------------------------------------------------------------------


def _check_better(better: str) -> None:
    if better not in BETTER:
        raise ConfigError(f"better={better!r} is neither 'lower' nor 'higher'",
                          hint="say whether a lower value of the metric is better (loss, "
                               "perplexity) or a higher one (chrF, accuracy)")


def _check_settings(better: str, n_resamples: int, confidence: float) -> None:
    problems = []
    if better not in BETTER:
        problems.append(f"better={better!r} is neither 'lower' nor 'higher'")
    if not isinstance(n_resamples, int) or n_resamples < 1:
        problems.append(f"n_resamples={n_resamples!r} must be a positive integer")
    if not 0.0 < confidence < 1.0:
        problems.append(f"confidence={confidence!r} must lie strictly between 0 and 1")
    if problems:
        raise ConfigError("paired statistics settings are wrong", problems=problems)


def _check_lengths(metric: str, n_a: int, n_b: int) -> None:
    if n_a != n_b:
        raise DataError(f"{metric}: side a has {n_a} examples, side b has {n_b}",
                        hint="a paired comparison needs both sides on the same examples, "
                             "in the same order")


def _check_count(metric: str, n: int, n_failed: int) -> int:
    if n < 2:
        failed = f" ({n_failed} dropped for a missing value)" if n_failed else ""
        raise DataError(f"{metric}: {n} paired examples{failed}; at least 2 are needed",
                        hint="run the eval on more examples, or look at why they failed")
    return n


def _as_values(values: Any, name: str) -> np.ndarray:
    try:
        array = np.asarray([math.nan if v is None else v for v in values], dtype=float)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{name}: not a sequence of numbers ({exc})") from None
    if array.ndim != 1:
        raise DataError(f"{name}: expected one number an example, got shape {array.shape}")
    return array


def _as_stats(rows: Any, name: str) -> np.ndarray:
    rows = list(rows)
    width = next((len(row) for row in rows if row is not None), 0)
    try:
        array = np.asarray([[math.nan] * width if row is None else row for row in rows],
                           dtype=float)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{name}: not an (examples, statistics) array of numbers ({exc})",
                        hint="every example needs the same number of statistics") from None
    if array.ndim != 2:
        raise DataError(f"{name}: expected an (examples, statistics) array, "
                        f"got shape {array.shape}")
    return array


def _paired_values(metric: str, a_values: Any, b_values: Any
                   ) -> tuple[np.ndarray, np.ndarray, int]:
    x, y = _as_values(a_values, "a"), _as_values(b_values, "b")
    _check_lengths(metric, len(x), len(y))
    keep = ~(np.isnan(x) | np.isnan(y))
    return x[keep], y[keep], int(np.sum(~keep))


def _row_score(score: Callable[[np.ndarray], float], row: np.ndarray) -> float:
    try:
        return float(score(row))
    except (ArithmeticError, ValueError):
        return math.nan


def _plain(value: Any) -> Any:
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value
