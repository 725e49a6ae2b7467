"""depthprune.statistics against values computed by hand and against scipy / statsmodels."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from depthprune.statistics import (
    binomial_two_sided,
    bootstrap_mean_ci,
    cochran_q,
    friedman,
    holm,
    kendall_tau,
    mcnemar_exact,
    mean_ci,
    ratio_ci,
    sign_flip_greater,
    smallest_pair_p,
    spread_ci,
    spread_test,
    top_k_overlap,
    wilcoxon_paired,
)


def test_binomial_two_sided_hand_values():
    assert binomial_two_sided(1, 5) == pytest.approx(12 / 32)  # 2 * (1 + 5) / 32
    assert binomial_two_sided(4, 5) == pytest.approx(12 / 32)  # symmetric
    assert binomial_two_sided(0, 6) == pytest.approx(2 / 64)
    assert binomial_two_sided(2, 4) == 1.0  # capped at 1
    assert binomial_two_sided(0, 0) == 1.0


def test_mcnemar_counts_only_discordant_pairs():
    a = [1, 1, 1, 0, 1, 0, 1, 0]
    b = [0, 0, 0, 0, 1, 1, 1, 0]
    assert mcnemar_exact(a, b) == (3, 1, pytest.approx(10 / 16))  # 2 * (1 + 4) / 16
    assert mcnemar_exact([True] * 6, [False] * 6) == (6, 0, pytest.approx(1 / 32))
    with pytest.raises(ValueError):
        mcnemar_exact([1, 0], [1])


def test_holm_hand_values():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    # a NaN p-value (no test) is no member of the family: it used to set every later adjusted p to 1
    for p in ([0.01, float("nan"), 0.02], [float("nan"), 0.01, 0.02], [0.01, 0.02, float("nan")]):
        adjusted = holm(p)
        assert [a for a in adjusted if a == a] == pytest.approx([0.02, 0.02]) and sum(a != a for a in adjusted) == 1
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])
    assert holm([0.04]) == pytest.approx([0.04])
    assert holm([]) == []


def test_kendall_tau_hand_values():
    assert kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert kendall_tau([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(4 / 6)  # one discordant pair of 6
    # one pair tied in x: C = 5, D = 0, tau_b = 5 / sqrt((6 - 1) * 6)
    assert kendall_tau([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(5 / math.sqrt(30))
    assert math.isnan(kendall_tau([1, 1, 1], [1, 2, 3]))


def test_top_k_overlap():
    assert top_k_overlap([1, 2, 3], [3, 4, 5]) == pytest.approx(1 / 3)
    assert top_k_overlap([1, 2, 3], [2, 1, 9], k=2) == 1.0
    assert top_k_overlap([5, 7], [7, 5]) == 1.0


def test_bootstrap_mean_ci():
    mean, low, high = bootstrap_mean_ci([2.0] * 10)
    assert (mean, low, high) == (2.0, 2.0, 2.0)
    values = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
    mean, low, high = bootstrap_mean_ci(values, seed=1)
    assert mean == 3.5 and 0.0 <= low < 3.5 < high <= 7.0
    assert bootstrap_mean_ci(values, seed=1) == (mean, low, high)  # seeded: reproducible


def test_binomial_two_sided_matches_scipy_up_to_20000_discordant_pairs():
    """Bug 1 of issue 15: the exact tail overflowed a float at n >= 1024 (2 ** n, then fsum)."""
    from scipy.stats import binomtest
    for n in (1, 2, 5, 17, 100, 1023, 1024, 1030, 2047, 5000, 12345, 20000):
        for k in sorted({0, 1, n // 3, n // 2 - 1, n // 2, n // 2 + 1, n - 1, n, max(0, n // 2 - int(2 * n ** 0.5))}):
            if 0 <= k <= n:
                assert binomial_two_sided(k, n) == pytest.approx(binomtest(k, n, 0.5).pvalue, rel=1e-9, abs=1e-300), (k, n)
    assert binomial_two_sided(0, 1024) < 1e-300 and binomial_two_sided(500, 1030) == pytest.approx(0.3662112178)
    a, b = [1] * 700 + [0] * 600 + [1] * 50, [0] * 700 + [1] * 600 + [1] * 50  # 1,300 discordant pairs
    assert mcnemar_exact(a, b) == (700, 600, pytest.approx(binomtest(700, 1300, 0.5).pvalue, rel=1e-9))


def test_holm_equals_statsmodels():
    from statsmodels.stats.multitest import multipletests
    gen = np.random.default_rng(0)
    for m in (1, 2, 7, 32):
        p = list(gen.uniform(0, 0.2, m))
        assert holm(p) == pytest.approx(list(multipletests(p, method="holm")[1]))


def test_cochran_q():
    from statsmodels.stats.contingency_tables import cochrans_q
    a = [1] * 9 + [0] * 3 + [1] * 20 + [0] * 10
    b = [0] * 9 + [1] * 3 + [1] * 20 + [0] * 10  # 9 vs 3 discordant, 30 concordant
    q, p = cochran_q(np.array([a, b]).T)
    assert q == pytest.approx((9 - 3) ** 2 / 12) and p == pytest.approx(sps.chi2.sf(3.0, 1))
    gen = np.random.default_rng(1)
    x = (gen.random((80, 5)) < 0.5).astype(int)
    x[:10] = 1  # all-right rows carry no information: Q is unchanged by them (and they are dropped)
    assert cochran_q(x) == pytest.approx((cochrans_q(x).statistic, cochrans_q(x).pvalue))
    assert cochran_q(np.ones((6, 3))) == (0.0, 1.0) and cochran_q(np.ones((6, 1))) == (0.0, 1.0)


def test_nll_tests_are_rank_tests_that_respect_small_samples():
    assert wilcoxon_paired([1.0, 1.1, 1.2], [2.0, 2.1, 2.2]) == pytest.approx(0.25)  # 2 / 2^3: exact
    assert wilcoxon_paired([1.0, 2.0], [1.0, 2.0]) == 1.0
    gen = np.random.default_rng(2)
    x = gen.normal(size=(30, 4)) + np.array([0, 0, 0.5, 0])
    assert friedman(x) == pytest.approx(tuple(sps.friedmanchisquare(*x.T)))
    assert friedman(x[:, :2])[1] == pytest.approx(wilcoxon_paired(x[:, 0], x[:, 1]))
    assert friedman(np.ones((5, 3))) == (0.0, 1.0)


def test_sign_flip_greater_is_exact_and_monotone():
    """Issue 26: the t-test fallback gave 0.5^5 = 0.031 for five equal positive differences and about
    4e-4 for the weaker [1, 1, 1, 1, 0.5]; the sign-flip p never falls when the evidence weakens."""
    assert sign_flip_greater([1.0] * 5) == pytest.approx(1 / 32)
    assert sign_flip_greater([1, 1, 1, 1, 0.5]) == pytest.approx(1 / 32)
    assert sign_flip_greater([1 / 3] * 4 + [0.3]) == pytest.approx(1 / 32)  # continuous, n <= 16: all 2^n signs
    assert sign_flip_greater([0.0] * 5) == 1.0 and sign_flip_greater([]) == 1.0
    # brute force over all 2^n signs = the lattice convolution (accuracy differences, any n)
    gen = np.random.default_rng(0)
    for _ in range(20):
        d = gen.integers(-3, 4, 14) / 3
        signs = 1 - 2 * ((np.arange(2 ** 14)[:, None] >> np.arange(14)) & 1)
        brute = np.mean(signs @ np.abs(d) >= d.sum() - 1e-9)
        assert sign_flip_greater(d) == pytest.approx(brute)
    big = gen.integers(-1, 2, 600) / 1.0 + (gen.random(600) < 0.05)  # large n, still exact
    z = big.sum() / np.sqrt((big ** 2).sum())
    assert sign_flip_greater(big) == pytest.approx(sps.norm.sf(z), rel=0.15)
    # monotone: raising any difference never raises p (continuous large n: one fixed set of signs)
    for d in (gen.integers(-2, 3, 40) / 2, gen.normal(0.2, 1, 40), gen.integers(-3, 4, 300) / 3):
        p = sign_flip_greater(d)
        for i in gen.choice(len(d), 10, replace=False):
            up = d.copy()
            up[i] += 0.5 if _on_lattice(d) else 0.37
            assert sign_flip_greater(up) <= p + 1e-12
    cols = gen.normal(0.1, 1, (50, 3))
    assert list(sign_flip_greater(cols)) == [sign_flip_greater(cols[:, j]) for j in range(3)]


def _on_lattice(d: np.ndarray) -> bool:
    return bool(np.allclose(d * 6, np.round(d * 6)))

def test_mean_ci():
    mean, low, high = mean_ci([1.0, 2.0, 3.0])
    half = sps.t.ppf(0.975, 2) * 1.0 / math.sqrt(3)
    assert (mean, low, high) == pytest.approx((2.0, 2 - half, 2 + half))
    assert mean_ci([4.0, 4.0]) == (4.0, 4.0, 4.0)


def test_spread_ci_covers_the_true_spread_without_upward_bias():
    assert spread_ci(np.ones((20, 3))) == (0.0, 0.0, 0.0) and spread_ci(np.ones((20, 1))) == (0.0, 0.0, 0.0)
    gen = np.random.default_rng(3)
    equal, covered = 0, 0
    for rep in range(60):
        shared = gen.normal(size=(300, 1))
        x = (gen.random((300, 6)) < 1 / (1 + np.exp(-shared))).astype(float)  # six equal methods
        spread, low, high = spread_ci(x, n_resamples=300, seed=rep)
        assert low <= spread <= high
        equal += low == 0.0
        y = x.copy()
        y[:, 0] = (gen.random(300) < 1 / (1 + np.exp(-shared[:, 0] - 1.5))).astype(float)  # one far better
        truth = np.mean(1 / (1 + np.exp(-shared[:, 0] - 1.5))) - np.mean(1 / (1 + np.exp(-shared[:, 0])))
        _, low, high = spread_ci(y, n_resamples=300, seed=rep)
        covered += low <= truth <= high
    assert equal >= 55 and covered >= 54  # nominal 95%: the interval of equal methods reaches 0


def test_ratio_ci_is_fieller():
    """Every rho inside is one the paired t-test of num - rho * den does not reject, and the end points
    sit exactly on the t quantile; unbounded when the denominator's mean is not resolved."""
    gen = np.random.default_rng(3)
    den = 1.0 + gen.normal(size=50)
    num = 0.4 * den + 0.3 * gen.normal(size=50)
    ratio, low, high = ratio_ci(num, den)
    assert ratio == pytest.approx(num.mean() / den.mean()) and low < ratio < high
    crit = sps.t.ppf(0.975, 49)
    for rho in (low, high):
        d = num - rho * den
        assert abs(d.mean()) / (d.std(ddof=1) / math.sqrt(50)) == pytest.approx(crit)
    assert ratio_ci(num, den - den.mean() + 0.05)[1:] == (-math.inf, math.inf)
    assert all(math.isnan(x) for x in ratio_ci(num, -np.abs(den)))


def test_spread_test_is_the_spread_interval_as_a_test():
    """One bootstrap over records gives both: p < 0.05 exactly when the interval excludes 0; the
    smallest p is 1 / (resamples + 1)."""
    gen = np.random.default_rng(4)
    agree = 0
    for rep in range(40):
        shared = gen.normal(size=(200, 1))
        lift = np.array([0.0, 0.0, 0.0, 0.3 * (rep % 3)])
        x = (gen.random((200, 4)) < 1 / (1 + np.exp(-shared - lift))).astype(float)
        spread, low, high, p = spread_test(x, n_resamples=500, seed=rep)
        assert (spread, low, high) == spread_ci(x, n_resamples=500, seed=rep)
        agree += (p < 0.05) == (low > 0)
    assert agree == 40
    far = np.column_stack([np.ones(100), np.zeros(100)])
    assert spread_test(far, n_resamples=999)[3] == 1 / 1000 and spread_test(np.ones((9, 3)))[3] == 1.0


def test_smallest_pair_p_is_the_smallest_exact_pairwise_p():
    gen = np.random.default_rng(5)
    x = (gen.random((60, 4)) < [0.3, 0.5, 0.5, 0.7]).astype(float)
    pairs = [(i, j) for i in range(4) for j in range(i + 1, 4)]
    assert smallest_pair_p(x, binary=True) == pytest.approx(min(mcnemar_exact(x[:, i], x[:, j])[2] for i, j in pairs))
    y = gen.normal(size=(25, 4)) + [0, 0.2, 0.4, 0.9]
    assert smallest_pair_p(y, binary=False) == pytest.approx(min(wilcoxon_paired(y[:, i], y[:, j]) for i, j in pairs))
    assert smallest_pair_p(np.ones((5, 3)), binary=True) == 1.0 == smallest_pair_p(np.ones((5, 3)), binary=False)

