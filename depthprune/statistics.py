"""Statistics for comparing pruned models and rankings, on scipy and statsmodels.

Paired tests (the same samples under every model):

* :func:`mcnemar_exact` — two models, per-sample correctness (exact binomial on discordant pairs);
* :func:`cochran_q` — k models, per-sample correctness ("do they differ at all?", assuming the
  models exchangeable within a sample; the regime rule uses :func:`spread_test`, which does not);
* :func:`friedman` / :func:`wilcoxon_paired` — the same two questions on a continuous per-sample
  value (answer NLL) when accuracy was not measured;
* :func:`sign_flip_greater` — one-sided sign-flip (permutation) test that a mean per-sample
  difference is positive, exact for accuracy differences at any n and for any differences at small n;
* :func:`holm` — Holm step-down correction of a family of p-values.

Intervals: :func:`bootstrap_mean_ci` (percentile bootstrap of a mean), :func:`mean_ci` (t interval),
:func:`spread_ci` (simultaneous bootstrap interval of the spread max - min of k paired means) and
:func:`spread_test` (the same bootstrap over records, with the p-value of "all k means are equal":
the regime rule's omnibus test, valid however the columns are correlated within a record).
:func:`ratio_ci` (Fieller interval of a ratio of paired means).
Agreement between rankings: :func:`kendall_tau`, :func:`top_k_overlap`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from scipy import stats as sps
from scipy.special import gammaln


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


def _lattice(x: np.ndarray, largest: int = 64) -> int | None:
    """The smallest L <= ``largest`` with every ``x * L`` a whole number (None: no such L), e.g. 3 for
    differences of a mean of three 0/1 values and one 0/1 value."""
    for scale in range(1, largest + 1):
        y = x * scale
        if np.all(np.abs(y - np.round(y)) <= 1e-9 * np.maximum(1.0, np.abs(y))):
            return scale
    return None


@lru_cache(maxsize=4096)
def _half_binomial(c: int) -> np.ndarray:
    """P(Binomial(c, 1/2) = j), j = 0..c."""
    j = np.arange(c + 1)
    return np.exp(gammaln(c + 1) - gammaln(j + 1) - gammaln(c - j + 1) - c * math.log(2.0))


def _sign_flip_exact_lattice(a: np.ndarray) -> np.ndarray:
    """Exact null distribution of sum_i e_i a_i, e_i = +-1 fair and independent, for whole numbers
    ``a``: records with the same |a| contribute v * (2 Binomial(c, 1/2) - c), convolved over v.
    Returns the probabilities of the sums -M..M, M = sum |a|."""
    dist = np.ones(1)
    for v, c in zip(*np.unique(np.abs(a[a != 0]), return_counts=True)):
        part = np.zeros(2 * int(v) * int(c) + 1)
        part[::2 * int(v)] = _half_binomial(int(c))
        dist = np.convolve(dist, part)
    return dist


@lru_cache(maxsize=2)
def _signs(n: int, resamples: int, seed: int) -> np.ndarray:
    """``resamples`` x ``n`` fair random signs, one fixed set per (n, resamples, seed): a test that uses
    the same signs for every input is monotone in each difference and reproducible."""
    signs = np.where(np.random.default_rng([seed, n]).random((resamples, n)) < 0.5, -1.0, 1.0).astype(np.float32)
    signs.setflags(write=False)
    return signs


def sign_flip_greater(d: Sequence[float] | np.ndarray, resamples: int = 10_000, seed: int = 0,
                      exact_up_to: int = 16) -> float | np.ndarray:
    """One-sided p-value that paired differences ``d`` have a positive mean: the sign-flip (Fisher
    one-sample permutation) test of their sum. ``d``: one vector, or ``[n, r]`` for r tests at once
    (returns r p-values).

    p = P(sum_i e_i |d_i| >= sum_i d_i) over fair independent signs e_i. Exact when the differences
    lie on a lattice (whole multiples of 1/L, L <= 64: differences of accuracies, at any n, by
    convolving binomials) or when n <= ``exact_up_to`` (all 2^n signs); otherwise a Monte Carlo
    estimate (1 + count) / (resamples + 1) over one fixed seeded set of signs. Either way p is
    monotone in the evidence: raising any d_i never raises p (the old t-test fallback gave 0.5^n
    for n equal positive differences and a far smaller p for slightly weaker, uneven ones). Exact
    under a null symmetric about 0; asymptotically valid for any null with mean 0. 1.0 without
    any non-zero difference."""
    x = np.asarray(d, dtype=np.float64)
    if x.ndim == 2:
        scale = _lattice(x)
        if scale is None and x.shape[0] > exact_up_to:  # Monte Carlo: one matrix product for all r
            return _sign_flip_mc(x, resamples, seed)
        return np.array([_sign_flip_one(x[:, j], resamples, seed, exact_up_to, scale) for j in range(x.shape[1])])
    return _sign_flip_one(x, resamples, seed, exact_up_to, _lattice(x))


def _sign_flip_one(x: np.ndarray, resamples: int, seed: int, exact_up_to: int, scale: int | None) -> float:
    if x.size == 0 or not np.any(x != 0):
        return 1.0
    if scale is not None:
        a = np.round(x * scale).astype(np.int64)
        dist = _sign_flip_exact_lattice(a)
        total = int(np.abs(a).sum())
        return float(min(1.0, dist[int(a.sum()) + total:].sum()))
    if x.size <= exact_up_to:
        signs = 1.0 - 2.0 * ((np.arange(2 ** x.size)[:, None] >> np.arange(x.size)) & 1)
        sums = signs @ np.abs(x)
        return float(np.mean(sums >= x.sum() - 1e-12 * np.abs(x).sum()))
    return float(_sign_flip_mc(x[:, None], resamples, seed)[0])


def _sign_flip_mc(x: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    flips = _signs(x.shape[0], resamples, seed) @ np.abs(x).astype(np.float32)  # [resamples, r]
    count = (flips >= x.sum(0) - 1e-5 * np.abs(x).sum(0)).sum(0)  # float32 sums: a tie stays a tie
    return np.where(np.any(x != 0, 0), (1 + count) / (resamples + 1), 1.0)


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


def _weight_chunks(n: int, n_resamples: int, seed: int):  # noqa: ANN202 - a generator of arrays
    """Bootstrap resamples of n records, chunk by chunk (bounded memory): ``[b, n]`` arrays of how
    often each record is drawn in each resample, / n (a resample's means are this @ values)."""
    rng, chunk = _rng(seed), max(1, 2_000_000 // n)
    for start in range(0, n_resamples, chunk):
        b = min(chunk, n_resamples - start)
        draws = (rng.integers(0, n, (b, n)) + n * np.arange(b)[:, None]).ravel()
        yield np.bincount(draws, minlength=b * n).reshape(b, n).astype(np.float32) / np.float32(n)


@lru_cache(maxsize=2)
def _weights(n: int, n_resamples: int, seed: int) -> np.ndarray:
    """All of :func:`_weight_chunks` at once, kept: every budget of a report with the same records is
    resampled alike, and drawn once."""
    out = np.concatenate(list(_weight_chunks(n, n_resamples, seed)))
    out.setflags(write=False)
    return out


def _resampled_means(x: np.ndarray, n_resamples: int, seed: int) -> np.ndarray:
    """``[n_resamples, k]``: the column means of ``x`` in each bootstrap resample of its rows."""
    n, x32 = x.shape[0], x.astype(np.float32)
    if n * n_resamples <= 16_000_000:  # up to 64 MB: keep the weights for the next budget
        return _weights(n, n_resamples, seed) @ x32
    return np.concatenate([w @ x32 for w in _weight_chunks(n, n_resamples, seed)])


def spread_test(values: np.ndarray, n_resamples: int = 1000, level: float = 0.95,
                seed: int = 0) -> tuple[float, float, float, float]:
    """Do k paired columns have equal means? The spread ``max_j mean_j - min_j mean_j``, its
    simultaneous interval and the p-value of "all means equal", from one bootstrap over records.

    ``values``: ``[records, k]``. Each resample redraws whole records (rows), so whatever ties the
    columns within a record — plans that share removed layers answer alike — is carried into the
    resamples; nothing is assumed about it (Cochran's Q and Friedman assume the columns exchangeable
    within a record, and over-reject when they are not). The centred deviations
    ``dev_j = m*_j - m_j`` give R* = max_j dev_j - min_j dev_j = max over pairs of
    ``|(m*_j - m*_l) - (m_j - m_l)|``, the bootstrap law of the spread's error under any means:

    * interval: with c the ``level`` quantile of R* (the floor(level (B + 1)) + 1-th smallest of the
      B resamples), every true pairwise difference lies within c of its estimate simultaneously, so
      the true spread lies in ``[max(0, spread - c), spread + c]`` (not biased upward by picking the
      extremes, as a percentile interval of max - min would be);
    * p-value: under "all means equal" the spread is itself such an error, so
      p = (1 + #{R* >= spread}) / (B + 1), and p < 1 - level exactly when the interval excludes 0.

    Returns ``(spread, low, high, p)`` in the units of ``values``; ``(0, 0, 0, 1)`` for fewer than two
    columns or no records. The p-value cannot go below 1 / (n_resamples + 1): a caller correcting for
    m tests needs n_resamples well above m / alpha (:func:`depthprune.reporting.regimes.analyze` sets it).
    """
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] < 2 or x.shape[0] == 0:
        return 0.0, 0.0, 0.0, 1.0
    means = x.mean(0)
    spread = float(means.max() - means.min())
    dev = _resampled_means(x, n_resamples, seed) - means.astype(np.float32)
    errors = np.sort((dev.max(1) - dev.min(1)).astype(np.float64))  # max over pairs of |dev_j - dev_l|
    tie = 1e-6 * max(1.0, float(np.abs(x).max()))  # float32 products: equal spreads stay equal
    p = (1 + int((errors >= spread - tie).sum())) / (n_resamples + 1)
    # c: the floor(level (B + 1)) + 1-th smallest error, so that low > 0 exactly when p < 1 - level
    c = round(float(errors[min(n_resamples, math.floor(level * (n_resamples + 1)) + 1) - 1]), 7)  # float32 noise
    low = spread - c if spread - c > tie else 0.0
    return spread, low, spread + c, float(p)


def smallest_pair_p(values: np.ndarray, binary: bool) -> float:
    """The smallest two-sided p-value over every pair of the k paired columns of ``values``
    (``[samples, k]``): exact McNemar for 0/1 columns (``binary``), else the Wilcoxon signed-rank test
    (as :func:`mcnemar_exact` / :func:`wilcoxon_paired`, all pairs at once). Not itself corrected for
    the pairs: a floor that an omnibus p-value must not go below, never a test on its own."""
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] < 2 or x.shape[0] == 0:
        return 1.0
    i, j = np.triu_indices(x.shape[1], 1)
    if binary:
        a_only = ((x[:, i] == 1) & (x[:, j] == 0)).sum(0)
        b_only = ((x[:, i] == 0) & (x[:, j] == 1)).sum(0)
        p = np.minimum(1.0, 2 * sps.binom.cdf(np.minimum(a_only, b_only), a_only + b_only, 0.5))
        return float(np.where(a_only + b_only > 0, p, 1.0).min())
    d = x[:, i] - x[:, j]
    live = np.any(d != 0, 0)
    if not live.any():
        return 1.0
    with warnings.catch_warnings():  # scipy warns about the normal approximation with ties: expected
        warnings.simplefilter("ignore")
        return float(np.min(sps.wilcoxon(d[:, live], zero_method="wilcox", axis=0).pvalue))


def spread_ci(values: np.ndarray, n_resamples: int = 1000, level: float = 0.95,
              seed: int = 0) -> tuple[float, float, float]:
    """``(spread, low, high)`` of :func:`spread_test`: the spread ``max_j mean_j - min_j mean_j`` of k
    paired columns and its simultaneous bootstrap interval over records; (0, 0, 0) for fewer than
    two columns."""
    return spread_test(values, n_resamples, level, seed)[:3]


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


#: A domain whose unpruned accuracy is below this is near the floor: nothing measurable is left to
#: keep, so a choice made for it cannot be validated, and answer-NLL objectives are gamed there (a
#: held-out base model at 3% on math: the math-aware `sleb` plan kept math at 3%, lowered its answer
#: NLL below the unpruned model's and took general from 57% to 0%).
FLOOR_ACCURACY = 0.10


def near_floor(accuracy: dict[str, tuple[int, int]]) -> list[str]:
    """The domains whose unpruned accuracy (``domain -> (correct, n)``) is below :data:`FLOOR_ACCURACY`."""
    return sorted(d for d, (right, n) in accuracy.items() if n > 0 and right / n < FLOOR_ACCURACY)


def floor_warning(where: str, domain: str, right: int, n: int) -> str:
    """The one warning line for a domain near the floor."""
    return (f"{where}: the unpruned model answers {right}/{n} ({right / n:.0%}) of domain '{domain}' right, near "
            f"the floor (under {FLOOR_ACCURACY:.0%}): a {domain}-aware choice cannot be validated there and "
            f"answer-NLL objectives can be gamed (a plan lowers {domain}'s NLL without right answers while other "
            "domains collapse); compare accuracy on every domain before trusting it")


__all__ = ["FLOOR_ACCURACY", "binomial_two_sided", "floor_warning", "near_floor", "bootstrap_mean_ci", "cochran_q", "friedman", "holm", "kendall_tau",
           "hidden_collapse", "mcnemar_exact", "mean_ci", "ratio_ci", "retention", "sign_flip_greater",
           "smallest_pair_p", "spread_ci", "spread_test", "top_k_overlap", "wilcoxon_paired"]
