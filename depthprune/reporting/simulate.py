"""Simulated studies with known truth, analysed by exactly the code the report runs.

    python -m depthprune.reporting.simulate            # the size/power table (docs: regimes.md), ~1 h on one busy core
    python -m depthprune.reporting.simulate --small    # a quick look (CI), 1-2 min

A simulated study is what a sweep of a 36-layer model (Qwen3-VL-4B's depth; layers 0-2 protected)
would store: 18 methods (13 score-based rankings, 3 structure-aware, 2 references, the demo's
variants), 8 budgets from 6% to 50%, two domains ("math", "general") of ``n`` eval samples each,
unhealed, as the :class:`~depthprune.study.store.ResultRow` objects the store returns. Each method
removes its own layers (no two plans alike), and is analysed by :func:`depthprune.reporting.regimes.analyze`.

Truth: sample i of a domain has a difficulty d_i ~ N(0, sigma^2) shared by every method and budget
(what makes paired tests strong), and method m at budget k gets it right with probability
sigmoid(theta_mk + d_i), theta chosen so that the population accuracy is exactly the planted one:
``base_accuracy(k)`` (70% at the lowest budget down to 30% at the highest), plus ``effect`` where a
scenario plants one. ``sigma = 1.5`` makes two equal methods disagree on 0.71 of the samples an
independent pair would (at 60% accuracy), as distinct plans of the quick demo do (0.65-0.76).
Per-sample NLL: 2 - 2 * accuracy + a shared sample effect + method noise (both N(0, 0.5^2)), minus
``effect`` nats where an effect is planted (the NLL scenarios: accuracy not measured).

Scenarios: ``null`` (every method equal everywhere), ``ranking`` (one score-based ranking,
domain:math, ``effect`` better at one budget of the math series), ``structure`` (every
structure-aware method ``effect`` better than every ranking and reference there). Measured: the
fraction of studies with any label other than converged (``null``), and the fraction whose planted
budget gets the planted label (the others).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy.optimize import brentq
from scipy.special import expit
from statsmodels.stats.proportion import proportion_confint

from depthprune.ranking.families import RANKINGS, STRUCTURE_AWARE, family
from depthprune.reporting.regimes import CONVERGED, RANKING, STRUCTURE, analyze
from depthprune.settings import progress
from depthprune.study.config import variant_label
from depthprune.study.store import ResultRow, cell_key

NUM_LAYERS, PROTECTED = 36, 3
BUDGETS = (2, 4, 7, 9, 11, 13, 16, 18)
DOMAINS = ("general", "math")
SIGMA = 1.5
WEIGHTS = ({"general": 0.5, "math": 0.5}, {"general": 0.25, "math": 0.75}, {"general": 0.75, "math": 0.25})
METHODS: tuple[tuple[str, dict], ...] = (
    *(("domain", {"domain": d}) for d in ("math", "general")),
    *(("domain", {"domain": d, "token_group": "last"}) for d in ("math", "general")),
    *(("mixed", {"weights": w}) for w in WEIGHTS),
    *(("contrast", {"domain": d}) for d in ("math", "general")),
    *(("ablation", {"domain": d}) for d in ("math", "general")),
    ("block-influence", {}), ("iterative", {"base": "mixed"}),
    ("spaced", {"base": "mixed"}), ("uniform", {}), ("angular-block", {}),
    ("random", {"seed": 0}), ("last", {}),
)


@dataclass(frozen=True)
class Scenario:
    """What is true in a simulated study. ``kind``: "null", "ranking" or "structure"; the effect
    (accuracy as a fraction, or nats of NLL with ``metric="nll"``) is planted at ``budget`` in the
    ``domain`` series: for ``winner`` ("ranking") or for every structure-aware method ("structure")."""

    kind: str = "null"
    effect: float = 0.10
    budget: int = 4
    domain: str = "math"
    winner: str = "domain:math"
    metric: str = "accuracy"


def base_accuracy(budget: int) -> float:
    """Accuracy (0-1) of every method at ``budget`` when nothing is planted: 70% at the lowest budget
    falling linearly to 30% at the highest."""
    return 0.70 - 0.40 * (BUDGETS.index(budget) / (len(BUDGETS) - 1))


@lru_cache(maxsize=None)
def theta(accuracy: float, sigma: float) -> float:
    """The logit offset whose population accuracy E[sigmoid(theta + sigma Z)], Z ~ N(0, 1), is ``accuracy``."""
    z, w = np.polynomial.hermite_e.hermegauss(80)
    w = w / w.sum()
    return brentq(lambda t: float((w * expit(t + sigma * z)).sum()) - accuracy, -30, 30)


def _planted(scenario: Scenario, lab: str, method: str, budget: int, domain: str) -> float:
    if scenario.kind == "null" or (budget, domain) != (scenario.budget, scenario.domain):
        return 0.0
    if scenario.kind == "ranking":
        return scenario.effect if lab == scenario.winner else 0.0
    return scenario.effect if family(method) == STRUCTURE_AWARE else 0.0


def simulate_study(scenario: Scenario, n: int, rng: np.random.Generator, sigma: float = SIGMA) -> list[ResultRow]:
    """One study's stored rows (both domains, every method and budget), drawn under ``scenario``."""
    rows = []
    removable = np.arange(PROTECTED, NUM_LAYERS)
    for domain in DOMAINS:
        difficulty = rng.normal(0.0, sigma, n)
        sample_effect = rng.normal(0.0, 0.5, n)
        ids = [f"{domain}-{i}" for i in range(n)]
        for budget in BUDGETS:
            taken: set[tuple[int, ...]] = set()
            for method, options in METHODS:
                lab = variant_label(method, options)
                while True:  # every method its own plan: identical plans would be one model
                    removed = tuple(sorted(int(x) for x in rng.choice(removable, budget, replace=False)))
                    if removed not in taken:
                        taken.add(removed)
                        break
                effect = _planted(scenario, lab, method, budget, domain)
                acc = base_accuracy(budget) + (effect if scenario.metric == "accuracy" else 0.0)
                correct = (rng.random(n) < expit(theta(acc, sigma) + difficulty)).astype(int)
                nll = 2 - 2 * base_accuracy(budget) + sample_effect + rng.normal(0.0, 0.5, n) \
                    - (effect if scenario.metric == "nll" else 0.0)
                measured = scenario.metric == "accuracy"
                k = int(correct.sum())
                low, high = proportion_confint(k, n, method="wilson") if measured else (None, None)
                rows.append(ResultRow(
                    cell=cell_key(method, options, budget, None), method=method, label=lab, options=options,
                    budget=budget, budget_fraction=budget / NUM_LAYERS, removed=list(removed), heal=None,
                    eval_set="sim", domain=domain, n=n, accuracy=k / n if measured else None, ci_low=low,
                    ci_high=high, nll=float(nll.mean()),
                    samples=[(i, int(c) if measured else None, float(x)) for i, c, x in zip(ids, correct, nll)],
                    seconds=0.0))
    return rows


def outcome(scenario: Scenario, rows: list[ResultRow], resamples: int = 1000) -> dict[str, bool]:
    """Analyse one study as the report does; ``any_label``: some budget is not converged; ``hit``:
    the planted budget got the planted label; ``elsewhere``: a budget other than the planted one is
    not converged."""
    labels = {(s.domain, b.budget): b.regime for s in analyze(rows, resamples=resamples) for b in s.budgets}
    want = {"null": CONVERGED, "ranking": RANKING, "structure": STRUCTURE}[scenario.kind]
    planted = (scenario.domain, scenario.budget)
    return {"any_label": any(v != CONVERGED for v in labels.values()),
            "hit": labels.get(planted) == want,
            "elsewhere": any(v != CONVERGED for k, v in labels.items() if k != planted)}


def run(scenario: Scenario, n: int, studies: int, seed: int = 0, sigma: float = SIGMA,
        resamples: int = 1000, show: bool = True) -> dict[str, float]:
    """Simulate ``studies`` studies; returns the rate (0-1) of each :func:`outcome` and its count."""
    rng = np.random.default_rng([seed, n, ("null", "ranking", "structure").index(scenario.kind),
                                 ("accuracy", "nll").index(scenario.metric)])
    counts = {"any_label": 0, "hit": 0, "elsewhere": 0}
    desc = f"{scenario.kind}/{scenario.metric} n={n}"
    for _ in progress(range(studies), desc=desc, unit="study", disable=not show):
        for key, value in outcome(scenario, simulate_study(scenario, n, rng, sigma), resamples).items():
            counts[key] += value
    return {**{k: v / studies for k, v in counts.items()}, "studies": studies}


def _interval(rate: float, studies: int) -> str:
    low, high = proportion_confint(round(rate * studies), studies, method="wilson")
    return f"{100 * rate:.1f}% [{100 * low:.1f}, {100 * high:.1f}]"


def table(studies: dict[str, int], ns: tuple[int, ...], seed: int, sigma: float, resamples: int) -> str:
    """The size/power table in Markdown, each rate with its 95% Wilson interval over the studies."""
    lines = ["| scenario | metric | n per domain | studies | measured | rate [95% CI] | required |",
             "|---|---|---|---|---|---|---|"]
    specs = [(Scenario("null"), "any label other than converged", "<= 5%"),
             (Scenario("ranking"), "planted budget ranking-sensitive", ">= 80% at n = 600"),
             (Scenario("structure", budget=16), "planted budget structure-dominated", ">= 80%"),
             (Scenario("null", metric="nll"), "any label other than converged", "<= 5%"),
             (Scenario("ranking", effect=0.15, metric="nll"), "planted budget ranking-sensitive", "–")]
    for scenario, what, required in specs:
        for n in ns:
            count = studies["null" if scenario.kind == "null" else "power"]
            r = run(scenario, n, count, seed, sigma, resamples)
            key = "any_label" if scenario.kind == "null" else "hit"
            effect = (f"+{100 * scenario.effect:.0f} points" if scenario.metric == "accuracy"
                      else f"-{scenario.effect:g} nats")
            name = ("null: all methods equal" if scenario.kind == "null" else
                    f"{scenario.kind}: {effect} at k={scenario.budget} ({scenario.domain})")
            lines.append(f"| {name} | {scenario.metric} | {n} | {count} | {what} | {_interval(r[key], count)} "
                         f"| {required} |")
            if scenario.kind != "null":
                lines.append(f"| (same studies) | | {n} | {count} | another budget not converged | "
                             f"{_interval(r['elsewhere'], count)} | – |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Print the size/power table (``--small``: few studies, for CI)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--small", action="store_true", help="20 null and 10 power studies per row (CI)")
    ap.add_argument("--null-studies", type=int, default=1000)
    ap.add_argument("--power-studies", type=int, default=300)
    ap.add_argument("--n", type=int, nargs="+", default=[100, 600])
    ap.add_argument("--sigma", type=float, default=SIGMA)
    ap.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples of each spread interval")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    studies = {"null": 20, "power": 10} if args.small else {"null": args.null_studies, "power": args.power_studies}
    started = time.perf_counter()
    text = table(studies, tuple(args.n), args.seed, args.sigma, args.resamples)
    print(f"{len(METHODS)} methods ({sum(family(m) == RANKINGS for m, _ in METHODS)} score-based), {len(BUDGETS)} "
          f"budgets {list(BUDGETS)} of {NUM_LAYERS} layers, 2 domains, sigma = {args.sigma}, seed {args.seed}; "
          f"{time.perf_counter() - started:.0f} s\n\n{text}")


if __name__ == "__main__":
    main()
