"""The method spec is the one definition of a ranking method: a method registered in one place
ranks, is listed by `rank --help` and `prune --help`, has its row in docs/methods.md's table and
its family in the report's regime rule."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from depthprune.cli import app
from depthprune.ranking.families import STRUCTURE_AWARE, family, target_domain
from depthprune.ranking.methods import METHODS, method_help, methods_table, rank, register
from depthprune.ranking.plan import RankError, RankRequest, Selection
from depthprune.ranking.registry import REGISTRY, MethodSpec
from depthprune.ranking.stability import ranking_stability
from depthprune.reporting.regimes import rule
from tests.helpers.scores import scores_with

DOCS = Path(__file__).resolve().parents[2] / "docs" / "methods.md"


@pytest.fixture
def every_other():
    """A structure-aware method registered the way a contributor would, removed afterwards."""
    @register("every-other", family=STRUCTURE_AWARE, reads=("token_group",), source="a test",
              removes="every second removable layer, from the one with the highest cosine")
    def _every_other(scores, k, candidates, req) -> Selection:
        cos = scores.mean("cos", req.token_group, None, 1)
        start = max(range(len(candidates)), key=lambda i: (float(cos[candidates[i]]), -i))
        chosen = [candidates[(start + 2 * j) % len(candidates)] for j in range(k)]
        return Selection(sorted(set(chosen)), {i: "every other" for i in chosen})
    yield "every-other"
    REGISTRY.pop("every-other")


def _plain(text: str) -> str:
    """Help text without the rich box drawing and line breaks."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())


def test_the_docs_table_is_the_registry():
    assert methods_table() in DOCS.read_text(), "regenerate it: python -m depthprune.ranking.methods"


def test_a_method_registered_in_one_place_ranks_and_is_listed_everywhere(every_other):
    cos = [0.5, 0.9, 0.6, 0.7, 0.95, 0.4, 0.8, 0.3]
    scores = scores_with({"math": cos, "general": cos[::-1]}, {"math": [0.0] * 8, "general": [0.0] * 8})
    plan = rank(scores, RankRequest("every-other", 2))
    assert len(plan.remove) == 2 and plan.method == "every-other" and plan.reasons[plan.remove[0]] == "every other"
    with pytest.raises(RankError, match="does not read --seed"):
        rank(scores, RankRequest("every-other", 2, seed=3))  # its spec's `reads` is the check
    for command in ("rank", "prune"):
        res = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "400"})
        assert res.exit_code == 0 and "spaced, every-other;" in _plain(res.output), res.output
    assert "| `every-other` | every second removable layer" in methods_table()
    assert family("every-other") == STRUCTURE_AWARE and "(angular-block, uniform, spaced, every-other)" in rule()
    stability = ranking_stability(scores, [("every-other", "every-other", {}, 2)], n_resamples=3)
    assert [s.method for s in stability] == ["every-other"]  # it reads scores: it has a stability column


def test_the_spec_says_what_each_built_in_method_needs():
    assert [m for m, s in METHODS.items() if s.needs == "model"] == ["iterative", "sleb"]
    assert [m for m, s in METHODS.items() if not s.reads_scores] == ["last", "uniform", "random", "iterative", "sleb"]
    assert target_domain("contrast", {"domain": "math"}) == "math"
    assert target_domain("spaced", {"domain": "math"}) is None  # its default base is mixed
    assert target_domain("mixed", {"domain": "math"}) is None
    assert "with the model and --data (prune only): iterative" in method_help()
    with pytest.raises(ValueError, match="unknown family"):
        MethodSpec("x", lambda *a: None, family="clever")
