"""Regime analysis of a study's results: who leads at each budget, by how much, beyond noise?

For every series (eval set x domain x healing recipe) and budget:

* the **spread** between methods: max - min accuracy (and max - min mean answer NLL);
* the **leader**: highest accuracy (ties: lower NLL); lowest NLL when accuracy was not measured;
* whether the leader beats each other method **beyond noise**: exact McNemar on paired per-sample
  correctness, or, without accuracy, a paired bootstrap of the per-sample NLL difference; the
  p-values of one budget (leader vs every other method) are Holm-corrected as one family.

**The regime rule** (stated here, printed in the report, alpha = :data:`ALPHA`):

* a budget is *ranking-sensitive* when the leader significantly beats at least one other method
  and the leader is not a structure-aware method;
* *structure-dominated* when the leader significantly beats at least one other method and is a
  structure-aware method (:data:`STRUCTURE_METHODS`: spacing-aware ``spaced``, evenly spaced
  ``uniform``, contiguous-block ``angular-block``);
* *converged* when the leader beats no other method significantly (the spread is within noise).

Consecutive budgets with the same label form a regime. The paper's map (arXiv 2603.20275) is
the sequence ranking-sensitive -> converged -> structure-dominated from low to high budget;
:func:`analyze` says whether the data show exactly that, and otherwise what they show.

Ranking stability (:func:`ranking_stability`) bootstraps the calibration samples (resampled
within each domain), re-ranks, and compares each resample's plan with the full-data plan:
top-k overlap of the removed sets and Kendall tau of the per-layer scores.
"""

from __future__ import annotations

import json
import warnings
from collections import defaultdict
from dataclasses import dataclass, field, fields

import numpy as np
import torch
from tqdm.auto import tqdm

from depthprune.rank.methods import SCORE_FREE, RankError, RankRequest, rank
from depthprune.score.scores import Scores
from depthprune.report.statistics import holm, kendall_tau, mcnemar_exact, paired_bootstrap, top_k_overlap
from depthprune.study.store import ResultRow

ALPHA = 0.05
STRUCTURE_METHODS = ("spaced", "uniform", "angular-block")
RANKING, CONVERGED, STRUCTURE = "ranking-sensitive", "converged", "structure-dominated"
PAPER_ORDER = (RANKING, CONVERGED, STRUCTURE)
RULE = (f"A budget is ranking-sensitive when the leading method beats at least one other method "
        f"beyond noise (exact McNemar on paired per-sample correctness, or a paired bootstrap of the "
        f"answer NLL when accuracy was not measured; Holm-corrected over the comparisons at that "
        f"budget, alpha = {ALPHA}) and the leader is not structure-aware; structure-dominated when "
        f"the same holds with a structure-aware leader ({', '.join(STRUCTURE_METHODS)}); converged "
        f"when the leader beats no method beyond noise. Consecutive budgets with the same label "
        f"form a regime.")


@dataclass
class Comparison:
    """Leader vs one other method at one budget."""

    other: str
    test: str                       # "mcnemar" or "bootstrap-nll"
    n_paired: int
    leader_only: int | None         # McNemar discordant counts
    other_only: int | None
    nll_diff: float | None          # mean NLL(other) - NLL(leader), with its bootstrap CI
    nll_ci: tuple[float, float] | None
    p: float
    p_holm: float = 1.0

    @property
    def significant(self) -> bool:
        return self.p_holm < ALPHA


@dataclass
class BudgetStats:
    """All methods at one budget of one series."""

    budget: int
    fraction: float
    metric: str                                     # "accuracy" or "nll"
    accuracy: dict[str, float | None]
    nll: dict[str, float | None]
    nll_ci: dict[str, tuple[float, float] | None]
    acc_ci: dict[str, tuple[float, float] | None]   # the stored 95% (Wilson) interval
    methods: dict[str, str]                         # label -> method name
    leader: str
    spread_accuracy: float | None
    spread_nll: float | None
    comparisons: list[Comparison]                   # leader vs each other method, best first
    regime: str

    @property
    def beaten(self) -> list[str]:
        return [c.other for c in self.comparisons if c.significant]

    @property
    def runner_up(self) -> Comparison | None:
        """The leader vs the second-best method by the metric."""
        return self.comparisons[0] if self.comparisons else None

    @property
    def strongest(self) -> Comparison | None:
        """The leader's most significant win (smallest Holm p)."""
        return min(self.comparisons, key=lambda c: (c.p_holm, c.p), default=None)


@dataclass
class Series:
    """One eval set x domain x healing recipe, across budgets, with its regimes."""

    eval_set: str
    domain: str
    heal: str                                        # JSON of the recipe, "null" for none
    n: int
    budgets: list[BudgetStats]
    runs: list[tuple[str, float, float]] = field(default_factory=list)  # (regime, first, last fraction)
    matches_paper: bool = False
    verdict: str = ""

    @property
    def name(self) -> str:
        heal = "" if self.heal == "null" else " (healed)"
        return f"{self.eval_set} / {self.domain}{heal}"


def _paired(a: ResultRow, b: ResultRow, which: int) -> tuple[list, list]:
    """Per-sample values (1 = correct, 2 = NLL) of a and b on the sample ids both have."""
    left = {s[0]: s[which] for s in a.samples if s[which] is not None}
    right = {s[0]: s[which] for s in b.samples if s[which] is not None}
    ids = sorted(set(left) & set(right))
    return [left[i] for i in ids], [right[i] for i in ids]


def _nll_ci(row: ResultRow) -> tuple[float, float] | None:
    from depthprune.report.statistics import bootstrap_mean_ci
    values = [s[2] for s in row.samples if s[2] is not None]
    return bootstrap_mean_ci(values)[1:] if values else None


def _compare(leader: ResultRow, other: ResultRow, metric: str) -> Comparison:
    if metric == "accuracy":
        a, b = _paired(leader, other, 1)
        lo, oo, p = mcnemar_exact(a, b)
        return Comparison(other.label, "mcnemar", len(a), lo, oo, None, None, p)
    a, b = _paired(other, leader, 2)  # positive difference = the other method's NLL is higher
    if not a:
        return Comparison(other.label, "bootstrap-nll", 0, None, None, None, None, 1.0)
    diff, low, high, p = paired_bootstrap(a, b)
    return Comparison(other.label, "bootstrap-nll", len(a), None, None, diff, (low, high), p)


def budget_stats(rows: list[ResultRow]) -> BudgetStats:
    """Leader, spread and leader-vs-others tests for the rows of one budget of one series."""
    metric = "accuracy" if all(r.accuracy is not None for r in rows) else "nll"
    if metric == "accuracy":
        ranked = sorted(rows, key=lambda r: (-r.accuracy, r.nll if r.nll is not None else np.inf))
    else:
        ranked = sorted(rows, key=lambda r: r.nll if r.nll is not None else np.inf)
    leader = ranked[0]  # sorted() is stable: exact ties go to the first label
    comparisons = [_compare(leader, r, metric) for r in ranked[1:]]
    for c, p in zip(comparisons, holm([c.p for c in comparisons])):
        c.p_holm = p
    accs = [r.accuracy for r in rows if r.accuracy is not None]
    nlls = [r.nll for r in rows if r.nll is not None]
    significant = any(c.significant for c in comparisons)
    regime = CONVERGED if not significant else (STRUCTURE if leader.method in STRUCTURE_METHODS else RANKING)
    return BudgetStats(
        budget=rows[0].budget, fraction=rows[0].budget_fraction, metric=metric,
        accuracy={r.label: r.accuracy for r in rows}, nll={r.label: r.nll for r in rows},
        nll_ci={r.label: _nll_ci(r) for r in rows},
        acc_ci={r.label: (r.ci_low, r.ci_high) if r.ci_low is not None else None for r in rows},
        methods={r.label: r.method for r in rows},
        leader=leader.label,
        spread_accuracy=max(accs) - min(accs) if len(accs) > 1 else None,
        spread_nll=max(nlls) - min(nlls) if len(nlls) > 1 else None,
        comparisons=comparisons, regime=regime)


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def _span(first: float, last: float) -> str:
    return _pct(first) if first == last else f"{_pct(first)}-{_pct(last)}"


def _verdict(series: Series) -> tuple[bool, str]:
    labels = [r[0] for r in series.runs]

    def leaders(name: str, first: float, last: float) -> str:
        if name == CONVERGED:
            return ""
        names = sorted({b.leader for b in series.budgets if first <= b.fraction <= last})
        return f" (leader{'s' if len(names) > 1 else ''} {', '.join(names)})"

    where = "; ".join(f"{name} at {_span(a, b)}{leaders(name, a, b)}" for name, a, b in series.runs)
    if not series.budgets:
        return False, "No budget has two or more methods to compare."
    if labels == [CONVERGED]:
        n = series.n
        return False, (f"No regimes: at no budget does any method beat another beyond noise "
                       f"(n = {n} samples per method). The methods are indistinguishable here; "
                       f"more samples would be needed to separate them.")
    peak = max(series.budgets, key=lambda b: (b.spread_accuracy if b.metric == "accuracy" else b.spread_nll) or 0)
    spread = (f"{100 * peak.spread_accuracy:.1f} accuracy points" if peak.metric == "accuracy"
              else f"{peak.spread_nll:.3f} nats of NLL")
    extra = f" The spread between methods peaks at {_pct(peak.fraction)} ({spread}, leader {peak.leader})."
    if tuple(labels) == PAPER_ORDER:
        return True, f"The paper's three regimes appear in its order: {where}.{extra}"
    missing = [r for r in PAPER_ORDER if r not in labels]
    text = f"The paper's three regimes do not appear as stated. Found, from low to high budget: {where}."
    if missing:
        text += f" Absent: {', '.join(missing)}."
    high = series.budgets[-1]
    structure_beaten = [c.other for c in high.comparisons if c.significant
                        and high.methods[c.other] in STRUCTURE_METHODS]
    if structure_beaten:
        text += (f" At the highest budget ({_pct(high.fraction)}) the structure-aware "
                 f"{', '.join(structure_beaten)} is significantly worse than {high.leader}.")
    return False, text + extra


def _runs(budgets: list[BudgetStats]) -> list[tuple[str, float, float]]:
    runs: list[list] = []
    for b in budgets:
        if runs and runs[-1][0] == b.regime:
            runs[-1][2] = b.fraction
        else:
            runs.append([b.regime, b.fraction, b.fraction])
    return [tuple(r) for r in runs]


def analyze(rows: list[ResultRow]) -> list[Series]:
    """Regime analysis of every series in ``rows`` (see the module docstring for the rule).

    Budgets where fewer than two methods were evaluated are skipped, and so are rows of the
    unpruned model (budget 0: the baseline, not a competitor). Series are ordered by eval set,
    domain, then unhealed before healed.
    """
    groups: dict[tuple, dict[int, list[ResultRow]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if r.budget == 0:
            continue
        groups[(r.eval_set, r.domain, json.dumps(r.heal, sort_keys=True))][r.budget].append(r)
    out = []
    def order(item: tuple) -> tuple:
        (eval_set, domain, heal), _ = item
        return eval_set, domain, heal != "null", heal

    for (eval_set, domain, heal), by_budget in sorted(groups.items(), key=order):
        stats = [budget_stats(sorted(rs, key=lambda r: r.label)) for _, rs in sorted(by_budget.items())
                 if len({r.label for r in rs}) > 1]
        n = max((r.n for rs in by_budget.values() for r in rs), default=0)
        series = Series(eval_set, domain, heal, n, stats, _runs(stats))
        series.matches_paper, series.verdict = _verdict(series)
        out.append(series)
    return out


# ----------------------------------------------------------------------------- stability
@dataclass
class Stability:
    """Bootstrap agreement of one ranking (label at budget) with its full-data plan."""

    label: str
    method: str
    budget: int
    overlap: float           # mean top-k overlap of the removed sets, 0..1
    overlap_sd: float
    tau: float | None        # mean Kendall tau of the per-layer scores (None: no score column)
    tau_sd: float | None
    resamples: int
    failed: int              # resamples that could not be ranked (count as overlap 0)
    full_removed: list[int]


def _request(method: str, options: dict, budget: int) -> RankRequest:
    names = {f.name for f in fields(RankRequest)} - {"method", "budget"}
    return RankRequest(method=method, budget=budget, **{k: v for k, v in options.items() if k in names})


def _score_column(columns: dict[str, list]) -> list | None:
    """The per-layer values a plan ranks by: its z-score column if any, else its first column."""
    if not columns:
        return None
    name = next((c for c in columns if c.startswith("z[")), next(iter(columns)))
    return columns[name]


def ranking_stability(scores: Scores, rankings: list[tuple[str, str, dict, int]], n_resamples: int = 50,
                      seed: int = 0, progress: bool = False, skipped: list[str] | None = None) -> list[Stability]:
    """Bootstrap stability of each ``(label, method, options, budget)`` ranking.

    One resample redraws every domain's calibration samples with replacement within the
    domain; all rankings are re-ranked on the same resamples (paired across methods). The
    score-free methods (last, uniform, random) and iterative are skipped; a ranking that cannot
    be re-ranked from ``scores`` is skipped with its reason appended to ``skipped``.
    """
    todo = [(lab, m, o, b) for lab, m, o, b in rankings if m not in SCORE_FREE and m != "iterative"]
    if not todo:
        return []
    requests = {(lab, b): _request(m, o, b) for lab, m, o, b in todo}
    full = {}
    for key, req in list(requests.items()):
        try:
            full[key] = rank(scores, req)
        except ValueError as exc:  # RankError / ScoresError: e.g. a method this scores file cannot serve
            requests.pop(key)
            if skipped is not None:
                skipped.append(f"{key[0]} at k={key[1]}: {exc}")
    gen = torch.Generator().manual_seed(seed)
    by_domain = [torch.nonzero(scores.sample_mask(d)).flatten() for d in scores.domains]
    overlaps: dict = defaultdict(list)
    taus: dict = defaultdict(list)
    failed: dict = defaultdict(int)
    for _ in tqdm(range(n_resamples), desc="ranking stability", unit="resample", disable=not progress):
        index = torch.cat([m[torch.randint(len(m), (len(m),), generator=gen)] for m in by_domain])
        sample = scores.select(index)
        for key, req in requests.items():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    plan = rank(sample, req)
                except RankError:
                    failed[key] += 1
                    overlaps[key].append(0.0)
                    continue
            overlaps[key].append(top_k_overlap(full[key].remove, plan.remove))
            a, b = _score_column(full[key].columns), _score_column(plan.columns)
            if a is not None and b is not None:
                pairs = [(x, y) for x, y in zip(a, b) if x is not None and y is not None]
                tau = kendall_tau([p[0] for p in pairs], [p[1] for p in pairs])
                if np.isfinite(tau):
                    taus[key].append(tau)
    out = []
    for (lab, m, _, b) in todo:
        key = (lab, b)
        if key not in requests:
            continue
        t = taus.get(key)
        out.append(Stability(lab, m, b, float(np.mean(overlaps[key])), float(np.std(overlaps[key])),
                             float(np.mean(t)) if t else None, float(np.std(t)) if t else None,
                             n_resamples, failed[key], full[key].remove))
    return out


def stability_claim(stability: list[Stability], series: list[Series]) -> str:
    """Check "domain-aware rankings are the most stable in the ranking-sensitive regime" on the data.

    At each budget, rankings are ordered by mean top-k overlap (ties: mean Kendall tau), both
    rounded to 3 decimals. The claim holds at a budget when the best domain-aware ranking is at
    least as stable as the best other one (a tie counts as jointly most stable).
    """
    if not stability:
        return "Not checked: no score-based ranking could be bootstrapped (no scores file, or only score-free methods)."
    by_budget: dict[int, list[Stability]] = defaultdict(list)
    for s in stability:
        by_budget[s.budget].append(s)
    if not any(s.method == "domain" for s in stability):
        return "Not checked: the study has no domain-aware ranking."
    sensitive = sorted({b.budget for se in series for b in se.budgets if b.regime == RANKING})

    def describe(budgets: list[int]) -> tuple[int, str]:
        """Budgets where a domain-aware ranking is the most stable (ties count: jointly most stable)."""
        hits, parts = 0, []
        for b in budgets:
            key = lambda s: (round(s.overlap, 3), round(s.tau, 3) if s.tau is not None else -2.0)  # noqa: E731
            mine = [s for s in by_budget[b] if s.method == "domain"]
            others = [s for s in by_budget[b] if s.method != "domain"]
            if not mine:
                continue
            best_mine = max(mine, key=key)
            best_other = max(others, key=key) if others else None
            hits += best_other is None or key(best_mine) >= key(best_other)
            parts.append(f"k={b}: {best_mine.label} {best_mine.overlap:.2f}/{_tau(best_mine)}"
                         + (f" vs {best_other.label} {best_other.overlap:.2f}/{_tau(best_other)}" if best_other else ""))
        return hits, "; ".join(parts)

    if not sensitive:
        checked = sorted(b for b, items in by_budget.items() if any(s.method == "domain" for s in items))
        hits, detail = describe(checked)
        return ("Cannot be checked as stated: no budget is ranking-sensitive. Over all budgets, a "
                f"domain-aware ranking is the most stable (or tied) at {hits} of {len(checked)} budgets "
                f"(best domain-aware vs best other ranking, mean top-k overlap/Kendall tau: {detail}).")
    checked = [b for b in sensitive if any(s.method == "domain" for s in by_budget.get(b, []))]
    if not checked:
        return "Not checked: no domain-aware ranking was bootstrapped at the ranking-sensitive budgets."
    hits, detail = describe(checked)
    verdict = "holds" if hits == len(checked) else ("does not hold" if hits == 0 else "holds only in part")
    return (f"The claim {verdict}: at the ranking-sensitive budgets a domain-aware ranking is the most "
            f"stable (or tied) at {hits} of {len(checked)} (best domain-aware vs best other ranking, mean "
            f"top-k overlap/Kendall tau: {detail}).")


def _tau(s: Stability) -> str:
    return "–" if s.tau is None else f"{s.tau:.2f}"


__all__ = ["ALPHA", "RULE", "STRUCTURE_METHODS", "BudgetStats", "Comparison", "Series", "Stability",
           "analyze", "budget_stats", "ranking_stability", "stability_claim"]
