"""depthprune.stats against values computed by hand."""

from __future__ import annotations

import math

import pytest

from depthprune.stats import (binomial_two_sided, bootstrap_mean_ci, holm, kendall_tau, mcnemar_exact,
                              paired_bootstrap, top_k_overlap)


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


def test_paired_bootstrap():
    b = [0.5, 1.0, 2.0, 4.0, 0.1]
    diff, low, high, p = paired_bootstrap([x + 1 for x in b], b, n_resamples=999)
    assert (diff, low, high) == pytest.approx((1.0, 1.0, 1.0))
    assert p == pytest.approx(2 / 1000)  # no resample on the other side of 0
    diff, low, high, p = paired_bootstrap(b, b)
    assert diff == 0 and p == 1.0


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
