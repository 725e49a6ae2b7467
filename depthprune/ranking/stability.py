"""Ranking stability: how much a plan depends on which calibration samples were drawn.

The one implementation behind `depthprune rank` (its stability lines) and the report (its
stability table, plot and the check of the paper's claim "domain-aware rankings are the most
stable in the ranking-sensitive regime").

One resample redraws calibration samples with replacement within each domain (by default every
domain; `rank` resamples one domain at a time to say which domain's samples move the plan); all
rankings are re-ranked on the same resamples, so their stabilities are paired. Per resample:

* **top-k overlap** of the removed set with the full-data plan (a resample that cannot be ranked
  counts 0), and whether the set is exactly the same;
* **Kendall tau** between the full-data and the resampled values of the score the method itself
  ranks by (:func:`ranking_column`: ``cos[d]`` for ``domain``, the contrast score for ``contrast``,
  ``dNLL[weighted]`` for ``ablation`` without a domain, ...), over the removable layers only
  (protected layers never move a plan, and including them inflates tau).

Means come with 95% percentile bootstrap intervals over the resamples: the Monte Carlo error of the
stability estimate at this number of resamples. "Most stable" is decided on paired differences of
the top-k overlap with such intervals, never on ties at the third decimal (:func:`stability_claim`).
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from dataclasses import dataclass, field, fields
from functools import cached_property
from typing import Any

import numpy as np
import torch

from depthprune.ranking.families import RANKINGS, family, target_domain
from depthprune.ranking.methods import METHODS, rank
from depthprune.ranking.plan import Plan, RankError, RankRequest
from depthprune.scoring.scores import Scores
from depthprune.settings import progress as progress_bar
from depthprune.statistics import bootstrap_mean_ci, kendall_tau, top_k_overlap

LEVEL = 0.95


@dataclass
class Stability:
    """Bootstrap agreement of one ranking (label at budget) with its full-data plan."""

    label: str
    method: str
    options: dict[str, Any]
    budget: int
    full_removed: list[int]
    column: str | None                  # the score column tau is computed on (None: none known)
    layers: int                         # removable entries tau is computed over
    overlaps: list[float] = field(default_factory=list)   # per resample, 0..1 (failed: 0)
    taus: list[float | None] = field(default_factory=list)  # per resample (None: undefined or failed)
    failed: int = 0                     # resamples that could not be ranked

    @property
    def resamples(self) -> int:
        return len(self.overlaps)

    @property
    def target(self) -> str | None:
        """The domain this ranking is domain-aware for (None: not domain-aware)."""
        return target_domain(self.method, self.options)

    @property
    def same(self) -> float:
        """Fraction (0..1) of resamples that remove exactly the full-data plan's layers."""
        return float(np.mean([o == 1.0 for o in self.overlaps])) if self.overlaps else float("nan")

    @cached_property
    def overlap(self) -> tuple[float, float, float]:
        """(mean top-k overlap, 95% low, high)."""
        return bootstrap_mean_ci(self.overlaps)

    @cached_property
    def tau(self) -> tuple[float, float, float] | None:
        """(mean Kendall tau, 95% low, high) over the resamples where it is defined; None if nowhere."""
        values = [t for t in self.taus if t is not None]
        return bootstrap_mean_ci(values) if values else None


def _request(method: str, options: dict, budget: int) -> RankRequest:
    names = {f.name for f in fields(RankRequest)} - {"method", "budget"}
    return RankRequest(method=method, budget=budget, **{k: v for k, v in options.items() if k in names})


def ranking_column(plan: Plan) -> tuple[str, list[int]] | None:
    """The score column ``plan``'s method ranks by and the entries it ranks over (removable layers;
    for ``angular-block`` the start layers of fully removable blocks). None for methods without one
    (score-free methods, and methods this module does not know)."""
    req, k = plan.request, plan.budget
    name = {"domain": f"cos[{req.get('domain')}]", "mixed": "z[mixed]", "block-influence": "BI",
            "contrast": "contrast score", "ablation": f"dNLL[{req.get('domain') or 'weighted'}]",
            "spaced": f"z[{req.get('base', 'mixed')}]", "angular-block": f"angle[span {k}]"}.get(plan.method)
    if name is None or name not in plan.columns:
        return None
    free = set(range(plan.num_layers)) - set(plan.protected)
    if plan.method == "angular-block":
        entries = [s for s in range(plan.num_layers - k + 1) if all(s + j in free for j in range(k))]
    else:
        entries = sorted(free)
    return name, entries


def _tau(full: Plan, plan: Plan, column: tuple[str, list[int]] | None) -> float | None:
    if column is None or column[0] not in plan.columns:
        return None
    name, entries = column
    a, b = full.columns[name], plan.columns[name]
    pairs = [(a[i], b[i]) for i in entries if a[i] is not None and b[i] is not None]
    tau = kendall_tau([p[0] for p in pairs], [p[1] for p in pairs])
    return tau if np.isfinite(tau) else None


def resample_index(scores: Scores, domains: list[str] | None, gen: torch.Generator) -> torch.Tensor:
    """One bootstrap resample of sample indices: the samples of each domain in ``domains`` (every
    domain if None) redrawn with replacement within the domain, the others kept as they are."""
    parts = []
    for d in scores.domains:
        mine = torch.nonzero(scores.sample_mask(d)).flatten()
        parts.append(mine[torch.randint(len(mine), (len(mine),), generator=gen)]
                     if domains is None or d in domains else mine)
    return torch.cat(parts)


def ranking_stability(scores: Scores, rankings: list[tuple[str, str, dict, int]], n_resamples: int = 50,
                      seed: int = 0, progress: bool = False, skipped: list[str] | None = None,
                      domains: list[str] | None = None) -> list[Stability]:
    """Bootstrap stability of each ``(label, method, options, budget)`` ranking, in input order.

    ``domains``: whose calibration samples are resampled (None: every domain). Methods whose spec
    does not read scores (score-free ones, and those that measure the model) are left out;
    a ranking that cannot be ranked from ``scores`` at all is left out with its reason appended
    to ``skipped``.
    """
    out: list[Stability] = []
    full: dict[int, Plan] = {}
    for lab, m, opts, b in rankings:
        if m in METHODS and not METHODS[m].reads_scores:
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # allow_deepstack warns once per rank call
                plan = rank(scores, _request(m, opts, b))
        except ValueError as exc:  # RankError / ScoresError: e.g. a method this scores file cannot serve
            if skipped is not None:
                skipped.append(f"{lab} at k={b}: {exc}")
            continue
        column = ranking_column(plan)
        full[len(out)] = plan
        out.append(Stability(lab, m, dict(opts), b, plan.remove, column[0] if column else None,
                             len(column[1]) if column else 0))
    columns = {i: ranking_column(p) for i, p in full.items()}
    gen = torch.Generator().manual_seed(seed)
    for _ in progress_bar(range(n_resamples if out else 0), desc="ranking stability", unit="resample",
                          disable=not progress):
        sample = scores.select(resample_index(scores, domains, gen))
        for i, s in enumerate(out):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    plan = rank(sample, _request(s.method, s.options, s.budget))
            except RankError:  # e.g. a resample without tokens of the group: not the same plan
                s.failed += 1
                s.overlaps.append(0.0)
                s.taus.append(None)
                continue
            s.overlaps.append(top_k_overlap(full[i].remove, plan.remove))
            s.taus.append(_tau(full[i], plan, columns[i]))
    return out


# ----------------------------------------------------------------------------- the paper's claim
def _better(a: Stability, b: Stability, level: float) -> tuple[float, float, float]:
    """Paired difference of mean top-k overlap a - b over the shared resamples, with its interval."""
    return bootstrap_mean_ci(np.asarray(a.overlaps) - np.asarray(b.overlaps), level=level)


def compare_at_budget(items: list[Stability]) -> tuple[str, Stability | None, Stability | None]:
    """Are domain-aware rankings the most stable among ``items`` (one budget, paired resamples)?

    Only score-based rankings take part (structure-aware methods such as ``spaced`` or
    ``angular-block`` are stability-tabled but are not rankings the claim is about). Returns
    ``(outcome, best domain-aware, best other)``, outcome one of "more" (some domain-aware
    ranking has a higher mean top-k overlap than every other ranking: each paired 95% interval
    above 0, Bonferroni over the domain-aware rankings), "less" (some other ranking beats every
    domain-aware one, likewise), "indistinguishable", or "n/a" (one side missing).
    """
    items = [s for s in items if family(s.method) == RANKINGS]  # the claim is about rankings: not spaced, ...
    mine = [s for s in items if s.target is not None]
    others = [s for s in items if s.target is None]
    key = lambda s: s.overlap[0]  # noqa: E731 - for naming the best of each side only
    best_mine, best_other = max(mine, key=key, default=None), max(others, key=key, default=None)
    if not mine or not others:
        return "n/a", best_mine, best_other
    if any(all(_better(a, o, 1 - (1 - LEVEL) / len(mine))[1] > 0 for o in others) for a in mine):
        return "more", best_mine, best_other
    if any(all(_better(a, o, 1 - (1 - LEVEL) / len(others))[2] < 0 for a in mine) for o in others):
        return "less", best_mine, best_other
    return "indistinguishable", best_mine, best_other


def _ci(x: tuple[float, float, float] | None) -> str:
    return "–" if x is None else f"{x[0]:.2f} [{x[1]:.2f}, {x[2]:.2f}]"


def stability_claim(stability: list[Stability], ranking_sensitive: set[int]) -> str:
    """Check "domain-aware rankings are the most stable in the ranking-sensitive regime" on the data
    (:func:`compare_at_budget` at each of the ``ranking_sensitive`` budgets, the regime rule's:
    :func:`depthprune.reporting.regimes.ranking_sensitive`; at every budget, said so, when none is)."""
    if not stability:
        return "Not checked: no score-based ranking could be bootstrapped (no scores file, or only score-free methods)."
    if not any(s.target for s in stability):
        return "Not checked: the study has no domain-aware ranking that could be bootstrapped."
    by_budget: dict[int, list[Stability]] = defaultdict(list)
    for s in stability:
        by_budget[s.budget].append(s)
    sensitive = sorted(set(ranking_sensitive) & set(by_budget))
    budgets = sensitive or sorted(by_budget)
    results = {b: compare_at_budget(by_budget[b]) for b in budgets}
    checked = {b: r for b, r in results.items() if r[0] != "n/a"}
    if not checked:
        return "Not checked: no budget has both a domain-aware and another bootstrapped ranking."
    counts = {o: sum(r[0] == o for r in checked.values()) for o in ("more", "less", "indistinguishable")}
    detail = "; ".join(f"k={b}: {o}, {m.label} {_ci(m.overlap)} vs {x.label} {_ci(x.overlap)}"
                       for b, (o, m, x) in checked.items())
    tally = (f"a domain-aware ranking is more stable than every other ranking at {counts['more']} of {len(checked)} "
             f"budgets, less stable at {counts['less']}, indistinguishable at {counts['indistinguishable']} "
             f"(paired 95% intervals of the top-k overlap; best domain-aware vs best other: {detail}).")
    if not sensitive:
        return "Cannot be checked as stated: no budget is ranking-sensitive. Over all budgets, " + tally
    # "most stable" needs a resolved win; ties everywhere neither support nor refute it
    verdict = ("holds" if counts["more"] == len(checked)
               else "is not supported (no difference resolved)" if counts["more"] == 0 and counts["less"] == 0
               else "does not hold" if counts["more"] == 0 else "holds only in part")
    return f"The claim {verdict}: at the ranking-sensitive budgets " + tally


__all__ = ["Stability", "compare_at_budget", "ranking_column", "ranking_stability",
           "resample_index", "stability_claim"]
