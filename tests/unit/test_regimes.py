"""The regime rule on hand-built rows whose answer is known, and on simulated studies with known truth."""

from __future__ import annotations

import json
import zlib
from itertools import combinations

import numpy as np
import pytest

from depthprune.ranking.families import RANKINGS, REFERENCES, STRUCTURE_AWARE, family, target_domain
from depthprune.reporting.regimes import CONVERGED, RANKING, STRUCTURE, analyze, regimes_json
from depthprune.reporting.simulate import BUDGETS, METHODS, Scenario, outcome, simulate_study
from depthprune.statistics import spread_test
from depthprune.study.store import ResultRow

N = 120


def _row(label: str, method: str, budget: int, correct: list[int] | None, nll: list[float] | None = None,
         removed: list[int] | None = None, options: dict | None = None, domain: str = "math") -> ResultRow:
    nll = nll if nll is not None else [1.0 + 0.01 * (i % 7) for i in range(len(correct))]
    samples = [(f"s{i}", None if correct is None else correct[i], nll[i]) for i in range(len(nll))]
    if options is None and ":" in label:  # domain:math -> {"domain": "math"}, as the sweep stores it
        options = {"domain": label.split(":")[1]}
    return ResultRow(cell=f"{label}@{budget}", method=method, label=label, options=options or {}, budget=budget,
                     budget_fraction=budget / 16, removed=removed if removed is not None else [zlib.crc32(label.encode())],
                     heal=None, eval_set="eval", domain=domain, n=len(nll),
                     accuracy=None if correct is None else sum(correct) / len(correct), ci_low=None, ci_high=None,
                     nll=sum(nll) / len(nll), samples=samples, seconds=0.1)


def _first(k: int, n: int = N) -> list[int]:
    """k correct answers out of n, on the first (easiest) samples: methods share sample difficulty."""
    return [1 if i < k else 0 for i in range(n)]


def test_families_and_domain_awareness():
    assert [family(m) for m in ("domain", "contrast", "ablation", "iterative", "sleb", "spaced", "angular-block",
                                "random", "last")] == [RANKINGS] * 5 + [STRUCTURE_AWARE] * 2 + [REFERENCES] * 2
    assert target_domain("domain", {"domain": "math"}) == "math"
    assert target_domain("contrast", {"domain": "math"}) == target_domain("sleb", {"domain": "math"}) == "math"
    assert target_domain("ablation", {}) is None and target_domain("mixed", {"weights": {"math": 1}}) is None
    assert target_domain("spaced", {"base": "domain", "domain": "math"}) == "math"
    assert target_domain("iterative", {"base": "ablation", "domain": "general"}) == "general"
    assert target_domain("spaced", {"domain": "math"}) is None  # base mixed: the domain is not read


def test_three_regimes_found_in_the_papers_order():
    rows = []
    for budget in (1, 2):  # one ranking far ahead of the other rankings
        rows += [_row("domain:math", "domain", budget, _first(100)), _row("mixed", "mixed", budget, _first(60)),
                 _row("block-influence", "block-influence", budget, _first(60)),
                 _row("spaced", "spaced", budget, _first(60)), _row("last", "last", budget, _first(10))]
    for budget in (4, 5):  # identical rankings; a reference far ahead changes nothing
        rows += [_row(lab, m, budget, _first(50)) for lab, m in (("domain:math", "domain"), ("mixed", "mixed"),
                                                                 ("block-influence", "block-influence"), ("spaced", "spaced"))]
        rows.append(_row("random", "random", budget, _first(110)))
    for budget in (7, 8):  # the structure-aware plans beat every ranking
        rows += [_row("domain:math", "domain", budget, _first(20)), _row("mixed", "mixed", budget, _first(22)),
                 _row("block-influence", "block-influence", budget, _first(20)),
                 _row("spaced", "spaced", budget, _first(70)), _row("uniform", "uniform", budget, _first(66))]
    (series,) = analyze(rows)
    assert [b.regime for b in series.budgets] == [RANKING] * 2 + [CONVERGED] * 2 + [STRUCTURE] * 2
    assert [r[0] for r in series.runs] == [RANKING, CONVERGED, STRUCTURE] and series.tests == 12
    assert series.matches_paper and series.verdict.startswith("The paper's three regimes appear in its order")
    low = series.budgets[0]
    assert low.leader.labels == ["domain:math"] and "domain-aware for math" in series.verdict
    assert [(p.a, p.b) for p in low.resolved] == [("domain:math", "block-influence"), ("domain:math", "mixed")]
    x = np.stack([a.values for a in low.rankings], 1)
    assert low.p_rankings == spread_test(x, n_resamples=series.resamples)[3] and low.spread == pytest.approx(40 / N)
    assert series.resamples == 1200 and low.p_rankings == 1 / 1201  # no resample as wide: the smallest p
    assert sorted(series.budgets[2].tied) == ["block-influence", "domain:math", "mixed"]  # identical results
    high = series.budgets[-1]
    assert high.leader.name == "spaced" and high.margin == pytest.approx((70 + 66) / 2 / N - 22 / N)


def test_beating_a_reference_is_not_a_regime():
    """The old rule's failure: a leader that beats only `random`/`last` made a budget ranking-sensitive."""
    rows = [_row("domain:math", "domain", 2, _first(60)), _row("mixed", "mixed", 2, _first(59)),
            _row("random", "random", 2, _first(5)), _row("last", "last", 2, _first(5))]
    (series,) = analyze(rows)
    assert series.budgets[0].regime == CONVERGED and series.verdict.startswith("No regimes")
    assert series.budgets[0].references and not series.budgets[0].resolved


def test_structure_slightly_ahead_is_not_structure_dominated():
    """The old rule's failure: a structure-aware leader 0.5 points ahead made a budget structure-dominated."""
    rows = [_row("domain:math", "domain", 6, _first(60, 400)), _row("spaced", "spaced", 6, _first(62, 400)),
            _row("last", "last", 6, _first(0, 400))]
    (series,) = analyze(rows)
    assert series.budgets[0].regime == CONVERGED and series.budgets[0].p_structure > 0.05


def test_structure_test_is_monotone_at_small_n():
    """Issue 26: at n = 5 the t-test gave p = 0.5^5 to five equal wins of the structure-aware plans but
    about 4e-4 to the weaker [1, 1, 1, 1, 0.5], which alone made that budget structure-dominated."""
    rows = []
    for budget, uniform in ((6, [1, 1, 1, 1, 1]), (7, [1, 1, 1, 1, 0])):
        rows += [_row("domain:math", "domain", budget, [0] * 5), _row("mixed", "mixed", budget, [0] * 5),
                 _row("spaced", "spaced", budget, [1] * 5), _row("uniform", "uniform", budget, uniform)]
    strong, weak = analyze(rows)[0].budgets
    assert strong.p_structure == pytest.approx(1 / 32) and weak.p_structure >= strong.p_structure
    assert strong.regime == weak.regime == CONVERGED


def test_rankings_differ_holds_its_size_when_plans_answer_alike():
    """Issue 26: plans that share most of their layers answer alike, so they are not exchangeable within
    a record. Here two groups of five near-identical plans, all of equal accuracy: Cochran's Q labelled
    46 of these 300 budgets ranking-sensitive (15%, the old code); the bootstrap over records 17 (5.7%)."""
    gen, labelled, reps = np.random.default_rng(0), 0, 300
    names = [("domain:math", "domain"), ("domain:general", "domain"), ("contrast:math", "contrast"),
             ("contrast:general", "contrast"), ("ablation:math", "ablation"), ("ablation:general", "ablation"),
             ("mixed", "mixed"), ("block-influence", "block-influence"), ("iterative", "iterative"), ("sleb", "sleb")]
    for _ in range(reps):
        shared, group = gen.normal(size=(200, 1)), gen.normal(size=(200, 2))
        alike = np.sqrt(0.99) * np.repeat(group, 5, 1) + np.sqrt(0.01) * gen.normal(size=(200, 10))
        z = 0.5 * shared + np.sqrt(0.75) * alike
        rows = [_row(lab, m, 3, list((z[:, j] > 0).astype(int))) for j, (lab, m) in enumerate(names)]
        labelled += analyze(rows)[0].budgets[0].regime == RANKING
    assert labelled / reps <= 0.09


def test_identical_plans_count_once():
    """Variants with the same removed layers are one model: they neither inflate the omnibus test nor
    tie with themselves; their labels are listed together."""
    a, b = _first(70), _first(50)
    rows = [_row("domain:math", "domain", 2, a, removed=[5, 9]), _row("ablation:math", "ablation", 2, a, removed=[5, 9]),
            _row("contrast:math", "contrast", 2, a, removed=[5, 9]), _row("mixed", "mixed", 2, b, removed=[4, 9])]
    (series,) = analyze(rows)
    bs = series.budgets[0]
    assert [arm.labels for arm in bs.rankings] == [["ablation:math", "contrast:math", "domain:math"], ["mixed"]]
    assert bs.leader.name == "ablation:math = contrast:math = domain:math"
    assert bs.p_rankings == spread_test(np.stack([np.array(a), np.array(b)], 1), n_resamples=1000)[3]


def test_one_ranking_method_has_no_spread():
    """A spread needs two rankings: one score-based method alone read "spread 0.0 (CI 0.0 to 0.0)"."""
    rows = [_row("domain:math", "domain", 2, _first(70)), _row("spaced", "spaced", 2, _first(60)),
            _row("last", "last", 2, _first(10))]
    (series,) = analyze(rows)
    assert series.budgets[0].spread is None and series.budgets[0].spread_ci is None
    assert "spread" not in series.verdict
    same = analyze(rows + [_row("mixed", "mixed", 2, _first(70), removed=rows[0].removed)])[0].budgets[0]
    assert same.spread == 0.0 and same.spread_ci == (0.0, 0.0)  # two rankings, one plan: a real zero


def test_exact_ties_are_listed_not_broken():
    a = _first(70)
    b = a[::-1]  # as many correct, on other samples, same NLL
    rows = [_row("zeta", "domain", 2, a, removed=[3]), _row("alpha", "mixed", 2, b, removed=[4]),
            _row("beta", "mixed", 2, _first(10), removed=[5])]
    bs = analyze(rows)[0].budgets[0]
    assert sorted(bs.tied) == ["alpha", "zeta"]


def test_nll_fallback_is_a_rank_test_that_cannot_be_sure_at_n3():
    """The old fallback returned p = 0.001 whenever the paired differences shared a sign, even at n = 3."""
    rows = [_row("domain:math", "domain", 2, None, nll=[1.0, 1.1, 1.2]),
            _row("mixed", "mixed", 2, None, nll=[2.0, 2.1, 2.2])]
    bs = analyze(rows)[0].budgets[0]
    assert bs.metric == "nll" and bs.p_rankings == pytest.approx(0.25)  # exact signed-rank, two-sided
    assert bs.regime == CONVERGED and bs.leader.labels == ["domain:math"]
    gen = np.random.default_rng(0)
    shared = gen.normal(size=200)
    rows = [_row("domain:math", "domain", 2, None, nll=list(1.0 + shared + 0.3 * gen.normal(size=200))),
            _row("mixed", "mixed", 2, None, nll=list(1.3 + shared + 0.3 * gen.normal(size=200))),
            _row("block-influence", "block-influence", 2, None, nll=list(1.3 + shared + 0.3 * gen.normal(size=200)))]
    bs = analyze(rows)[0].budgets[0]
    assert bs.regime == RANKING and bs.spread == pytest.approx(0.3, abs=0.1)
    assert {p.b for p in bs.resolved} == {"mixed", "block-influence"} and bs.leader.labels == ["domain:math"]


def test_error_control_spans_every_series():
    """Holm runs over both tests of every budget of every series; a weak effect that would pass alone
    at one budget does not survive a family of many tests."""
    weak = [_row("domain:math", "domain", 2, _first(67)), _row("mixed", "mixed", 2, _first(60))]
    (alone,) = analyze(weak)
    assert alone.budgets[0].regime == RANKING and alone.tests == 1
    many = weak + [_row(lab, m, b, _first(60), domain=d) for d in ("math", "general") for b in range(3, 9)
                   for lab, m in (("domain:math", "domain"), ("mixed", "mixed"), ("spaced", "spaced"))]
    series = analyze(many)
    assert series[0].tests == 25 and {b.regime for s in series for b in s.budgets} == {CONVERGED}


def test_regimes_json_has_the_issue_format():
    rows = [_row("domain:math", "domain", 2, _first(100)), _row("mixed", "mixed", 2, _first(60)),
            _row("spaced", "spaced", 2, _first(60))]
    data = json.loads(json.dumps(regimes_json(analyze(rows)), allow_nan=False))
    (series,) = data["series"]
    assert {"eval_set": "eval", "domain": "math", "healed": False}.items() <= series.items()
    (b,) = series["budgets"]
    assert b["budget"] == 2 and b["label"] == RANKING and b["leader"] == "domain:math"
    assert b["spread"] == pytest.approx(40 / N) and len(b["spread_ci"]) == 2
    assert b["spread_ci"][0] <= b["spread"] <= b["spread_ci"][1] and 0 <= b["p"] < 0.05
    assert b["ranking_pairs_resolved"][0]["better"] == "domain:math"


def test_simulated_studies_have_the_shape_of_a_sweep():
    rows = simulate_study(Scenario(), 20, np.random.default_rng(0))
    assert len(rows) == 2 * len(BUDGETS) * len(METHODS) and len(METHODS) == 18
    assert sum(family(m) == RANKINGS for m, _ in METHODS) == 13
    one = {(r.budget, r.domain): set() for r in rows}
    for r in rows:
        one[(r.budget, r.domain)].add(tuple(r.removed))
        assert len(r.removed) == r.budget and min(r.removed) >= 3 and len(r.samples) == 20
    assert all(len(plans) == len(METHODS) for plans in one.values())  # no two methods share a plan


def test_overlapping_plans_answer_as_the_layers_they_share():
    """The realistic simulator: plans nest across budgets, identical removed sets answer identically,
    plans sharing more layers disagree less (the latent correlation c0 + lam * shared), and every
    plan's accuracy is the planted one."""
    from depthprune.reporting.simulate import OVERLAPS, base_accuracy
    rows = simulate_study(Scenario(overlap="demo"), 3000, np.random.default_rng(2))
    math = [r for r in rows if r.domain == "math" and family(r.method) == RANKINGS]
    by_label = {(r.label, r.budget): set(r.removed) for r in math}
    assert all(by_label[(lab, 4)] <= by_label[(lab, 9)] for lab, b in by_label if b == 4)  # rankings nest
    sets: dict[tuple, list] = {}
    for r in math:
        sets.setdefault((r.budget, tuple(r.removed)), []).append([s[1] for s in r.samples])
    assert any(len(v) > 1 for v in sets.values()) and all(all(x == v[0] for x in v) for v in sets.values())
    shared, disagree = [], []
    for (b, a), (b2, c) in combinations(sets, 2):
        if b == b2 == 9:
            shared.append(len(set(a) & set(c)) / b)
            disagree.append(np.mean(np.array(sets[(b, a)][0]) != np.array(sets[(b2, c)][0])))
    assert np.corrcoef(shared, disagree)[0, 1] < -0.5 and OVERLAPS["demo"].lam > 0
    for r in math:
        assert abs(r.accuracy - base_accuracy(r.budget)) < 0.06


@pytest.mark.parametrize("scenario", [Scenario("null"), Scenario("ranking"), Scenario("structure", budget=16),
                                      Scenario("null", overlap="demo"), Scenario("ranking", overlap="demo"),
                                      Scenario("structure", budget=16, overlap="heavy")])
def test_simulated_truth_is_recovered(scenario):
    """A few studies per scenario at n = 600 (the size/power table, with hundreds of studies, comes
    from `python -m depthprune.reporting.simulate`): the global null stays converged, planted effects are found."""
    rng = np.random.default_rng(1)
    results = [outcome(scenario, simulate_study(scenario, 600, rng), resamples=100) for _ in range(3)]
    if scenario.kind == "null":
        assert not any(r["any_label"] for r in results)
    else:
        assert sum(r["hit"] for r in results) >= 2 and not any(r["elsewhere"] for r in results)


@pytest.mark.parametrize("labels, fails", [(True, True), (False, False)])
def test_small_simulation_checks_its_own_output(monkeypatch, capsys, labels, fails):
    """CI runs `simulate --small`; it could only fail on a crash. Now a rule that labels every null
    study (and finds no planted effect) exits 1, naming the rows; a rule that is right exits 0."""
    from depthprune.reporting import simulate
    monkeypatch.setattr(simulate, "simulate_study", lambda *a, **k: [])
    monkeypatch.setattr(simulate, "outcome", lambda scenario, rows, resamples=1000: {
        "any_label": labels, "hit": not labels, "elsewhere": False})
    if fails:
        with pytest.raises(SystemExit) as exit_:
            simulate.main(["--small"])
        assert exit_.value.code == 1 and "null: all methods equal, demo, n=100: 50 of 50" in capsys.readouterr().err
    else:
        simulate.main(["--small"])
        assert "| null: all methods equal | demo | accuracy | 100 | 50 |" in capsys.readouterr().out

