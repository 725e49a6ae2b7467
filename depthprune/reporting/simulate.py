"""Simulated studies with known truth, analysed by exactly the code the report runs.

    python -m depthprune.reporting.simulate            # the size/power table (docs: regimes.md), ~17 min of one core
    python -m depthprune.reporting.simulate --small    # CI: about a minute; exit 1 outside its bounds

A simulated study is what a sweep of a 36-layer model (Qwen3-VL-4B's depth; layers 0-2 protected)
would store: 18 methods (13 score-based rankings, 3 structure-aware, 2 references, the demo's
variants), 8 budgets from 6% to 50%, two domains ("math", "general") of ``n`` eval samples each,
unhealed, as the :class:`~depthprune.study.store.ResultRow` objects the store returns, analysed by
:func:`depthprune.reporting.regimes.analyze`. Accuracy: ``base_accuracy(k)`` (70% at the lowest
budget down to 30% at the highest), plus ``effect`` where a scenario plants one.

Two models of plans and answers (``Scenario.overlap``):

* ``independent``: each method removes its own random layers (no two plans alike); sample i has a
  difficulty d_i ~ N(0, sigma^2) shared by every method and budget, and method m at budget k gets it
  right with probability sigmoid(theta_mk + d_i), independently of the other methods given d_i.
  ``sigma = 1.5`` makes two equal methods disagree on 0.71 of the samples an independent pair would
  (at 60% accuracy). NLL: 2 - 2 * accuracy + a shared sample effect + method noise (both N(0, 0.5^2)).
* a key of :data:`OVERLAPS` (``demo``, ``heavy``, ``steep``): plans share layers as rankings of one
  model do, identical sets answer identically and plans sharing more layers agree more
  (:class:`Overlap`); ``demo`` is calibrated to ``depthprune demo --quick`` (docs: regimes.md).

Scenarios: ``null`` (every method equal everywhere), ``ranking`` (one score-based ranking,
domain:math, ``effect`` better at one budget of the math series), ``structure`` (every
structure-aware method ``effect`` better than every ranking and reference there); with
``metric="nll"`` the effect is in nats of answer NLL and accuracy is not measured. Measured: the
fraction of studies with any label other than converged (``null``), and the fraction whose planted
budget gets the planted label (the others).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy.optimize import brentq
from scipy.special import expit, ndtri
from scipy.stats import binom
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
METHOD_OF = {variant_label(m, o): m for m, o in METHODS}


@dataclass(frozen=True)
class Overlap:
    """How plans share layers and how records' answers follow the layers removed (the ``layers`` model).

    Plans: a study draws one consensus redundancy score per removable layer; each score-based method
    ranks by it plus its own noise (standard deviation ``eta``) and removes its top k, so plans nest
    across budgets and share layers as real rankings do (smaller ``eta``: more overlap, more identical
    plans). Structure-aware methods: ``uniform`` evenly spaced, ``spaced`` its own top k with no two
    adjacent, ``angular-block`` the contiguous block of best total score; references: ``random`` and
    ``last``. Answers: record i under the plan removing the set P is right when
    ``z_iP + theta_P > 0``, ``z_iP = sqrt(c0) d_i + sqrt(lam) sum_{l in P} u_il / sqrt(k) + sqrt(1 - c0 - lam) w_iP``
    (d, u, w independent N(0, 1); w_iP one draw per record and distinct set). So two plans answer
    with latent correlation c0 + lam * r when they share the fraction r of their layers, and
    identically when their sets are identical; theta_P = Phi^-1(accuracy) makes the accuracy exactly the
    planted one. Answer NLL follows the same structure on its own draws (variance 0.5, as the
    ``independent`` model's)."""

    eta: float
    c0: float
    lam: float


#: ``demo``: fitted to ``depthprune demo --quick`` (docs: regimes.md, "Calibration"); ``heavy``: plans
#: share more of their layers and answers follow the layers more strongly; ``steep`` (a sensitivity
#: check, not in the table): heavy overlap with the steepest slope the demo's record bootstrap allows.
OVERLAPS = {"demo": Overlap(eta=0.5, c0=0.40, lam=0.37), "heavy": Overlap(eta=0.2, c0=0.30, lam=0.60),
            "steep": Overlap(eta=0.2, c0=0.05, lam=0.95)}
TABLE_OVERLAPS = ("independent", "demo", "heavy")


@dataclass(frozen=True)
class Scenario:
    """What is true in a simulated study. ``kind``: "null", "ranking" or "structure"; the effect
    (accuracy as a fraction, or nats of NLL with ``metric="nll"``) is planted at ``budget`` in the
    ``domain`` series: for ``winner``'s plan ("ranking") or for every structure-aware plan
    ("structure"). ``overlap``: "independent" (every method its own random plan and, given the
    record, independent answers) or a key of :data:`OVERLAPS` (plans share layers; answers follow them)."""

    kind: str = "null"
    effect: float = 0.10
    budget: int = 4
    domain: str = "math"
    winner: str = "domain:math"
    metric: str = "accuracy"
    overlap: str = "independent"


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


@lru_cache(maxsize=None)
def _wilson(k: int, n: int) -> tuple[float, float]:
    return tuple(float(x) for x in proportion_confint(k, n, method="wilson"))


def _row(scenario: Scenario, method: str, options: dict, lab: str, budget: int, domain: str, removed,
         correct: np.ndarray, nll: np.ndarray, ids: list[str]) -> ResultRow:
    measured = scenario.metric == "accuracy"
    n, k = len(ids), int(correct.sum())
    low, high = _wilson(k, n) if measured else (None, None)
    samples = list(zip(ids, correct.tolist() if measured else [None] * n, nll.tolist()))
    return ResultRow(cell=cell_key(method, options, budget, None), method=method, label=lab, options=options,
                     budget=budget, budget_fraction=budget / NUM_LAYERS, removed=[int(x) for x in removed], heal=None,
                     eval_set="sim", domain=domain, n=n, accuracy=k / n if measured else None, ci_low=low,
                     ci_high=high, nll=float(nll.mean()), samples=samples, seconds=0.0)


def _independent(scenario: Scenario, n: int, rng: np.random.Generator, sigma: float) -> list[ResultRow]:
    """Every method its own random plan; given the record's difficulty, answers independent."""
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
                rows.append(_row(scenario, method, options, lab, budget, domain, removed, correct, nll, ids))
    return rows


def _spaced(score: np.ndarray, layers: np.ndarray, k: int) -> tuple[int, ...] | None:
    """Greedy: the best-scored layers with no two adjacent (None: k of them do not fit)."""
    chosen: list[int] = []
    for i in np.argsort(-score, kind="stable"):
        layer = int(layers[i])
        if all(abs(layer - c) > 1 for c in chosen):
            chosen.append(layer)
            if len(chosen) == k:
                return tuple(sorted(chosen))
    return None


def plans(overlap: Overlap, rng: np.random.Generator) -> dict[tuple[str, int], tuple[int, ...]]:
    """Removed layers per (label, budget) of one simulated study under ``overlap`` (see :class:`Overlap`);
    a method that cannot meet a budget (``spaced`` at half the layers) has no entry, as a sweep skips it."""
    layers = np.arange(PROTECTED, NUM_LAYERS)
    consensus = rng.normal(size=layers.size)
    out: dict[tuple[str, int], tuple[int, ...]] = {}
    for method, options in METHODS:
        lab = variant_label(method, options)
        score = consensus + overlap.eta * rng.normal(size=layers.size)
        for k in BUDGETS:
            if method == "uniform":
                removed = tuple(int(x) for x in np.unique(np.round(np.linspace(layers[0], layers[-1], k))))
            elif method == "spaced":
                removed = _spaced(score, layers, k)
            elif method == "angular-block":
                start = int(np.argmax(np.convolve(score, np.ones(k), "valid")))
                removed = tuple(int(x) for x in layers[start:start + k])
            elif method == "random":
                removed = tuple(sorted(int(x) for x in rng.choice(layers, k, replace=False)))
            elif method == "last":
                removed = tuple(range(NUM_LAYERS - k, NUM_LAYERS))
            else:
                removed = tuple(sorted(int(x) for x in layers[np.argsort(-score, kind="stable")[:k]]))
            if removed is not None:
                out[(lab, k)] = removed
    return out


def _layered(scenario: Scenario, n: int, rng: np.random.Generator) -> list[ResultRow]:
    """Plans share layers and answers follow the layers removed (:class:`Overlap`)."""
    ov = OVERLAPS[scenario.overlap]
    removed_by = plans(ov, rng)
    rows = []
    for domain in DOMAINS:
        ids = [f"{domain}-{i}" for i in range(n)]
        d, u = rng.normal(size=n), rng.normal(size=(n, NUM_LAYERS))
        a, v = rng.normal(size=n), rng.normal(size=(n, NUM_LAYERS))
        own: dict[tuple[int, ...], tuple[np.ndarray, np.ndarray]] = {}  # per distinct set: w, and NLL's w

        def latent(base: np.ndarray, per_layer: np.ndarray, w: np.ndarray, removed: tuple[int, ...]) -> np.ndarray:
            layer = per_layer[:, list(removed)].sum(1) / np.sqrt(len(removed))
            return np.sqrt(ov.c0) * base + np.sqrt(ov.lam) * layer + np.sqrt(1 - ov.c0 - ov.lam) * w

        for budget in BUDGETS:
            winners = {removed_by[(lab, budget)] for lab, b in removed_by if b == budget
                       and _planted(scenario, lab, METHOD_OF[lab], budget, domain)}
            for method, options in METHODS:
                lab = variant_label(method, options)
                removed = removed_by.get((lab, budget))
                if removed is None:
                    continue
                if removed not in own:
                    own[removed] = (rng.normal(size=n), rng.normal(size=n))
                effect = scenario.effect if removed in winners else 0.0  # one set, one model: one truth
                acc = base_accuracy(budget) + (effect if scenario.metric == "accuracy" else 0.0)
                correct = (latent(d, u, own[removed][0], removed) + ndtri(acc) > 0).astype(int)
                nll = 2 - 2 * base_accuracy(budget) + np.sqrt(0.5) * latent(a, v, own[removed][1], removed) \
                    - (effect if scenario.metric == "nll" else 0.0)
                rows.append(_row(scenario, method, options, lab, budget, domain, removed, correct, nll, ids))
    return rows


def simulate_study(scenario: Scenario, n: int, rng: np.random.Generator, sigma: float = SIGMA) -> list[ResultRow]:
    """One study's stored rows (both domains, every method and budget), drawn under ``scenario``
    (``sigma``: the shared difficulty of the ``independent`` model)."""
    if scenario.overlap == "independent":
        return _independent(scenario, n, rng, sigma)
    return _layered(scenario, n, rng)


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
    """Simulate ``studies`` studies; returns the rate (0-1) of each :func:`outcome`, the number of
    studies and (``counts``) how many studies had each outcome."""
    stream = [seed, n, ("null", "ranking", "structure").index(scenario.kind),
              ("accuracy", "nll").index(scenario.metric)]
    if scenario.overlap != "independent":  # (the independent model keeps the stream it always had)
        stream.append(1 + list(OVERLAPS).index(scenario.overlap))
    rng = np.random.default_rng(stream)
    counts = {"any_label": 0, "hit": 0, "elsewhere": 0}
    desc = f"{scenario.kind}/{scenario.metric}/{scenario.overlap} n={n}"
    for _ in progress(range(studies), desc=desc, unit="study", disable=not show):
        for key, value in outcome(scenario, simulate_study(scenario, n, rng, sigma), resamples).items():
            counts[key] += value
    return {**{k: v / studies for k, v in counts.items()}, "studies": studies, "counts": counts}


def overlap_summary(overlap: str, studies: int = 200, seed: int = 0) -> str:
    """How much the score-based plans of :func:`plans` overlap under ``overlap``: per budget, the mean
    number of distinct plans among the 13 rankings and the mean fraction of layers two distinct ones share."""
    rng = np.random.default_rng([seed, 99])
    labels = [lab for lab, m in METHOD_OF.items() if family(m) == RANKINGS]
    counts: dict[int, list[int]] = {k: [] for k in BUDGETS}
    shared: dict[int, list[float]] = {k: [] for k in BUDGETS}
    for _ in range(studies):
        removed = plans(OVERLAPS[overlap], rng)
        for k in BUDGETS:
            sets = sorted({removed[(lab, k)] for lab in labels})
            counts[k].append(len(sets))
            shared[k] += [len(set(a) & set(b)) / k for i, a in enumerate(sets) for b in sets[i + 1:]]
    ov = OVERLAPS[overlap]
    return (f"{overlap} (eta {ov.eta}, latent correlation {ov.c0} + {ov.lam} x shared fraction): " + "; ".join(
        f"k={k}: {np.mean(counts[k]):.1f} plans, {np.mean(shared[k]):.2f} shared" for k in BUDGETS))


def _interval(count: int, studies: int) -> str:
    low, high = proportion_confint(count, studies, method="wilson")
    return f"{100 * count / studies:.1f}% [{100 * low:.1f}, {100 * high:.1f}]"


@dataclass(frozen=True)
class Row:
    """One row of the size/power table: a scenario at n records per domain, over ``studies`` studies."""

    scenario: Scenario
    n: int
    studies: int
    required: str = "–"


def rows_for(null: int, power: int, nll_null: int, nll_power: int) -> list[Row]:
    """The full table's rows: size at n = 100 and 600 and power at n = 600 for every overlap model, on
    accuracy (the targets) and on answer NLL."""
    out = [Row(Scenario("null", overlap=o), n, null, "<= 5%") for o in TABLE_OVERLAPS for n in (100, 600)]
    out += [Row(Scenario("ranking", overlap=o), 600, power, ">= 80%") for o in TABLE_OVERLAPS]
    out += [Row(Scenario("structure", budget=16, overlap=o), 600, power, ">= 80%") for o in TABLE_OVERLAPS]
    out += [Row(Scenario("null", metric="nll", overlap=o), 600, nll_null, "<= 5%") for o in ("independent", "demo")]
    out += [Row(Scenario("ranking", effect=0.15, metric="nll", overlap=o), 600, nll_power)
            for o in ("independent", "demo")]
    return out


#: ``--small`` (CI): few studies, chosen to run in about a minute, each row with the bound it can promise.
SMALL = [Row(Scenario("null", overlap="demo"), 100, 50, "<= 5%"),
         Row(Scenario("null", overlap="heavy"), 100, 50, "<= 5%"),
         Row(Scenario("ranking", overlap="independent"), 600, 15, ">= 80%"),
         Row(Scenario("ranking", overlap="demo"), 600, 15, ">= 80%"),
         Row(Scenario("structure", budget=16, overlap="demo"), 600, 15, ">= 80%")]


def bound(row: Row, chance: float = 0.005) -> int:
    """What ``row.studies`` studies can promise about a target: a rule whose size is 5% labels more than
    this many null studies with probability below ``chance``; one whose power is 80% finds fewer than
    this many planted effects with probability below ``chance`` (binomial tails)."""
    if row.scenario.kind == "null":
        return int(binom.ppf(1 - chance, row.studies, 0.05))
    return int(binom.ppf(chance, row.studies, 0.80))


def table(rows: list[Row], seed: int, sigma: float, resamples: int, check: bool = False) -> tuple[str, list[str]]:
    """The size/power table in Markdown, each rate with its 95% Wilson interval over the studies, and
    (``check``) the rows whose count falls outside what their number of studies can promise (:func:`bound`)."""
    lines = ["| scenario | overlap | metric | n per domain | studies | measured | rate [95% CI] | required |",
             "|---|---|---|---|---|---|---|---|"]
    failed = []
    for row in rows:
        sc = row.scenario
        r = run(sc, row.n, row.studies, seed, sigma, resamples)["counts"]
        key = "any_label" if sc.kind == "null" else "hit"
        effect = f"+{100 * sc.effect:.0f} points" if sc.metric == "accuracy" else f"-{sc.effect:g} nats"
        name = "null: all methods equal" if sc.kind == "null" else f"{sc.kind}: {effect} at k={sc.budget} ({sc.domain})"
        what = {"null": "any label other than converged", "ranking": "planted budget ranking-sensitive",
                "structure": "planted budget structure-dominated"}[sc.kind]
        lines.append(f"| {name} | {sc.overlap} | {sc.metric} | {row.n} | {row.studies} | {what} | "
                     f"{_interval(r[key], row.studies)} | {row.required} |")
        if sc.kind != "null":
            lines.append(f"| (same studies) | | | {row.n} | {row.studies} | another budget not converged | "
                         f"{_interval(r['elsewhere'], row.studies)} | – |")
        if check and row.required != "–":
            limit = bound(row)
            ok = r[key] <= limit if sc.kind == "null" else r[key] >= limit
            note = (f"{name}, {sc.overlap}, n={row.n}: {r[key]} of {row.studies} "
                    f"({'at most' if sc.kind == 'null' else 'at least'} {limit} expected for {row.required})")
            if not ok:
                failed.append(note)
    return "\n".join(lines), failed


def main(argv: list[str] | None = None) -> None:
    """Print the size/power table. ``--small`` (CI): a few studies per row, and exit status 1 when a row
    falls outside what that many studies can promise for its target (:func:`bound`)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--small", action="store_true", help="a few studies per row, checked against their bounds (CI)")
    ap.add_argument("--null-studies", type=int, default=400)
    ap.add_argument("--power-studies", type=int, default=150)
    ap.add_argument("--nll-null-studies", type=int, default=150)
    ap.add_argument("--nll-power-studies", type=int, default=100)
    ap.add_argument("--sigma", type=float, default=SIGMA, help="shared difficulty of the independent model")
    ap.add_argument("--resamples", type=int, default=1000, help="least bootstrap resamples per budget")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    rows = SMALL if args.small else rows_for(args.null_studies, args.power_studies, args.nll_null_studies,
                                             args.nll_power_studies)
    started = time.perf_counter()
    text, failed = table(rows, args.seed, args.sigma, args.resamples, check=args.small)
    overlaps = "\n".join(f"- {overlap_summary(o, seed=args.seed)}" for o in TABLE_OVERLAPS[1:])
    print(f"{len(METHODS)} methods ({sum(family(m) == RANKINGS for m, _ in METHODS)} score-based), {len(BUDGETS)} "
          f"budgets {list(BUDGETS)} of {NUM_LAYERS} layers, 2 domains, sigma = {args.sigma}, seed {args.seed}; "
          f"{time.perf_counter() - started:.0f} s\n\nOverlap of the 13 score-based plans:\n{overlaps}\n\n{text}")
    if failed:
        print("simulate --small: outside what these studies can promise:\n  " + "\n  ".join(failed), file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
