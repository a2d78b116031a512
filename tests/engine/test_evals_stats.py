"""Paired statistics: hand-computed values, interval behaviour, determinism and bad input."""

from __future__ import annotations

import inspect
import json
import math
import warnings

import numpy as np
import pytest
import sacrebleu
import scipy.stats

from engine.errors import ConfigError, DataError
from engine.evals.stats import (
    Difference,
    mcnemar_exact,
    paired_corpus,
    paired_mean,
    paired_ratio,
    wilcoxon_scores,
    win_tie_loss,
)

RESAMPLES = 1000
SEED = 7


def _loss_data(n: int, b_scale: float, seed: int) -> tuple[np.ndarray, ...]:
    """Per-example (a_nll, a_tokens, b_nll, b_tokens): b's nll is a's times `b_scale`."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(10, 50, size=n).astype(float)
    a_nll = tokens * rng.uniform(1.5, 2.5, size=n)
    return a_nll, tokens, a_nll * b_scale, tokens


def test_paired_ratio_hand_computed():
    a_nll, a_tok = [2.0, 3.0, 1.0, 0.0], [2, 3, 1, 0]
    b_nll, b_tok = [1.0, 3.0, 1.5, 0.0], [2, 3, 1, 0]
    diff = paired_ratio("loss.ppl", a_nll, a_tok, b_nll, b_tok, a="base", b="tuned",
                        better="lower", transform=math.exp, n_resamples=RESAMPLES, seed=SEED)
    # a: (2 + 3 + 1 + 0) / (2 + 3 + 1 + 0) = 6 / 6 = 1      -> exp(1)
    # b: (1 + 3 + 1.5 + 0) / (2 + 3 + 1 + 0) = 5.5 / 6      -> exp(0.91666...)
    assert diff.a_value == pytest.approx(math.exp(1.0))
    assert diff.b_value == pytest.approx(math.exp(5.5 / 6))
    assert diff.delta == pytest.approx(math.exp(5.5 / 6) - math.exp(1.0))
    assert diff.delta < 0
    # per example, a = 1, 1, 1, (0/0); b = 0.5, 1, 1.5, (0/0):
    # b lower on example 0 (win), equal on 1 (tie), higher on 2 (loss), 0 tokens on 3 (tie)
    assert (diff.wins, diff.ties, diff.losses) == (1, 2, 1)
    assert diff.n == 4 and diff.n_failed == 0
    assert diff.method == "paired-bootstrap" and diff.better == "lower"


def test_paired_ratio_bits_per_byte_transform():
    diff = paired_ratio("loss.bpb", [4.0, 2.0], [3, 1], [3.0, 1.0], [3, 1], better="lower",
                        transform=lambda x: x / math.log(2), n_resamples=50)
    # a: 6 nats / 4 bytes / ln 2; b: 4 nats / 4 bytes / ln 2
    assert diff.a_value == pytest.approx(1.5 / math.log(2))
    assert diff.b_value == pytest.approx(1.0 / math.log(2))
    assert (diff.wins, diff.ties, diff.losses) == (2, 0, 0)


def test_large_consistent_effect_is_significant():
    a_nll, a_tok, b_nll, b_tok = _loss_data(40, 0.9, seed=1)
    diff = paired_ratio("loss.ppl", a_nll, a_tok, b_nll, b_tok, a="base", b="tuned",
                        better="lower", transform=math.exp, n_resamples=RESAMPLES, seed=SEED)
    assert diff.low <= diff.delta <= diff.high
    assert diff.high < 0
    # every one of the 40 examples is 10% lower on b: no permutation is as extreme
    # as the observed one but the identity, so p is at its floor 1 / (1 + resamples)
    assert diff.p < 0.01
    assert diff.wins == 40
    assert diff.significant and diff.verdict == "tuned better"


def test_no_difference_is_a_valid_answer():
    rng = np.random.default_rng(3)
    tokens = rng.integers(10, 50, size=40).astype(float)
    a_nll = tokens * rng.uniform(1.5, 2.5, size=40)
    b_nll = tokens * rng.uniform(1.5, 2.5, size=40)  # the same distribution as a
    diff = paired_ratio("loss.ppl", a_nll, tokens, b_nll, tokens, better="lower",
                        transform=math.exp, n_resamples=RESAMPLES, seed=SEED)
    assert diff.low < 0 < diff.high
    assert diff.p > 0.05
    assert not diff.significant
    assert diff.verdict == "no significant difference"


def test_identical_sides_give_p_one():
    a_nll, a_tok, _, _ = _loss_data(10, 1.0, seed=2)
    diff = paired_ratio("loss.ppl", a_nll, a_tok, a_nll, a_tok, better="lower",
                        transform=math.exp, n_resamples=200)
    assert diff.delta == 0.0 and diff.p == 1.0
    assert (diff.low, diff.high) == (0.0, 0.0)
    assert diff.ties == 10


def test_same_seed_same_interval_other_seed_another():
    data = _loss_data(30, 0.95, seed=4)

    def run(seed: int) -> Difference:
        return paired_ratio("loss.ppl", *data, better="lower", transform=math.exp,
                            n_resamples=300, seed=seed)

    first, again, other = run(11), run(11), run(12)
    assert (first.low, first.high, first.p) == (again.low, again.high, again.p)
    assert (first.low, first.high) != (other.low, other.high)


def test_paired_corpus_scores_summed_statistics_not_mean_of_scores():
    def score(s: np.ndarray) -> float:
        return s[0] / (s[0] + s[1])

    a_stats = [[1, 0], [1, 9]]  # per example 1.0 and 0.1 (mean 0.55); summed [2, 9] -> 2/11
    b_stats = [[0, 1], [9, 1]]  # per example 0.0 and 0.9 (mean 0.45); summed [9, 2] -> 9/11
    diff = paired_corpus("toy", a_stats, b_stats, score, better="higher", n_resamples=200)
    assert diff.a_value == pytest.approx(2 / 11)
    assert diff.b_value == pytest.approx(9 / 11)
    assert diff.delta == pytest.approx(7 / 11)  # the mean of per-example scores gives -0.1
    # example 0: b 0.0 < a 1.0 (loss); example 1: b 0.9 > a 0.1 (win)
    assert (diff.wins, diff.ties, diff.losses) == (1, 0, 1)


def test_paired_corpus_with_sacrebleu_chrf_matches_corpus_score():
    chrf = sacrebleu.CHRF(word_order=2)
    refs = ["the cat sat on the mat", "a dog barked at night", "rain fell on the town"]
    hyps_a = ["the cat sat on a mat", "the dog barks at night", "rain on town"]
    hyps_b = ["the cat sat on the mat", "a dog barked at night", "rain fell on a town"]
    a_stats = chrf._extract_corpus_statistics(hyps_a, [refs])
    b_stats = chrf._extract_corpus_statistics(hyps_b, [refs])

    def score(summed: np.ndarray) -> float:
        return chrf._compute_score_from_stats(list(summed)).score

    diff = paired_corpus("reverse.chrf", a_stats, b_stats, score, better="higher",
                         n_resamples=100)
    assert diff.a_value == pytest.approx(chrf.corpus_score(hyps_a, [refs]).score)
    assert diff.b_value == pytest.approx(chrf.corpus_score(hyps_b, [refs]).score)
    assert diff.wins == 3


def _scipy_seed_keyword() -> str:
    return "rng" if "rng" in inspect.signature(scipy.stats.bootstrap).parameters \
        else "random_state"


def test_paired_mean_bca_matches_scipy():
    rng = np.random.default_rng(5)
    a = rng.normal(0.5, 0.2, size=25)
    b = a + rng.normal(0.1, 0.1, size=25)
    diff = paired_mean("register.agree", a, b, better="higher", n_resamples=RESAMPLES,
                       seed=SEED)
    direct = scipy.stats.bootstrap(
        (a, b), statistic=lambda x, y, axis=-1: np.mean(y - x, axis=axis), paired=True,
        vectorized=True, method="BCa", n_resamples=RESAMPLES, **{_scipy_seed_keyword(): SEED})
    assert diff.method == "bca"
    assert diff.low == pytest.approx(direct.confidence_interval.low)
    assert diff.high == pytest.approx(direct.confidence_interval.high)
    assert diff.delta == pytest.approx(np.mean(b - a))
    assert diff.p == pytest.approx(scipy.stats.wilcoxon(b - a, zero_method="wilcox").pvalue)


def test_paired_mean_degenerate_falls_back_to_percentile():
    a = np.array([0.0, 2.0, 5.0, 3.0, 1.0, 4.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning leaks out to the caller
        diff = paired_mean("toy", a, a + 1, better="higher", n_resamples=200)
    assert diff.method == "percentile"
    assert diff.low == pytest.approx(1.0) and diff.high == pytest.approx(1.0)
    assert diff.delta == pytest.approx(1.0)
    assert diff.wins == 6


def test_paired_mean_all_zero_differences():
    diff = paired_mean("toy", [1.0, 2.0, 3.0], [1.0, 2.0, 3.0], better="lower",
                       n_resamples=100)
    assert (diff.low, diff.high, diff.p) == (0.0, 0.0, 1.0)
    assert diff.verdict == "no significant difference"


def test_paired_mean_drops_missing_pairs():
    diff = paired_mean("toy", [1.0, None, 3.0, 4.0, 2.0], [2.0, 5.0, float("nan"), 6.0, 2.5],
                       better="higher", n_resamples=100)
    # examples 1 (a missing) and 2 (b NaN) are dropped: a = 1, 4, 2; b = 2, 6, 2.5
    assert diff.n == 3 and diff.n_failed == 2
    assert diff.a_value == pytest.approx(7 / 3)
    assert diff.b_value == pytest.approx(10.5 / 3)


def test_mcnemar_exact_hand_computed():
    # 8 pairs only b got right, 2 only a, 5 both, 3 neither
    a_bits = [0] * 8 + [1] * 2 + [1] * 5 + [0] * 3
    b_bits = [1] * 8 + [0] * 2 + [1] * 5 + [0] * 3
    diff = mcnemar_exact("reverse.exact", a_bits, b_bits, n_resamples=RESAMPLES, seed=SEED)
    expected = 2 * sum(math.comb(10, k) for k in range(8, 11)) / 2**10
    assert expected == 0.109375  # 2 * (45 + 10 + 1) / 1024
    assert diff.p == pytest.approx(expected)
    assert (diff.wins, diff.ties, diff.losses) == (8, 8, 2)
    assert diff.a_value == pytest.approx(7 / 18) and diff.b_value == pytest.approx(13 / 18)
    assert diff.delta == pytest.approx(6 / 18)
    assert diff.low <= diff.delta <= diff.high
    assert not diff.significant  # p = 0.109 > 0.05, whatever the interval says


def test_mcnemar_no_discordant_pairs():
    diff = mcnemar_exact("test.passed", [1, 0, 1, 1], [1, 0, 1, 1], n_resamples=100)
    assert diff.p == 1.0
    assert diff.delta == 0.0 and (diff.wins, diff.ties, diff.losses) == (0, 4, 0)


def test_mcnemar_rejects_non_binary():
    with pytest.raises(DataError, match="not 0 or 1"):
        mcnemar_exact("test.passed", [1, 0, 2], [1, 0, 1])


def test_wilcoxon_scores_drop_missing_judgement():
    a = [5, 6, None, 4, 7, 5]
    b = [7, 8, 9, 6, 7, 8]
    diff = wilcoxon_scores("judge.score", a, b, n_resamples=RESAMPLES, seed=SEED)
    assert diff.n == 5 and diff.n_failed == 1
    # differences on the 5 pairs left: 2, 2, 2, 0, 3 -> mean 9 / 5
    assert diff.delta == pytest.approx(9 / 5)
    assert diff.p == pytest.approx(
        scipy.stats.wilcoxon([2, 2, 2, 0, 3], zero_method="wilcox").pvalue)
    assert (diff.wins, diff.ties, diff.losses) == (4, 1, 0)
    assert diff.method == "wilcoxon"


def test_win_tie_loss():
    assert win_tie_loss([1, 2, 3, 4], [0, 2, 5, 3], "lower") == (2, 1, 1)
    assert win_tie_loss([1, 2, 3, 4], [0, 2, 5, 3], "higher") == (1, 1, 2)
    assert win_tie_loss([1.0, float("nan")], [2.0, 1.0], "higher") == (1, 1, 0)


def test_to_dict_is_plain_json():
    diff = paired_mean("toy", [1.0, 2.0, 3.0, 4.0], [2.0, 3.5, 3.0, 5.0], a="base", b="tuned",
                       better="higher", n_resamples=100)
    data = json.loads(json.dumps(diff.to_dict(), allow_nan=False))
    assert data["metric"] == "toy" and data["a"] == "base" and data["b"] == "tuned"
    assert data["significant"] == diff.significant and data["verdict"] == diff.verdict
    assert data["delta"] == pytest.approx(0.875)


def test_significance_needs_interval_and_p():
    base = dict(metric="m", a="a", b="b", a_value=1.0, b_value=2.0, delta=1.0, n=10, wins=5,
                ties=5, losses=0, method="wilcoxon", better="higher", seed=0, n_resamples=10)
    assert Difference(low=0.5, high=1.5, p=0.01, **base).verdict == "b better"
    assert Difference(low=0.5, high=1.5, p=None, **base).significant
    assert not Difference(low=0.5, high=1.5, p=0.2, **base).significant
    assert not Difference(low=-0.1, high=1.5, p=0.01, **base).significant
    assert not Difference(low=math.nan, high=math.nan, p=0.01, **base).significant
    lower = {**base, "better": "lower"}
    assert Difference(low=0.5, high=1.5, p=0.01, **lower).verdict == "a better"


def test_mismatched_lengths_are_a_data_error():
    with pytest.raises(DataError, match="3 examples.*2"):
        paired_mean("toy", [1, 2, 3], [1, 2], better="higher")
    with pytest.raises(DataError, match="differ in length"):
        paired_ratio("loss.ppl", [1, 2], [1, 2], [1, 2], [1], better="lower")


@pytest.mark.parametrize("a_values,b_values", [([], []), ([1.0], [2.0]), ([1.0, None], [2, 3])])
def test_fewer_than_two_pairs_is_a_data_error(a_values, b_values):
    with pytest.raises(DataError, match="at least 2"):
        wilcoxon_scores("judge.score", a_values, b_values)


def test_bad_settings_are_a_config_error():
    with pytest.raises(ConfigError) as caught:
        paired_mean("toy", [1, 2], [2, 3], better="smaller", n_resamples=0, confidence=95)
    assert len(caught.value.problems) == 3
    with pytest.raises(ConfigError, match="neither"):
        win_tie_loss([1], [2], "up")
