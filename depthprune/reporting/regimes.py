"""Regime analysis of a study's results: at each budget, do the rankings matter, or does structure?

Methods are grouped by family (:mod:`depthprune.ranking.families`): *score-based rankings*,
*structure-aware* methods and *references*. Within a family, variants whose removed layers are
identical are one **plan** (an "arm"): they are the same pruned model, and the sweep evaluates it
once, so their per-sample results are identical; counting them twice would make the tests below
treat one model as two. An arm is named by all the labels that share it ("a = b").

For every series (eval set x domain x healing recipe) and budget, on the samples every method has:

* **rankings differ** — an omnibus test of "every distinct score-based plan has the same accuracy
  (mean answer NLL when accuracy was not measured)": the spread among the plans (best minus worst)
  against its bootstrap law over **records** (:func:`depthprune.statistics.spread_test`).
  Resampling whole records carries whatever ties the plans within a record — plans that share most of
  their removed layers answer alike — so the test holds its size however the plans overlap (Cochran's
  Q and Friedman, used before, assume the plans exchangeable within a record and over-reject when
  they overlap: docs/regimes.md). The same bootstrap gives the spread's simultaneous 95% interval, so
  "no difference" has a size. Pairwise exact McNemar (Wilcoxon signed-rank on NLL) tests,
  Holm-corrected over the pairs of that budget, say which plans differ;
* **structure dominates** — the structure-aware plans, averaged per sample, beat *every*
  score-based plan: the largest over rankings of the one-sided sign-flip p-value of the per-sample
  difference (:func:`depthprune.statistics.sign_flip_greater`: exact on accuracy at any n,
  monotone in the evidence; an intersection-union test: beating the best ranking means beating each
  one, so no correction over the rankings is needed). If the family's mean beats the best ranking,
  so does its best member: this is a test of "the best structure-aware method beats the best
  ranking" that does not rest on one variant's luck (docs: regimes.md argues the choice).

**The rule** (:func:`rule`): the two p-values of every budget of every series in the report form
ONE family, Holm-corrected at :data:`ALPHA`; a budget is *structure-dominated* when its structure
test rejects, else *ranking-sensitive* when its omnibus test rejects, else *converged*. So the
chance that a study in which all methods are equal gets any label other than converged is at
most ALPHA, however many budgets and series it has and however its plans overlap (measured, with
plans that share layers: :mod:`depthprune.reporting.simulate`). The bootstrap has enough resamples
that its smallest p-value is a fifth of the strictest Holm threshold (:func:`resamples_for`).
References never enter a test. Ties in the leader are listed, never broken silently; the label
does not depend on who leads.

Consecutive budgets with the same label form a regime. The paper's map (arXiv 2603.20275) is
ranking-sensitive -> converged -> structure-dominated from low to high budget; :func:`analyze`
says whether the data show exactly that, and otherwise what they show.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from itertools import combinations

import numpy as np

from depthprune.ranking.families import RANKINGS, REFERENCES, STRUCTURE_AWARE, family, members, target_domain
from depthprune.statistics import (
    binomial_two_sided,
    holm,
    mean_ci,
    sign_flip_greater,
    smallest_pair_p,
    spread_test,
    wilcoxon_paired,
)
from depthprune.study.metrics import METRICS, Metric, compared_on
from depthprune.study.store import ResultRow, treatment

ALPHA = 0.05
RANKING, CONVERGED, STRUCTURE = "ranking-sensitive", "converged", "structure-dominated"
PAPER_ORDER = (RANKING, CONVERGED, STRUCTURE)


def rule() -> str:
    """The regime rule in words, each family with its registered methods (the report's header)."""
    return (
        f"Families: score-based rankings ({', '.join(members(RANKINGS))} and any other score-reading method), "
        f"structure-aware ({', '.join(members(STRUCTURE_AWARE))}), references "
        f"({', '.join(members(REFERENCES))}: shown, never tested). Variants that remove the same layers are one "
        f"plan. A budget is structure-dominated when the structure-aware plans, averaged per sample, beat every score-based plan "
        f"beyond noise (one-sided sign-flip test of the paired differences against each, exact on accuracy; on "
        f"answer NLL when accuracy was not measured), so their best method beats the best ranking; otherwise "
        f"ranking-sensitive when the score-based plans differ among themselves (their spread, best minus worst, "
        f"against its bootstrap over records, which keeps plans that share layers as alike as they are); "
        f"otherwise converged, with that spread and its simultaneous 95% interval. Both p-values of every budget "
        f"of every series are Holm-corrected as one family at alpha = {ALPHA}, so a study where all methods are "
        f"equal gets a label other than converged with probability at most {ALPHA}. Consecutive budgets with "
        f"the same label form a regime.")


@dataclass
class Arm:
    """One distinct plan of one family at one budget: the labels sharing it and its per-sample values."""

    labels: list[str]
    methods: list[str]
    targets: list[str | None]     # the domain each label is domain-aware for (None: not domain-aware)
    family: str
    removed: list[int]
    value: float                  # mean of ``values``: accuracy (0-1) or mean answer NLL (nats/token)
    nll: float | None             # the stored mean NLL (breaks accuracy ties)
    values: np.ndarray            # per-sample 0/1 correctness or NLL on the budget's paired samples

    @property
    def name(self) -> str:
        return " = ".join(self.labels)


@dataclass
class Pair:
    """Two score-based plans at one budget: ``diff`` = value(a) - value(b), with its tests."""

    a: str
    b: str
    diff: float
    a_only: int | None            # McNemar discordant counts (None on NLL)
    b_only: int | None
    p: float
    p_holm: float = 1.0


@dataclass
class BudgetStats:
    """Every family at one budget of one series, with the two tests the label rests on."""

    budget: int
    fraction: float
    metric: str                                     # a name of depthprune.study.metrics.METRICS
    n_paired: int                                   # samples every method has
    accuracy: dict[str, float | None]               # per label, as stored
    acc_ci: dict[str, tuple[float, float] | None]   # the stored 95% Wilson interval
    nll: dict[str, float | None]
    methods: dict[str, str]                         # label -> method name
    rankings: list[Arm]                             # distinct plans per family, best first
    structure: list[Arm]
    references: list[Arm]
    p_rankings: float | None                        # omnibus across rankings (None: < 2 plans)
    p_structure: float | None                       # structure-aware mean beats every ranking (None: untestable)
    spread: float | None                            # best - worst ranking plan, metric units (None: no ranking)
    spread_ci: tuple[float, float] | None
    pairs: list[Pair]                               # ranking-sensitive budgets: every pair of ranking plans
    p_rankings_adj: float = 1.0                     # Holm over the whole report
    p_structure_adj: float = 1.0
    regime: str = CONVERGED

    @property
    def spec(self) -> Metric:
        """The metric compared here (:mod:`depthprune.study.metrics`)."""
        return METRICS[self.metric]

    @property
    def higher_is_better(self) -> bool:
        return self.spec.higher_is_better

    @property
    def leader(self) -> Arm | None:
        """The plan the label rests on: the best structure-aware plan when structure dominates,
        else the best score-based plan (None if the budget has neither)."""
        pool = self.structure if self.regime == STRUCTURE else self.rankings or self.structure
        return pool[0] if pool else None

    @property
    def tied(self) -> list[str]:
        """Every label whose plan ties the leader exactly (accuracy and NLL): ties are shown, not broken."""
        lead = self.leader
        if lead is None:
            return []
        pool = self.structure if self.regime == STRUCTURE else self.rankings or self.structure
        return [lab for arm in pool if (arm.value, arm.nll) == (lead.value, lead.nll) for lab in arm.labels]

    @property
    def p(self) -> float:
        """The Holm-adjusted p-value of the test the label rests on (converged: the omnibus test's)."""
        return self.p_structure_adj if self.regime == STRUCTURE else self.p_rankings_adj

    @property
    def margin(self) -> float | None:
        """How much better the structure-aware plans' mean is than the best ranking (metric units,
        positive = structure better; what the structure test is about); None without both families."""
        if not self.structure or not self.rankings:
            return None
        d = float(np.mean([a.value for a in self.structure])) - self.rankings[0].value
        return self.spec.gain(d)

    @property
    def resolved(self) -> list[Pair]:
        """Ranking pairs that differ beyond noise (Holm within the budget); tested only where the
        budget is ranking-sensitive (the omnibus test gates them)."""
        return [p for p in self.pairs if p.p_holm < ALPHA]


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
    tests: int = 0                                   # size of the Holm family (the whole report)
    resamples: int = 0                               # bootstrap resamples of the records per budget

    @property
    def healed(self) -> bool:
        return self.heal != "null"

    @property
    def name(self) -> str:
        return f"{self.eval_set} / {self.domain}{f' ({treatment(self.heal)})' if self.healed else ''}"


# ----------------------------------------------------------------------------- one budget
def _arms(rows: list[ResultRow], ids: list[str], metric: Metric) -> list[Arm]:
    """Distinct plans among ``rows`` (one family), best first; identical removed sets with identical
    per-sample results are one plan (different results, e.g. from non-deterministic healing, stay apart)."""
    which = metric.sample_index
    groups: dict[tuple, list[ResultRow]] = {}
    for r in sorted(rows, key=lambda r: r.label):
        column = [s[which] for s in r.samples]
        if len(column) == len(ids) and all(s[0] == i for s, i in zip(r.samples, ids)):  # the usual case
            values = np.array(column, dtype=np.float64)
        else:
            per = {s[0]: s[which] for s in r.samples}
            values = np.array([float(per[i]) for i in ids])
        groups.setdefault((tuple(r.removed), values.tobytes()), []).append((r, values))
    arms = []
    for group in groups.values():
        values = group[0][1]
        arms.append(Arm([r.label for r, _ in group], [r.method for r, _ in group],
                        [target_domain(r.method, r.options) for r, _ in group], family(group[0][0].method),
                        list(group[0][0].removed), float(values.mean()) if len(values) else float("nan"),
                        group[0][0].nll, values))
    def key(a: Arm) -> tuple:
        nll = a.nll if a.nll is not None else np.inf
        # 0/1 outcomes tie often: the stored answer NLL breaks the tie
        return (metric.sort_key(a.value), nll if metric.binary else 0.0, a.name)
    return sorted(arms, key=key)


def _pairs(arms: list[Arm], metric: Metric) -> list[Pair]:
    out = []
    for a, b in combinations(arms, 2):
        if metric.binary:
            a_only, b_only = int(((a.values == 1) & (b.values == 0)).sum()), int(((a.values == 0) & (b.values == 1)).sum())
            out.append(Pair(a.name, b.name, a.value - b.value, a_only, b_only, binomial_two_sided(a_only, a_only + b_only)))
        else:
            out.append(Pair(a.name, b.name, a.value - b.value, None, None, wilcoxon_paired(a.values, b.values)))
    for pair, p in zip(out, holm([p.p for p in out])):
        pair.p_holm = p
    return out


def _structure_p(structure: list[Arm], rankings: list[Arm], higher: bool, seed: int = 0) -> float | None:
    """p-value of "the structure-aware plans, on average per sample, beat every ranking plan": the
    largest over rankings r of the one-sided sign-flip p of mean_s(s_i) - r_i (an intersection-union
    test: beating the best ranking means beating each; exact on accuracy, monotone in the evidence:
    :func:`~depthprune.statistics.sign_flip_greater`). None without both families."""
    if not structure or not rankings:
        return None
    family_mean = np.mean([s.values for s in structure], 0)
    sign = 1.0 if higher else -1.0  # NLL: lower is better
    diffs = np.stack([sign * (family_mean - r.values) for r in rankings], 1)
    return float(np.max(sign_flip_greater(diffs, seed=seed)))


def _budget(rows: list[ResultRow], seed: int) -> BudgetStats:
    """The plans and the structure test of one budget of one series (the omnibus test and the spread
    come from :func:`_spread`, the label from :func:`analyze`)."""
    metric = compared_on(rows)
    which = metric.sample_index
    tested = [r for r in rows if family(r.method) != REFERENCES] or rows
    have = {r.label: {s[0] for s in r.samples if s[which] is not None} for r in rows}
    ids = sorted(set.intersection(*(have[r.label] for r in tested)))
    usable = [r for r in rows if have[r.label].issuperset(ids)]  # a reference short of samples is left out
    by_family = {f: _arms([r for r in usable if family(r.method) == f], ids, metric)
                 for f in (RANKINGS, STRUCTURE_AWARE, REFERENCES)}
    rankings = by_family[RANKINGS]
    return BudgetStats(
        budget=rows[0].budget, fraction=rows[0].budget_fraction, metric=metric.name, n_paired=len(ids),
        accuracy={r.label: r.accuracy for r in rows},
        acc_ci={r.label: (r.ci_low, r.ci_high) if r.ci_low is not None else None for r in rows},
        nll={r.label: r.nll for r in rows}, methods={r.label: r.method for r in rows},
        rankings=rankings, structure=by_family[STRUCTURE_AWARE], references=by_family[REFERENCES],
        p_rankings=None,
        p_structure=_structure_p(by_family[STRUCTURE_AWARE], rankings, metric.higher_is_better, seed) if ids else None,
        spread=None, spread_ci=None, pairs=[])


def _omnibus_testable(b: BudgetStats) -> bool:
    return len(b.rankings) > 1 and b.n_paired > 0


def _spread(b: BudgetStats, resamples: int, seed: int) -> None:
    """The rankings-differ test and the spread with its interval, from one bootstrap over records
    (:func:`~depthprune.statistics.spread_test`): valid however the plans are correlated."""
    if _omnibus_testable(b):
        matrix = np.stack([a.values for a in b.rankings], 1)
        spread, low, high, p = spread_test(matrix, n_resamples=resamples, seed=seed)
        # a few records fool any bootstrap (3 NLL differences of one sign: p = 1/(resamples + 1)); the
        # omnibus never claims more than the strongest single pair's exact test (the larger of two
        # p-values is valid when either is, and at n = 600 the floor is far below the bootstrap's p)
        b.spread, b.spread_ci = spread, (low, high)
        b.p_rankings = max(p, smallest_pair_p(matrix, binary=b.spec.binary))
    elif len(b.rankings) == 1 and len(b.rankings[0].labels) > 1:  # every ranking removes the same layers
        b.spread, b.spread_ci = 0.0, (0.0, 0.0)  # (one ranking method alone has no spread to speak of: None)


def arm_ci(b: BudgetStats, arm: Arm) -> tuple[float, float] | None:
    """95% interval of a plan's value at ``b``: the stored Wilson interval of its accuracy, or a t
    interval of its mean answer NLL over the paired samples."""
    if b.spec.binary:
        return b.acc_ci.get(arm.labels[0])
    return mean_ci(arm.values)[1:] if len(arm.values) else None


# ----------------------------------------------------------------------------- a series
def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def _span(first: float, last: float) -> str:
    return _pct(first) if first == last else f"{_pct(first)}-{_pct(last)}"


def size(b: BudgetStats, x: float | None) -> str:
    """A value of ``b``'s metric in words: accuracy points or nats."""
    return b.spec.in_words(x)


def _who(arm: Arm, domain: str) -> str:
    aware = [lab for lab, t in zip(arm.labels, arm.targets) if t == domain]
    return arm.name + (f", domain-aware for {domain}" if aware else "")


def _detail(series: Series, name: str, first: float, last: float) -> str:
    budgets = [b for b in series.budgets if first <= b.fraction <= last]
    if name == CONVERGED:
        widest = max((b for b in budgets if b.spread_ci), key=lambda b: b.spread_ci[1], default=None)
        return "" if widest is None else f" (rankings within {size(widest, widest.spread_ci[1])} at 95%)"
    leaders = list(dict.fromkeys(_who(b.leader, series.domain) for b in budgets if b.leader))
    if name == STRUCTURE:
        return f" (structure-aware plans beat every ranking; best {'; '.join(leaders)})"
    return f" (leader{'s' if len(leaders) > 1 else ''} {'; '.join(leaders)})"


def _verdict(series: Series) -> tuple[bool, str]:
    if not series.budgets:
        return False, "No budget has two or more methods to compare."
    labels = [r[0] for r in series.runs]
    where = "; ".join(f"{name} at {_span(a, b)}{_detail(series, name, a, b)}" for name, a, b in series.runs)
    peak = max((b for b in series.budgets if b.spread is not None), key=lambda b: b.spread, default=None)
    extra = "" if peak is None else (f" The spread among the score-based rankings peaks at {_pct(peak.fraction)}: "
                                     f"{size(peak, peak.spread)} (95% CI {size(peak, peak.spread_ci[0])} to "
                                     f"{size(peak, peak.spread_ci[1])}).")
    if labels == [CONVERGED]:
        return False, (f"No regimes: at no budget do the score-based rankings differ beyond noise or does a "
                       f"structure-aware method beat them all (n = {series.n} samples per method; Holm over the "
                       f"{series.tests} tests of the report).{extra}")
    if tuple(labels) == PAPER_ORDER:
        return True, f"The paper's three regimes appear in its order: {where}.{extra}"
    missing = [r for r in PAPER_ORDER if r not in labels]
    text = f"The paper's three regimes do not appear as stated. Found, from low to high budget: {where}."
    return False, text + (f" Absent: {', '.join(missing)}." if missing else "") + extra


def _runs(budgets: list[BudgetStats]) -> list[tuple[str, float, float]]:
    runs: list[list] = []
    for b in budgets:
        if runs and runs[-1][0] == b.regime:
            runs[-1][2] = b.fraction
        else:
            runs.append([b.regime, b.fraction, b.fraction])
    return [tuple(r) for r in runs]


#: The bootstrap's p-values go down to 1 / (resamples + 1): with m tests in the Holm family the
#: smallest threshold is ALPHA / m, so the resamples are at least RESOLUTION * m / ALPHA.
RESOLUTION = 5


def resamples_for(tests: int, at_least: int = 1000) -> int:
    """Bootstrap resamples for a Holm family of ``tests`` p-values: ``at_least``, and enough that the
    smallest p the bootstrap can give is 1/RESOLUTION of the strictest Holm threshold."""
    return max(at_least, math.ceil(RESOLUTION * tests / ALPHA))


def analyze(rows: list[ResultRow], resamples: int = 1000, seed: int = 0) -> list[Series]:
    """Regime analysis of every series in ``rows`` (see the module docstring for the rule).

    Budgets where fewer than two methods were evaluated are skipped, and so are rows of the
    unpruned model (budget 0: the baseline, not a competitor). At least ``resamples`` bootstrap
    resamples of the records give each budget's rankings-differ p-value and spread interval
    (:func:`resamples_for` raises the number with the size of the report's Holm family). Series are
    ordered by eval set, domain, then unhealed before healed.
    """
    groups: dict[tuple, dict[int, list[ResultRow]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if r.budget > 0:
            groups[(r.eval_set, r.domain, json.dumps(r.heal, sort_keys=True))][r.budget].append(r)
    out = []
    for (eval_set, domain, heal), by_budget in sorted(groups.items(), key=lambda g: (g[0][0], g[0][1], g[0][2] != "null", g[0][2])):
        stats = [_budget(rs, seed) for _, rs in sorted(by_budget.items()) if len({r.label for r in rs}) > 1]
        n = max((r.n for rs in by_budget.values() for r in rs), default=0)
        out.append(Series(eval_set, domain, heal, n, stats))
    budgets = [b for s in out for b in s.budgets]
    family_size = sum(_omnibus_testable(b) for b in budgets) + sum(b.p_structure is not None for b in budgets)
    resamples = resamples_for(family_size, resamples)
    for b in budgets:
        _spread(b, resamples, seed)
    tests = [(b, kind) for s in out for b in s.budgets for kind in ("rankings", "structure")
             if getattr(b, f"p_{kind}") is not None]
    for (b, kind), p in zip(tests, holm([getattr(b, f"p_{kind}") for b, kind in tests])):
        setattr(b, f"p_{kind}_adj", p)
    for s in out:
        s.resamples = resamples
        for b in s.budgets:
            b.regime = STRUCTURE if b.p_structure_adj < ALPHA else RANKING if b.p_rankings_adj < ALPHA else CONVERGED
            if b.regime == RANKING:  # the omnibus test rejected: which pairs differ (Holm within the budget)
                b.pairs = _pairs(b.rankings, b.spec)
        s.tests, s.runs = len(tests), _runs(s.budgets)
        s.matches_paper, s.verdict = _verdict(s)
    return out


def _resolved(p: Pair, higher: bool) -> dict:
    a_better = (p.diff > 0) == higher
    return {"better": p.a if a_better else p.b, "worse": p.b if a_better else p.a, "diff": abs(p.diff),
            "p_holm": p.p_holm}


def ranking_sensitive(series: list[Series]) -> set[int]:
    """The budgets that are ranking-sensitive in some series (where ranking stability matters)."""
    return {b.budget for s in series for b in s.budgets if b.regime == RANKING}


def regimes_json(series: list[Series]) -> dict:
    """The machine-readable verdicts (``RUN_DIR/regimes.json``): per series and budget the label, the
    leader, the spread among the rankings with its 95% interval and the Holm-adjusted p-value the
    label rests on, plus the details (see docs: regimes.md)."""
    def budget(b: BudgetStats) -> dict:
        lead = b.leader
        return {"budget": b.budget, "fraction": b.fraction, "label": b.regime,
                "leader": lead.labels[0] if lead else None, "leader_family": lead.family if lead else None,
                "leaders": b.tied, "spread": b.spread, "spread_ci": list(b.spread_ci) if b.spread_ci else None,
                "p": b.p, "metric": b.metric, "n_paired": b.n_paired,
                "p_rankings": b.p_rankings, "p_rankings_adjusted": b.p_rankings_adj,
                "p_structure": b.p_structure, "p_structure_adjusted": b.p_structure_adj,
                "structure_margin": b.margin,
                "plans": {f: [{"labels": a.labels, "removed": a.removed, "value": a.value} for a in arms]
                          for f, arms in ((RANKINGS, b.rankings), (STRUCTURE_AWARE, b.structure),
                                          (REFERENCES, b.references))},
                "ranking_pairs_resolved": [_resolved(p, b.higher_is_better) for p in b.resolved]}
    return _finite({"alpha": ALPHA, "rule": rule(), "tests": series[0].tests if series else 0,
            "resamples": series[0].resamples if series else 0,
            "series": [{"eval_set": s.eval_set, "domain": s.domain, "healed": s.healed, "heal": json.loads(s.heal),
                        "n": s.n, "regimes": [list(r) for r in s.runs], "matches_paper": s.matches_paper,
                        "verdict": s.verdict, "budgets": [budget(b) for b in s.budgets]} for s in series]})


def _finite(obj):  # noqa: ANN001, ANN202 - JSON has no NaN: an undefined number is null
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return float(obj) if isinstance(obj, np.floating) else obj


__all__ = ["ALPHA", "CONVERGED", "PAPER_ORDER", "RANKING", "STRUCTURE", "rule", "Arm", "BudgetStats", "Pair",
           "Series", "analyze", "arm_ci", "ranking_sensitive", "regimes_json", "size"]
