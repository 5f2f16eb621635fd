"""The bootstrap's statistics on problems with a known truth: interval coverage, pairing,
agreement with scipy's reference bootstrap, the seed level, and the resampling counts."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lm_experiments.compare import bootstrap

REPETITIONS = 2000  # simulated test sets; coverage is then known to about +-0.5%
SENTENCES = 200


def simulated_pair(delta: float, seed: int = 0):
    """REPETITIONS independent test sets of SENTENCES sentences, as [n, R] arrays: tokens, and
    two models' NLLs. Per sentence i: nll_a = t_i (2.5 + d_i + e_i), nll_b = nll_a + t_i g_i with
    a sentence difficulty d_i shared by both models, E[e] = 0 and E[g] = ``delta``, independent of
    the length t_i; so the true perplexities are exp(2.5) and exp(2.5 + delta), their true ratio
    exp(delta)."""
    rng = np.random.default_rng(seed)
    shape = (SENTENCES, REPETITIONS)
    tokens = 1 + rng.poisson(12, shape)
    difficulty = rng.normal(0, 0.6, shape)  # a hard sentence is hard for both models
    nll_a = tokens * (2.5 + difficulty + rng.normal(0, 0.2, shape))
    nll_b = nll_a + tokens * rng.normal(delta, 0.25, shape)
    return tokens, nll_a, nll_b


def coverage(replicates: np.ndarray, truth: float) -> float:
    lo, hi = bootstrap.interval(replicates)  # each [R]
    return float(np.mean((lo <= truth) & (truth <= hi)))


def test_paired_ratio_interval_covers_the_true_ratio_95_percent_of_the_time():
    tokens, nll_a, nll_b = simulated_pair(delta=0.05)
    # every repetition resampled at once: the [n, R] columns share the sentence draws, as the
    # models of one comparison do (the repetitions themselves are independent data)
    ppl_a = bootstrap.ratio_of_sums(nll_a, tokens, np.exp)  # [resamples, R]
    ppl_b = bootstrap.ratio_of_sums(nll_b, tokens, np.exp)
    assert ppl_a.shape == (bootstrap.RESAMPLES, REPETITIONS)
    assert 0.93 <= coverage(ppl_b / ppl_a, math.exp(0.05)) <= 0.97
    assert 0.93 <= coverage(ppl_a, math.exp(2.5)) <= 0.97  # one model's perplexity too
    # the same test sets resampled without pairing (another seed for model b) cover ~always:
    # the intervals are far too wide, which the paired test must not be
    unpaired = bootstrap.ratio_of_sums(nll_b, tokens, np.exp, seed=1) / ppl_a
    assert coverage(unpaired, math.exp(0.05)) > 0.99


def test_interval_agrees_with_scipys_percentile_bootstrap():
    from scipy.stats import bootstrap as scipy_bootstrap

    rng = np.random.default_rng(3)
    tokens = 1 + rng.poisson(10, 300)
    nll = tokens * rng.gamma(4.0, 0.7, 300)

    def ppl(nll, tokens, axis=-1):
        return np.exp(nll.sum(axis=axis) / tokens.sum(axis=axis))

    reference = scipy_bootstrap(
        (nll, tokens), ppl, paired=True, vectorized=True, n_resamples=4000,
        method="percentile", random_state=0,
    ).confidence_interval  # fmt: skip
    lo, hi = bootstrap.interval(bootstrap.ratio_of_sums(nll, tokens, np.exp, resamples=4000))
    point = ppl(nll, tokens)
    assert lo < point < hi
    # two Monte Carlo estimates of the same quantiles: within a small share of the width
    width = reference.high - reference.low
    assert abs(lo - reference.low) < 0.06 * width and abs(hi - reference.high) < 0.06 * width


def test_identical_models_give_a_ratio_of_exactly_one():
    tokens, nll_a, _ = simulated_pair(delta=0.0)
    a = bootstrap.ratio_of_sums(nll_a[:, 0], tokens[:, 0], np.exp)
    b = bootstrap.ratio_of_sums(nll_a[:, 0].copy(), tokens[:, 0], np.exp)
    assert np.array_equal(a / b, np.ones(bootstrap.RESAMPLES))
    lo, hi = bootstrap.interval(a / b)
    assert lo == hi == 1.0 and not bootstrap.excludes(lo, hi)


def test_resample_counts_are_a_multinomial_draw_of_n_sentences():
    counts = np.concatenate(list(bootstrap.resample_counts(50, resamples=4000, seed=7)))
    assert counts.shape == (4000, 50) and (counts.sum(axis=1) == 50).all()
    assert counts.mean() == 1.0
    assert counts.var() == pytest.approx(1 - 1 / 50, rel=0.05)  # multinomial(n, 1/n) per cell
    again = np.concatenate(list(bootstrap.resample_counts(50, resamples=4000, seed=7)))
    assert np.array_equal(counts, again)  # what pairs two models' resamples
    other = np.concatenate(list(bootstrap.resample_counts(50, resamples=4000, seed=8)))
    assert not np.array_equal(counts, other)


def test_chunked_resampling_sums_like_one_matrix(monkeypatch):
    columns = np.random.default_rng(0).random((1000, 3))
    monkeypatch.setattr(bootstrap, "CHUNK_CELLS", 1000 * 7)  # 7 resamples a chunk
    sums = bootstrap.resampled_sums(columns, resamples=50)
    counts = np.concatenate(list(bootstrap.resample_counts(1000, resamples=50)))
    assert counts.shape == (50, 1000)
    np.testing.assert_allclose(sums, counts @ columns, rtol=1e-12)


def test_seed_mean_resamples_the_seeds():
    rng = np.random.default_rng(0)
    per_seed = np.tile([10.0, 11.0, 15.0], (20000, 1))  # no sentence noise: seeds only
    means = bootstrap.seed_mean(per_seed, rng)
    assert means.shape == (20000,)
    assert means.mean() == pytest.approx(12.0, rel=0.01)
    assert means.min() == 10.0 and means.max() == 15.0  # all picks the same seed
    # the mean of 3 draws with replacement: variance = population variance / 3
    assert means.var() == pytest.approx(np.var([10.0, 11.0, 15.0]) / 3, rel=0.05)
    one = rng.random((100, 1))
    assert np.array_equal(bootstrap.seed_mean(one, rng), one[:, 0])
