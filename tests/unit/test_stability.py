"""Ranking stability (one implementation for `rank` and the report) on hand-built Scores."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from depthprune.ranking.methods import rank
from depthprune.ranking.plan import RankRequest
from depthprune.ranking.stability import (
    Stability,
    compare_at_budget,
    ranking_column,
    ranking_stability,
    resample_index,
    stability_claim,
)
from depthprune.reporting.regimes import analyze, ranking_sensitive
from depthprune.scoring.scores import Scores
from depthprune.statistics import kendall_tau
from tests.unit.test_regimes import _first, _row

L, N = 10, 40


def _scores(noisy_cos: dict, noisy_abl: dict, protected=(), protected_noise=0.0, n: int = N,
            flip: bool = True) -> Scores:
    """Cosine per layer: a fixed ladder (reversed for general) plus per-sample noise in the domains of
    ``noisy_cos`` (and in the protected layers); ablation damage: a ladder plus noise in ``noisy_abl``."""
    gen = torch.Generator().manual_seed(1)
    domains = ["general" if i % 2 else "math" for i in range(n)]
    ladder = torch.linspace(0.5, 0.95, L, dtype=torch.float64)
    sums = torch.zeros(n, 2, 4, L, 1, dtype=torch.float64)
    abl = torch.zeros(n, L, dtype=torch.float64)
    for i, d in enumerate(domains):
        own = ladder.flip(0) if d == "general" and flip else ladder
        sums[i, 0, :, :, 0] = own + noisy_cos.get(d, 0.0) * torch.randn(L, generator=gen, dtype=torch.float64)
        for p in protected:
            sums[i, 0, :, p, 0] += protected_noise * torch.randn(1, generator=gen, dtype=torch.float64)
        abl[i] = 1.0 + torch.linspace(0.0, 1.0, L, dtype=torch.float64) \
            + noisy_abl.get(d, 0.0) * torch.randn(L, generator=gen, dtype=torch.float64)
    return Scores(model_id="t", num_layers=L, max_span=1, sample_ids=[f"s{i}" for i in range(n)],
                  sample_domains=domains, sums=sums, counts=torch.ones(n, 4, dtype=torch.int64),
                  protected_layers=list(protected), base_nll=torch.ones(n, dtype=torch.float64), ablation_nll=abl)


# Bug 3 of issue 15: each test failed on the old `regimes.ranking_stability` (tau 0.96, 1.0, 1.0).
def test_domain_tau_is_over_the_removable_layers_only():
    scores = _scores({}, {}, protected=(0, 1, 2), protected_noise=0.5)  # noise only in protected layers
    (s,) = ranking_stability(scores, [("domain:math", "domain", {"domain": "math"}, 2)], n_resamples=10)
    assert s.tau == (1.0, 1.0, 1.0) and s.column == "cos[math]" and s.layers == L - 3


def test_contrast_tau_reads_the_contrast_score():
    scores = _scores({"general": 1.0}, {})  # cos[math] exact, the contrast score moves with general
    (s,) = ranking_stability(scores, [("contrast:math", "contrast", {"domain": "math"}, 2)], n_resamples=10)
    assert s.column == "contrast score" and s.tau[0] < 0.95


def test_ablation_without_domain_tau_reads_the_weighted_damage():
    scores = _scores({}, {"math": 0.5})  # dNLL[general] exact, the weighted damage moves with math
    (s,) = ranking_stability(scores, [("ablation", "ablation", {}, 2)], n_resamples=10)
    assert s.column == "dNLL[weighted]" and s.tau[0] < 0.95


def test_tau_is_the_brute_force_value_over_the_same_resamples():
    scores = _scores({"math": 0.2, "general": 0.2}, {}, protected=(0,))
    req = RankRequest("mixed", 3)
    (s,) = ranking_stability(scores, [("mixed", "mixed", {}, 3)], n_resamples=8, seed=4)
    full = rank(scores, req)
    name, entries = ranking_column(full)
    assert name == "z[mixed]" and entries == list(range(1, L))
    gen = torch.Generator().manual_seed(4)
    taus, overlaps = [], []
    for _ in range(8):
        plan = rank(scores.select(resample_index(scores, None, gen)), req)
        taus.append(kendall_tau([full.columns[name][i] for i in entries], [plan.columns[name][i] for i in entries]))
        overlaps.append(len(set(plan.remove) & set(full.remove)) / 3)
    assert s.taus == pytest.approx(taus) and s.overlaps == pytest.approx(overlaps)
    assert s.overlap[0] == pytest.approx(np.mean(overlaps)) and s.same == np.mean([o == 1 for o in overlaps])


def test_stability_is_perfect_without_noise_and_lower_with_it():
    rankings = [("domain:math", "domain", {"domain": "math"}, 3), ("block-influence", "block-influence", {}, 3),
                ("last", "last", {}, 3), ("iterative", "iterative", {}, 3)]
    exact = ranking_stability(_scores({}, {}, flip=False), rankings, n_resamples=10)
    assert [s.label for s in exact] == ["domain:math", "block-influence"]  # score-free and model-needing left out
    assert all(s.overlap == (1.0, 1.0, 1.0) and s.tau[0] == pytest.approx(1.0) for s in exact)
    noisy = ranking_stability(_scores({"math": 0.3, "general": 0.3}, {}, flip=False), rankings, n_resamples=20)
    by = {s.label: s for s in noisy}
    assert by["domain:math"].overlap[0] < 1.0
    assert by["domain:math"].tau[0] < by["block-influence"].tau[0]  # half the samples move more than all


def test_only_the_named_domains_are_resampled():
    scores = _scores({"math": 0.3, "general": 0.3}, {})
    (s,) = ranking_stability(scores, [("domain:math", "domain", {"domain": "math"}, 2)], 10, domains=["general"])
    assert s.same == 1.0  # resampling the other domain never moves a math-aware plan
    (s,) = ranking_stability(scores, [("domain:math", "domain", {"domain": "math"}, 2)], 10, domains=["math"])
    assert s.same < 1.0


def test_rankings_that_cannot_be_reranked_are_named():
    skipped: list[str] = []
    out = ranking_stability(_scores({}, {}), [("angular-block", "angular-block", {}, 3),
                                              ("domain:math", "domain", {"domain": "math"}, 3)],
                            n_resamples=3, skipped=skipped)
    assert [s.label for s in out] == ["domain:math"]
    assert len(skipped) == 1 and skipped[0].startswith("angular-block at k=3:") and "max-span" in skipped[0]


def test_most_stable_is_decided_with_intervals_not_ties():
    scores = _scores({"general": 0.4}, {})
    both = [("domain:math", "domain", {"domain": "math"}, 2), ("domain:general", "domain", {"domain": "general"}, 2),
            ("block-influence", "block-influence", {}, 2), ("mixed", "mixed", {}, 2)]
    items = ranking_stability(scores, both, n_resamples=30)
    outcome, mine, other = compare_at_budget(items)
    assert outcome == "more" and mine.label == "domain:math"  # exact math scores: never moves
    calm = ranking_stability(_scores({}, {}), both, n_resamples=10)
    assert compare_at_budget(calm)[0] == "indistinguishable"  # all 1.00: a tie is a tie, not a win
    series = analyze([_row("domain:math", "domain", 2, _first(100)), _row("mixed", "mixed", 2, _first(60))])
    assert series[0].budgets[0].regime == "ranking-sensitive"
    assert ranking_sensitive(series) == {2}
    assert stability_claim(items, ranking_sensitive(series)).startswith("The claim holds: at the ranking-sensitive budgets")
    assert stability_claim(calm, {2}).startswith("The claim is not supported (no difference resolved)")
    assert stability_claim(calm, set()).startswith("Cannot be checked as stated: no budget is ranking-sensitive")


def test_contrast_and_based_methods_count_as_domain_aware():
    scores = _scores({"math": 0.3, "general": 0.3}, {})
    items = ranking_stability(scores, [("contrast:math", "contrast", {"domain": "math"}, 2),
                                       ("spaced:domain", "spaced", {"base": "domain", "domain": "math"}, 2),
                                       ("ablation:general", "ablation", {"domain": "general"}, 2),
                                       ("spaced", "spaced", {"base": "mixed"}, 2)], n_resamples=3)
    assert [s.target for s in items] == ["math", "math", "general", None]


def test_the_claim_compares_score_based_rankings_only():
    """"Domain-aware rankings are the most stable" is about rankings: a structure-aware plan (spaced,
    angular-block) on either side used to decide it ("less" here, and "more" from spaced on a domain base)."""
    def item(label: str, method: str, options: dict, overlaps: list[float]) -> Stability:
        return Stability(label, method, options, 2, [3, 4], None, 0, overlaps=overlaps * 10)
    dom = item("domain:math", "domain", {"domain": "math"}, [1.0, 1.0, 0.5])
    mixed = item("mixed", "mixed", {}, [0.5, 0.5, 0.5])
    block = item("angular-block", "angular-block", {}, [1.0, 1.0, 1.0])
    assert compare_at_budget([dom, mixed, block])[0] == "more"
    spaced = item("spaced:domain", "spaced", {"base": "domain", "domain": "math"}, [1.0, 1.0, 1.0])
    worse = item("contrast:math", "contrast", {"domain": "math"}, [0.5, 0.5, 0.5])
    assert compare_at_budget([worse, mixed, spaced])[0] == "indistinguishable"

