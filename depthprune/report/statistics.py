"""Statistics for comparing pruned models and rankings (small, dependency-free, exact where it can be).

* :func:`mcnemar_exact` — paired test on per-sample correctness of two models on the same samples.
* :func:`holm` — Holm step-down correction of a family of p-values.
* :func:`bootstrap_mean_ci`, :func:`paired_bootstrap` — percentile bootstrap CIs for a mean NLL and
  for the mean of a paired difference (with a two-sided bootstrap p-value).
* :func:`kendall_tau`, :func:`top_k_overlap` — agreement between two rankings.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def binomial_two_sided(k: int, n: int) -> float:
    """Exact two-sided p-value of ``k`` successes in ``n`` fair coin flips (p = 0.5):
    ``min(1, 2 * P(X <= min(k, n - k)))``; 1.0 when ``n == 0``."""
    if n == 0:
        return 1.0
    low = min(k, n - k)
    tail = math.fsum(math.comb(n, i) for i in range(low + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def mcnemar_exact(a: Sequence[bool | int], b: Sequence[bool | int]) -> tuple[int, int, float]:
    """Exact McNemar test of paired correctness ``a[i]``, ``b[i]`` (same sample i).

    Returns ``(a_only, b_only, p)``: samples only ``a`` got right, samples only ``b`` got
    right, and the exact two-sided binomial p-value on those discordant pairs (concordant
    pairs carry no information about which model is better).
    """
    if len(a) != len(b):
        raise ValueError(f"mcnemar_exact needs paired samples; got {len(a)} and {len(b)}")
    a_only = sum(1 for x, y in zip(a, b) if x and not y)
    b_only = sum(1 for x, y in zip(a, b) if y and not x)
    return a_only, b_only, binomial_two_sided(a_only, a_only + b_only)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm(-Bonferroni) adjusted p-values, in the input order.

    Sorted ascending p_(1) <= ... <= p_(m), the adjusted value is
    ``max_{j <= i} min(1, (m - j + 1) * p_(j))``; reject at level alpha where adjusted < alpha.
    Controls the family-wise error rate without independence assumptions.
    """
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def bootstrap_mean_ci(values: Sequence[float], n_resamples: int = 2000, level: float = 0.95,
                      seed: int = 0) -> tuple[float, float, float]:
    """``(mean, low, high)``: the mean of ``values`` and its percentile bootstrap interval."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise ValueError("bootstrap_mean_ci needs at least one value")
    means = x[_rng(seed).integers(0, x.size, (n_resamples, x.size))].mean(1)
    alpha = (1 - level) / 2
    return float(x.mean()), float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


def paired_bootstrap(a: Sequence[float], b: Sequence[float], n_resamples: int = 2000,
                     level: float = 0.95, seed: int = 0) -> tuple[float, float, float, float]:
    """Paired bootstrap of the mean difference ``a - b`` (same samples, same order).

    Returns ``(mean difference, low, high, p)``: the percentile interval and the two-sided
    bootstrap p-value ``min(1, 2 * min(P*(d <= 0), P*(d >= 0)))`` over the resampled means
    (with a +1 correction so it is never exactly 0).
    """
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape or x.size == 0:
        raise ValueError(f"paired_bootstrap needs two equal-length non-empty arrays; got {x.size} and {y.size}")
    d = x - y
    means = d[_rng(seed).integers(0, d.size, (n_resamples, d.size))].mean(1)
    alpha = (1 - level) / 2
    tail = min((means <= 0).sum(), (means >= 0).sum())
    p = min(1.0, 2 * (tail + 1) / (n_resamples + 1))
    return float(d.mean()), float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha)), p


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b between paired values (ties handled): 1 = same order, -1 = reversed.

    tau_b = (C - D) / sqrt((n0 - n1) * (n0 - n2)) with C/D the concordant/discordant pairs,
    n0 = n(n-1)/2 and n1, n2 the pairs tied in x, in y. NaN if either side is all ties.
    """
    if len(x) != len(y):
        raise ValueError(f"kendall_tau needs paired values; got {len(x)} and {len(y)}")
    n = len(x)
    concordant = discordant = tie_x = tie_y = 0
    for i in range(n):
        for j in range(i + 1, n):
            dx, dy = x[i] - x[j], y[i] - y[j]
            if dx == 0 or dy == 0:
                tie_x += dx == 0
                tie_y += dy == 0
            elif (dx > 0) == (dy > 0):
                concordant += 1
            else:
                discordant += 1
    n0 = n * (n - 1) / 2
    denom = math.sqrt((n0 - tie_x) * (n0 - tie_y))
    return (concordant - discordant) / denom if denom > 0 else float("nan")


def top_k_overlap(a: Sequence[int], b: Sequence[int], k: int | None = None) -> float:
    """Fraction of the first ``k`` items of ranking ``a`` that are among the first ``k`` of ``b``
    (``k`` defaults to ``len(a)``, i.e. the overlap of two removed sets of equal size)."""
    k = len(a) if k is None else k
    if k <= 0:
        raise ValueError(f"top_k_overlap needs k >= 1, got {k}")
    return len(set(a[:k]) & set(b[:k])) / k


__all__ = ["binomial_two_sided", "bootstrap_mean_ci", "holm", "kendall_tau", "mcnemar_exact",
           "paired_bootstrap", "top_k_overlap"]
