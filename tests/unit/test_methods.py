"""Ranking methods on hand-built Scores whose right answer can be checked by hand."""

from __future__ import annotations

import io
import itertools
import math
import random

import pytest
import torch
from rich.console import Console

from depthprune.cli_output import plan_table
from depthprune.ranking.methods import METHODS, best_spaced, iterative_selection, rank, rescoring
from depthprune.ranking.plan import Plan, RankError, RankRequest, parse_weights, resolve_budget
from depthprune.ranking.protection import Protection
from depthprune.scoring.scores import GROUPS, STATS, Scores, angular_distance

L, SPAN = 8, 4
ALL, LAST = GROUPS.index("all"), GROUPS.index("last")
COS, ANGLE = STATS.index("cos"), STATS.index("angle")


def make_scores(cos: list[list[float]], domains: list[str], tokens: list[int] | None = None,
                last_angle: dict[tuple[int, int], list[float]] | None = None,
                protected: list[int] | None = None) -> Scores:
    """Scores whose span-1 "all"-token mean cosine of sample s at layer l is ``cos[s][l]``.

    Every sample has ``tokens[s]`` tokens (sums = mean * count) and one last token.
    ``last_angle[(l, n)]`` = per-sample last-token angle of the block of n layers at l
    (the last-token cosine is filled consistently, cos(pi * angle)); other blocks get 0.9.
    """
    n = len(cos)
    tokens = tokens or [4] * n
    num_layers = len(cos[0])
    sums = torch.zeros(n, len(STATS), len(GROUPS), num_layers, SPAN, dtype=torch.float64)
    counts = torch.zeros(n, len(GROUPS), dtype=torch.int64)
    counts[:, ALL] = torch.tensor(tokens)
    counts[:, LAST] = 1
    sums[:, COS, ALL, :, 0] = torch.tensor(cos, dtype=torch.float64) * counts[:, ALL, None]
    sums[:, ANGLE, LAST] = 0.9
    for (layer, span), angles in (last_angle or {}).items():
        sums[:, ANGLE, LAST, layer, span - 1] = torch.tensor(angles, dtype=torch.float64)
    sums[:, COS, LAST] = torch.cos(math.pi * sums[:, ANGLE, LAST])
    return Scores(model_id="toy", num_layers=num_layers, max_span=SPAN, sample_ids=[f"s{i}" for i in range(n)],
                  sample_domains=domains, sums=sums, counts=counts, protected_layers=protected or [])


def flat(values: list[float], n: int = 2, domains: list[str] | None = None) -> Scores:
    """n identical samples with per-layer cosine ``values``."""
    return make_scores([values] * n, domains or ["math", "general"] * (n // 2))


# ---------------------------------------------------------------------- budget / protection
def test_resolve_budget():
    assert resolve_budget(0.25, 16) == 4
    assert resolve_budget("0.25", 16) == 4
    assert resolve_budget("4", 16) == 4 and resolve_budget(4, 16) == 4 and resolve_budget(4.0, 16) == 4
    assert resolve_budget(0.1, 28) == 3      # 2.8 rounds to nearest
    assert resolve_budget(0.125, 28) == 4    # 3.5 rounds half up
    assert resolve_budget(0.01, 16) == 1     # at least one layer
    for bad, why in [(0, "positive"), (-2, "positive"), (-0.5, "positive"), (1.5, "neither"),
                     (1.0, "ambiguous"), (16, "leaving none"), ("abc", "not a number"), (True, "type")]:
        with pytest.raises(RankError, match=why):
            resolve_budget(bad, 16)


def test_protected_layers_and_deepstack_warning():
    req = RankRequest("last", 1, protect_first=1, protect_last=2)
    assert Protection.from_request(req).layers(8, [0, 1, 2]) == [0, 1, 2, 6, 7]
    with pytest.warns(UserWarning, match="visual features are injected"):
        assert Protection.from_request(RankRequest("last", 1, allow_deepstack=True)).layers(8, [0, 1, 2]) == []


def test_protected_layers_never_removed_and_budget_error():
    cos = [0.99, 0.98, 0.97, 0.1, 0.2, 0.3, 0.4, 0.5]  # the protected layers look most redundant
    scores = make_scores([cos, cos], ["math", "general"], protected=[0, 1, 2])
    assert rank(scores, RankRequest("domain", 2, domain="math")).remove == [6, 7]
    with pytest.raises(RankError, match=r"only 5 of 8 are removable.*\[0, 1, 2\].*--allow-deepstack"):
        rank(scores, RankRequest("domain", 6, domain="math"))
    with pytest.warns(UserWarning, match="deepstack"):
        assert rank(scores, RankRequest("domain", 2, domain="math", allow_deepstack=True)).remove == [0, 1]


# ---------------------------------------------------------------------- published baselines
def test_domain_math_and_general_choose_different_layers():
    math_cos = [0.1, 0.9, 0.8, 0.2, 0.2, 0.2, 0.2, 0.2]
    general_cos = [0.1, 0.2, 0.2, 0.2, 0.2, 0.95, 0.85, 0.2]
    scores = make_scores([math_cos, general_cos], ["math", "general"])
    assert rank(scores, RankRequest("domain", 2, domain="math")).remove == [1, 2]
    assert rank(scores, RankRequest("domain", 2, domain="general")).remove == [5, 6]
    with pytest.raises(RankError, match="'code' is not in the scores; present: general, math"):
        rank(scores, RankRequest("domain", 2, domain="code"))
    with pytest.raises(RankError, match="needs --domain"):
        rank(scores, RankRequest("domain", 2))


def test_block_influence_is_pooled_token_weighted():
    math_cos = [0.2, 0.2, 0.2, 0.9, 0.2, 0.7, 0.2, 0.2]     # 10 tokens
    general_cos = [0.2, 0.2, 0.2, 0.1, 0.2, 0.95, 0.2, 0.2]  # 1 token
    scores = make_scores([math_cos, general_cos], ["math", "general"], tokens=[10, 1])
    plan = rank(scores, RankRequest("block-influence", 1))
    # pooled: layer 3 = (9 + 0.1)/11 = 0.827 > layer 5 = (7 + 0.95)/11 = 0.723;
    # the average of domain means would prefer layer 5 (0.825 vs 0.5).
    assert plan.remove == [3]
    assert plan.columns["BI"][3] == pytest.approx(1 - 9.1 / 11)
    assert plan.columns["BI"][5] == pytest.approx(1 - 7.95 / 11)


def test_angular_block_uses_mean_of_sample_angles_on_last_token():
    # block 1..2: angles 0 and 0.5 -> mean 0.25, but arccos(mean cos = 0.5)/pi = 1/3;
    # block 4..5: angles 0.3 and 0.3 -> 0.3 either way.
    scores = make_scores([[0.5] * L] * 2, ["math", "general"], last_angle={(1, 2): [0.0, 0.5], (4, 2): [0.3, 0.3]})
    scores.sums[:, ANGLE, ALL, :, 1] = 0.9 * 4
    scores.sums[:, ANGLE, ALL, 6, 1] = 0.0  # "all" tokens would pick block 6..7: must be ignored
    assert int(angular_distance(scores.mean("cos", "last", None, 2)).argmin()) == 4  # the wrong definition
    plan = rank(scores, RankRequest("angular-block", 2, token_group="all"))
    assert plan.remove == [1, 2]
    assert plan.columns["angle[span 2]"][1] == pytest.approx(0.25)
    assert plan.columns["angle[span 2]"][7] is None  # no block of 2 starts at the last layer
    assert rank(scores, RankRequest("angular-block", 2, protect_first=2)).remove == [4, 5]
    with pytest.raises(RankError, match="--max-span 5"):
        rank(scores, RankRequest("angular-block", 5))
    gappy = make_scores([[0.5] * L] * 2, ["math", "general"], protected=[1, 3, 5])
    with pytest.raises(RankError, match="no run of 3 consecutive"):
        rank(gappy, RankRequest("angular-block", 3))


def test_last_uniform_random_are_deterministic():
    scores = flat([0.5] * L)
    assert rank(scores, RankRequest("last", 2)).remove == [5, 6]  # the final layer 7 is kept
    with pytest.raises(RankError, match="besides the final one"):
        rank(make_scores([[0.5] * L] * 2, ["m", "g"], protected=[0, 1]), RankRequest("last", 6))
    sixteen = flat([0.5] * 16)
    assert rank(sixteen, RankRequest("uniform", 4)).remove == [2, 6, 10, 14]
    protected = make_scores([[0.5] * L] * 2, ["m", "g"], protected=[0, 1, 2])  # candidates 3..7
    assert rank(protected, RankRequest("uniform", 2)).remove == [4, 6]
    first = rank(sixteen, RankRequest("random", 5, seed=3)).remove
    assert first == rank(sixteen, RankRequest("random", 5, seed=3)).remove
    assert first == sorted(random.Random(3).sample(list(range(16)), 5))


def test_unknown_method_lists_methods():
    with pytest.raises(RankError, match="block-influence"):
        rank(flat([0.5] * L), RankRequest("shortgpt", 1))


# ---------------------------------------------------------------------- mixed
def test_mixed_standardises_each_domain_and_normalises_weights():
    # math cosines vary a lot, general barely: a raw average would follow math (layer 1),
    # z-scores give general's favourite (layer 6) an equal say.
    math_cos = [0.0, 0.9, 0.5, 0.0, 0.0, 0.0, 0.6, 0.0]
    general_cos = [0.90, 0.90, 0.90, 0.90, 0.90, 0.90, 0.93, 0.90]
    scores = make_scores([math_cos, general_cos], ["math", "general"])
    plan = rank(scores, RankRequest("mixed", 1))
    assert plan.remove == [6]
    zm = (torch.tensor(math_cos, dtype=torch.float64) - sum(math_cos) / L)
    zm = zm / zm.pow(2).mean().sqrt()
    zg = torch.tensor(general_cos, dtype=torch.float64) - sum(general_cos) / L
    zg = zg / zg.pow(2).mean().sqrt()
    assert plan.columns["z[mixed]"] == pytest.approx((0.5 * zm + 0.5 * zg).tolist())
    same = rank(scores, RankRequest("mixed", 1, weights={"math": 2, "general": 2}))
    assert same.columns["z[mixed]"] == plan.columns["z[mixed]"]
    math_only = RankRequest("mixed", 2, weights={"math": 1, "general": 0})
    assert rank(scores, math_only).remove == rank(scores, RankRequest("domain", 2, domain="math")).remove
    for weights, why in [({"code": 1}, "not in the scores"), ({"math": -1}, ">= 0"),
                         ({"math": 0, "general": 0}, "all zero")]:
        with pytest.raises(RankError, match=why):
            rank(scores, RankRequest("mixed", 1, weights=weights))


def test_parse_weights():
    assert parse_weights("math=0.5, general=1.5") == {"math": 0.5, "general": 1.5}
    for bad, why in [("", "empty"), ("math", "domain=weight"), ("math=x", "not a number"),
                     ("math=-1", ">= 0"), ("math=1,math=2", "twice")]:
        with pytest.raises(RankError, match=why):
            parse_weights(bad)


# ---------------------------------------------------------------------- spacing
def brute_force(values: dict[int, float], k: int) -> float:
    best = -math.inf
    for combo in itertools.combinations(sorted(values), k):
        if all(b - a > 1 for a, b in zip(combo, combo[1:])):
            best = max(best, sum(values[i] for i in combo))
    return best


def test_spaced_is_optimal_and_never_adjacent():
    rng = random.Random(0)
    for _ in range(300):
        layers = sorted(rng.sample(range(12), rng.randint(3, 10)))
        values = {i: rng.gauss(0, 1) for i in layers}
        k = rng.randint(1, 4)
        best = brute_force(values, k)
        if best == -math.inf:
            with pytest.raises(RankError, match="two neighbours"):
                best_spaced(values, k)
            continue
        chosen = best_spaced(values, k)
        assert len(chosen) == k and all(b - a > 1 for a, b in zip(chosen, chosen[1:]))
        assert sum(values[i] for i in chosen) == pytest.approx(best)


def test_spaced_via_rank():
    cos = [0.1, 0.9, 0.95, 0.92, 0.2, 0.2, 0.2, 0.2]  # greedy would take the adjacent 1, 2, 3
    scores = make_scores([cos, cos], ["math", "general"])
    plan = rank(scores, RankRequest("spaced", 2, base="block-influence"))
    assert plan.remove == [1, 3]
    assert rank(scores, RankRequest("spaced", 2, base="domain", domain="math")).remove == [1, 3]
    with pytest.raises(RankError, match="at most 4"):
        rank(scores, RankRequest("spaced", 5))


# ---------------------------------------------------------------------- iterative
def test_iterative_selection_rescores_after_each_removal():
    base = [0.1, 0.2, 0.3, 0.9, 0.89, 0.2, 0.8, 0.1]
    calls = []

    def score_fn(removed: list[int]) -> Scores:
        calls.append(removed)
        # Removing a layer makes its next surviving neighbour essential (cosine drops).
        cos = {i: base[i] for i in range(L) if i not in removed}
        for r in removed:
            nxt = [i for i in cos if i > r]
            if nxt:
                cos[nxt[0]] = 0.0
        values = list(cos.values())
        return make_scores([values, values], ["math", "general"])

    req = RankRequest("iterative", 2, base="domain", domain="math")
    sel = iterative_selection(score_fn, L, 2, list(range(L)), req)
    assert sel.remove == [3, 6] and calls == [[], [3]]  # a static top-2 would take 3 and 4
    calls.clear()
    plan = rank(score_fn([]), req, measured=rescoring(score_fn))
    assert plan.remove == [3, 6] and calls == [[], [3]]  # rank reuses the given scores for step 0
    with pytest.raises(RankError, match="depthprune prune MODEL --data"):
        rank(score_fn([]), req)
    assert "iterative" in METHODS


# ---------------------------------------------------------------------- plan files
def test_plan_round_trip_and_reproducibility(tmp_path):
    scores = make_scores([[0.1, 0.9, 0.5, 0.3, 0.2, 0.8, 0.4, 0.2], [0.2, 0.3, 0.7, 0.9, 0.1, 0.6, 0.2, 0.3]],
                         ["math", "general"], protected=[0])
    req = RankRequest("mixed", "0.25", weights={"math": 0.7, "general": 0.3})
    plan = rank(scores, req)
    assert plan == rank(scores, req) and plan.budget == 2
    plan.save(tmp_path / "plan.json")
    assert Plan.load(tmp_path / "plan.json") == plan
    reloaded = Scores.load(scores.save(tmp_path / "scores.json"))
    assert rank(reloaded, req) == plan
    assert plan.scores_fingerprint == scores.fingerprint() and plan.scores_model_id == "toy"


def test_plan_table():
    scores = make_scores([[0.1, 0.9, 0.5, 0.3, 0.2, 0.8, 0.4, 0.2]] * 2, ["math", "general"], protected=[0])
    plan = rank(scores, RankRequest("domain", 1, domain="math"))
    out = io.StringIO()
    Console(file=out, width=200).print(plan_table(plan))
    text = out.getvalue()
    assert "domain: remove 1 of 8" in text and "0-based" in text
    assert "protected" in text and "cos[math]" in text and "cos[math]=0.9000, rank 1 of 7" in text
