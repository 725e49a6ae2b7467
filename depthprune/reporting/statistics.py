"""Statistics for comparing pruned models and rankings, on scipy and statsmodels.

Paired tests (the same samples under every model):

* :func:`mcnemar_exact` — two models, per-sample correctness (exact binomial on discordant pairs);
* :func:`cochran_q` — k models, per-sample correctness (the omnibus "do they differ at all?");
* :func:`friedman` / :func:`wilcoxon_paired` — the same two questions on a continuous per-sample
  value (answer NLL) when accuracy was not measured;
* :func:`mean_greater` — one-sided paired t test that a mean per-sample difference is positive;
* :func:`holm` — Holm step-down correction of a family of p-values.

Intervals: :func:`bootstrap_mean_ci` (percentile bootstrap of a mean), :func:`mean_ci` (t interval),
:func:`spread_ci` (simultaneous bootstrap interval of the spread max - min of k paired means).
:func:`ratio_ci` (Fieller interval of a ratio of paired means).
Agreement between rankings: :func:`kendall_tau`, :func:`top_k_overlap`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
from scipy import stats as sps


def binomial_two_sided(k: int, n: int) -> float:
    """Exact two-sided p-value of ``k`` successes in ``n`` fair coin flips (p = 0.5), from
    ``scipy.stats.binomtest`` (no overflow at large ``n``); 1.0 when ``n == 0``."""
    return 1.0 if n == 0 else float(sps.binomtest(int(k), int(n), 0.5).pvalue)


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


def mean_greater(d: Sequence[float]) -> float:
    """One-sided p-value that the paired differences ``d`` have a positive mean: the one-sample t
    test (``scipy.stats.ttest_1samp``, alternative "greater"). Without variation the t statistic is
    undefined: 1.0 when the common value is <= 0, else 0.5 ** n (the exact sign test's p for n equal
    positive differences, e.g. 0.125 at n = 3). 1.0 for fewer than two values."""
    x = np.asarray(d, dtype=np.float64)
    if x.size < 2:
        return 1.0
    if np.all(x == x[0]):
        return 1.0 if x[0] <= 0 else 0.5 ** x.size
    return float(sps.ttest_1samp(x, 0.0, alternative="greater").pvalue)


def cochran_q(correct: np.ndarray) -> tuple[float, float]:
    """Cochran's Q test that k paired binary outcomes have equal success rates.

    ``correct``: ``[samples, k]`` of 0/1, one column per model. Returns ``(Q, p)`` (chi-square
    with k - 1 degrees of freedom, ``statsmodels.stats.contingency_tables.cochrans_q``); ``(0, 1)``
    when no sample separates the models (every row all-right or all-wrong) or k < 2.
    """
    from statsmodels.stats.contingency_tables import cochrans_q
    x = np.asarray(correct, dtype=np.int64)
    if x.ndim != 2 or x.shape[1] < 2:
        return 0.0, 1.0
    informative = (x.min(1) != x.max(1))
    if not informative.any():
        return 0.0, 1.0
    result = cochrans_q(x[informative])  # constant rows add nothing to Q; dropping them avoids 0/0
    return float(result.statistic), float(result.pvalue)


def friedman(values: np.ndarray) -> tuple[float, float]:
    """Friedman rank test that k paired continuous outcomes are exchangeable within each sample
    (Cochran's Q is its special case for 0/1 data). ``values``: ``[samples, k]``. Returns
    ``(statistic, p)`` from ``scipy.stats.friedmanchisquare``; ``(0, 1)`` when k < 2, with one
    sample, or when every sample ties all k values."""
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] < 2 or x.shape[0] < 2 or np.all(x.max(1) == x.min(1)):
        return 0.0, 1.0
    if x.shape[1] == 2:  # scipy needs k >= 3; for two models the paired signed-rank test is the analogue
        return 0.0, wilcoxon_paired(x[:, 0], x[:, 1])
    result = sps.friedmanchisquare(*x.T)
    return float(result.statistic), float(result.pvalue)


def wilcoxon_paired(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided Wilcoxon signed-rank p-value of the paired differences ``a - b``; exact for small
    samples (scipy decides), zero differences dropped (``zero_method="wilcox"``); 1.0 when every
    difference is zero. At n = 3 with every difference of one sign the p-value is 0.25."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if d.size == 0 or not np.any(d != 0):
        return 1.0
    with warnings.catch_warnings():  # scipy warns about the normal approximation with ties: expected
        warnings.simplefilter("ignore")
        return float(sps.wilcoxon(d, zero_method="wilcox").pvalue)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm(-Bonferroni) adjusted p-values, in the input order.

    Sorted ascending p_(1) <= ... <= p_(m), the adjusted value is
    ``max_{j <= i} min(1, (m - j + 1) * p_(j))``; reject at level alpha where adjusted < alpha.
    Controls the family-wise error rate without independence assumptions. (Equal to statsmodels'
    ``multipletests(method="holm")``, which runs ``gc.collect()`` on every call: 0.1 s each here.)
    A NaN p-value (no test) stays NaN and is not a member of the family: it neither counts in m nor
    moves the others (it used to sort anywhere and set every later adjusted value to 1).
    """
    adjusted = [float("nan")] * len(pvalues)
    tested = [i for i, p in enumerate(pvalues) if p == p]
    m = len(tested)
    running = 0.0
    for rank, i in enumerate(sorted(tested, key=lambda i: pvalues[i])):
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


def spread_ci(values: np.ndarray, n_resamples: int = 1000, level: float = 0.95,
              seed: int = 0) -> tuple[float, float, float]:
    """The spread ``max_j mean_j - min_j mean_j`` of k paired columns and its simultaneous interval.

    ``values``: ``[samples, k]``. A bootstrap over samples gives c, the ``level`` quantile of
    ``max_j,l |(m*_j - m*_l) - (m_j - m_l)|`` (every pairwise difference at once); then with
    probability ``level`` every true pairwise difference lies within c of its estimate, so the
    true spread lies in ``[max(0, spread - c), spread + c]``. Unlike a percentile interval of
    the observed max - min, this is not biased upward by picking the extremes. Returns
    ``(spread, low, high)`` in the units of ``values``; (0, 0, 0) for fewer than two columns.
    """
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] < 2 or x.shape[0] == 0:
        return 0.0, 0.0, 0.0
    means = x.mean(0)
    spread = float(means.max() - means.min())
    n, rng = x.shape[0], _rng(seed)
    chunk, parts = max(1, 2_000_000 // n), []  # bounded memory per step
    for start in range(0, n_resamples, chunk):
        b = min(chunk, n_resamples - start)
        draws = (rng.integers(0, n, (b, n)) + n * np.arange(b)[:, None]).ravel()
        parts.append(np.bincount(draws, minlength=b * n).reshape(b, n) @ x / n)  # resample counts -> means
    dev = np.concatenate(parts) - means  # [resamples, k]
    c = float(np.quantile(dev.max(1) - dev.min(1), level))  # max over pairs of |dev_j - dev_l|
    return spread, max(0.0, spread - c), spread + c


def ratio_ci(num: Sequence[float], den: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """``(ratio, low, high)``: mean(num) / mean(den) of paired per-sample values and its Fieller interval.

    The interval is every rho for which the paired t-test of ``num - rho * den`` does not reject
    (Fieller 1954, with the sample covariance of the pairs): the roots of a quadratic. It is bounded
    only when mean(den) itself differs from 0 at ``level``; otherwise the ratio is not determined by
    the data and the interval is ``(-inf, inf)``. Unlike a percentile bootstrap of the ratio, no
    resample is dropped for a denominator <= 0 (which undercovers when the denominator is small).
    NaN everywhere when mean(den) <= 0 or fewer than two pairs."""
    a, b = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"ratio_ci needs paired values; got {a.size} and {b.size}")
    if a.size < 2 or b.mean() <= 0:
        return float("nan"), float("nan"), float("nan")
    n, ma, mb = a.size, a.mean(), b.mean()
    cov = np.cov(a, b, ddof=1)
    q = float(sps.t.ppf(0.5 + level / 2, n - 1)) ** 2 / n
    qa, qb, qc = mb * mb - q * cov[1, 1], -2 * (ma * mb - q * cov[0, 1]), ma * ma - q * cov[0, 0]
    if qa <= 0:
        return float(ma / mb), float("-inf"), float("inf")
    half = math.sqrt(max(qb * qb - 4 * qa * qc, 0.0))
    return float(ma / mb), float((-qb - half) / (2 * qa)), float((-qb + half) / (2 * qa))


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b between paired values (ties handled; ``scipy.stats.kendalltau``):
    1 = same order, -1 = reversed. NaN if either side is all ties or has fewer than 2 values."""
    if len(x) != len(y):
        raise ValueError(f"kendall_tau needs paired values; got {len(x)} and {len(y)}")
    if len(x) < 2 or len(set(x)) < 2 or len(set(y)) < 2:
        return float("nan")
    return float(sps.kendalltau(x, y).statistic)


def top_k_overlap(a: Sequence[int], b: Sequence[int], k: int | None = None) -> float:
    """Fraction of the first ``k`` items of ranking ``a`` that are among the first ``k`` of ``b``
    (``k`` defaults to ``len(a)``, i.e. the overlap of two removed sets of equal size)."""
    k = len(a) if k is None else k
    if k <= 0:
        raise ValueError(f"top_k_overlap needs k >= 1, got {k}")
    return len(set(a[:k]) & set(b[:k])) / k


def mean_ci(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """``(mean, low, high)``: the mean and its t interval (``scipy.stats.t``); a single value or
    identical values give a zero-width interval."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise ValueError("mean_ci needs at least one value")
    mean = float(x.mean())
    if x.size < 2 or np.all(x == x[0]):
        return mean, mean, mean
    half = float(sps.t.ppf(0.5 + level / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
    return mean, mean - half, mean + half


#: A domain keeping less than this share of its accuracy while another keeps at least
#: :data:`KEPT_WELL` is a hidden collapse (Minitron: 90% of MMLU kept, 35% of GSM8K).
COLLAPSED, KEPT_WELL = 0.80, 0.90


def retention(base: Sequence[int], pruned: Sequence[int], n_resamples: int = 2000, level: float = 0.95,
              seed: int = 0) -> tuple[float, float, float]:
    """``(kept, low, high)``: accuracy retained, pruned / unpruned mean correctness on the same
    samples (paired, same order), with its percentile bootstrap interval over samples. NaN when
    the unpruned model got nothing right."""
    b, p = np.asarray(base, dtype=np.float64), np.asarray(pruned, dtype=np.float64)
    if b.shape != p.shape or b.size == 0:
        raise ValueError(f"retention needs two equal-length non-empty sequences; got {b.size} and {p.size}")
    if b.sum() == 0:
        return float("nan"), float("nan"), float("nan")
    idx = _rng(seed).integers(0, b.size, (n_resamples, b.size))
    den = b[idx].sum(1)
    ratios = np.where(den > 0, p[idx].sum(1) / np.where(den > 0, den, 1), np.nan)
    alpha = (1 - level) / 2
    return float(p.sum() / b.sum()), float(np.nanquantile(ratios, alpha)), float(np.nanquantile(ratios, 1 - alpha))


def hidden_collapse(kept: dict[str, float]) -> list[str]:
    """The domains that keep less than 80% of their accuracy while another domain keeps at least
    90% (the collapse an average over domains hides); [] when there is none."""
    if not any(v >= KEPT_WELL for v in kept.values() if v == v):
        return []
    return sorted(d for d, v in kept.items() if v == v and v < COLLAPSED)


__all__ = ["binomial_two_sided", "bootstrap_mean_ci", "cochran_q", "friedman", "holm", "kendall_tau",
           "hidden_collapse", "mcnemar_exact", "mean_ci", "mean_greater", "ratio_ci", "retention", "spread_ci", "top_k_overlap",
           "wilcoxon_paired"]
