"""Regime detection on synthetic rows whose answer is known."""

from __future__ import annotations

from depthprune.report.regimes import CONVERGED, RANKING, STRUCTURE, analyze
from depthprune.study.store import ResultRow

N = 120
METHODS = {"domain:math": "domain", "mixed": "mixed", "spaced": "spaced"}


def _row(label: str, budget: int, n_correct: int, nll: float | None = None, accuracy: bool = True) -> ResultRow:
    samples = [(f"s{i}", (1 if i < n_correct else 0) if accuracy else None,
                (nll if nll is not None else 1.0) + 0.01 * (i % 7)) for i in range(N)]
    acc = n_correct / N if accuracy else None
    return ResultRow(cell=f"{label}@{budget}", method=METHODS[label], label=label, options={},
                     budget=budget, budget_fraction=budget / 16, removed=list(range(budget)), heal=None,
                     eval_set="eval", domain="math", n=N, accuracy=acc, ci_low=None, ci_high=None,
                     nll=sum(s[2] for s in samples) / N, samples=samples, seconds=0.1)


def test_three_regimes_found_in_the_papers_order():
    rows = []
    for budget in (1, 2, 3):  # domain-aware clearly best
        rows += [_row("domain:math", budget, 110), _row("mixed", budget, 60), _row("spaced", budget, 60)]
    for budget in (4, 5, 6):  # identical
        rows += [_row(label, budget, 50) for label in METHODS]
    for budget in (7, 8):  # spaced clearly best
        rows += [_row("domain:math", budget, 20), _row("mixed", budget, 20), _row("spaced", budget, 70)]
    (series,) = analyze(rows)
    assert [b.regime for b in series.budgets] == [RANKING] * 3 + [CONVERGED] * 3 + [STRUCTURE] * 2
    assert [r[0] for r in series.runs] == [RANKING, CONVERGED, STRUCTURE]
    assert series.matches_paper and series.verdict.startswith("The paper's three regimes appear")
    low = series.budgets[0]
    assert low.leader == "domain:math" and sorted(low.beaten) == ["mixed", "spaced"]
    assert low.runner_up.other == "mixed" and (low.runner_up.leader_only, low.runner_up.other_only) == (50, 0)
    assert low.runner_up.p == 2 / 2 ** 50  # exact McNemar: 50 discordant pairs, all one way
    assert abs(low.spread_accuracy - (110 - 60) / N) < 1e-12
    assert series.budgets[-1].leader == "spaced"


def test_all_equal_states_no_regimes():
    rows = [_row(label, budget, 60) for budget in (1, 2, 3, 4) for label in METHODS]
    (series,) = analyze(rows)
    assert {b.regime for b in series.budgets} == {CONVERGED}
    assert not series.matches_paper and series.verdict.startswith("No regimes")
    assert all(c.p == 1.0 for b in series.budgets for c in b.comparisons)


def test_other_orders_are_reported_not_forced():
    rows = []
    for budget in (1, 2):  # equal at low budgets, domain-aware best at high ones: not the paper's map
        rows += [_row(label, budget, 60) for label in METHODS]
    for budget in (6, 8):
        rows += [_row("domain:math", budget, 100), _row("mixed", budget, 40), _row("spaced", budget, 10)]
    (series,) = analyze(rows)
    assert [r[0] for r in series.runs] == [CONVERGED, RANKING]
    assert not series.matches_paper
    assert "do not appear as stated" in series.verdict and "structure-dominated" in series.verdict
    assert "spaced is significantly worse" in series.verdict


def test_nll_only_uses_paired_bootstrap():
    rows = []
    for budget in (1, 2):
        rows += [_row("domain:math", budget, 0, nll=1.0, accuracy=False),
                 _row("mixed", budget, 0, nll=1.5, accuracy=False),
                 _row("spaced", budget, 0, nll=1.0, accuracy=False)]
    (series,) = analyze(rows)
    b = series.budgets[0]
    assert b.metric == "nll" and b.leader == "domain:math"  # ties on NLL go to the first label
    by_other = {c.other: c for c in b.comparisons}
    assert by_other["mixed"].test == "bootstrap-nll" and by_other["mixed"].significant
    assert abs(by_other["mixed"].nll_diff - 0.5) < 1e-9
    assert not by_other["spaced"].significant
    assert b.regime == RANKING


def _scores(noise: float, n: int = 20, layers: int = 8):
    import torch

    from depthprune.score.scores import Scores
    gen = torch.Generator().manual_seed(0)
    base = torch.linspace(0.5, 0.95, layers, dtype=torch.float64)  # layer 7 most redundant
    sums = torch.zeros(n, 2, 4, layers, 1, dtype=torch.float64)
    sums[:, 0, :, :, 0] = (base + noise * torch.randn(n, 1, layers, generator=gen, dtype=torch.float64))
    counts = torch.ones(n, 4, dtype=torch.int64)
    return Scores(model_id="synthetic", num_layers=layers, max_span=1, sample_ids=[f"s{i}" for i in range(n)],
                  sample_domains=["math" if i % 2 else "general" for i in range(n)], sums=sums, counts=counts)


def test_ranking_stability_is_perfect_without_noise_and_lower_with_it():
    from depthprune.report.regimes import ranking_stability, stability_claim
    rankings = [("domain:math", "domain", {"domain": "math"}, 3), ("block-influence", "block-influence", {}, 3),
                ("last", "last", {}, 3)]
    exact = ranking_stability(_scores(0.0), rankings, n_resamples=10)
    assert [s.label for s in exact] == ["domain:math", "block-influence"]  # score-free `last` skipped
    assert all(s.overlap == 1.0 and s.tau == 1.0 and s.full_removed == [5, 6, 7] for s in exact)
    noisy = ranking_stability(_scores(0.3), rankings, n_resamples=20)
    assert all(0.0 <= s.overlap < 1.0 and s.tau < 1.0 for s in noisy)
    # single-domain ranking on half the samples varies more than the pooled one
    by = {s.label: s for s in noisy}
    assert by["domain:math"].tau < by["block-influence"].tau
    claim = stability_claim(noisy, [])
    assert claim.startswith("Cannot be checked as stated: no budget is ranking-sensitive")
    assert "block-influence" in claim


def test_stability_claim_is_checked_at_ranking_sensitive_budgets():
    from depthprune.report.regimes import ranking_stability, stability_claim
    rows = [_row("domain:math", 3, 110), _row("mixed", 3, 60), _row("spaced", 3, 60)]
    series = analyze(rows)
    assert series[0].budgets[0].regime == RANKING
    rankings = [("domain:math", "domain", {"domain": "math"}, 3), ("block-influence", "block-influence", {}, 3)]
    noisy = ranking_stability(_scores(0.3), rankings, n_resamples=20)
    assert stability_claim(noisy, series).startswith("The claim does not hold")
    exact = ranking_stability(_scores(0.0), rankings[:1], n_resamples=5)
    assert stability_claim(exact, series).startswith("The claim holds")


def test_rankings_that_cannot_be_reranked_are_named():
    from depthprune.report.regimes import ranking_stability
    skipped: list[str] = []
    out = ranking_stability(_scores(0.1), [("angular-block", "angular-block", {}, 3),
                                           ("domain:math", "domain", {"domain": "math"}, 3)],
                            n_resamples=3, skipped=skipped)
    assert [s.label for s in out] == ["domain:math"]
    assert len(skipped) == 1 and skipped[0].startswith("angular-block at k=3:") and "max-span" in skipped[0]
