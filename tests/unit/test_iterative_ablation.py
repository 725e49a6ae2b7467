"""`iterative` with `base: ablation` is refused up front (bug 4 of issue 15): its re-scoring pass
measures cosines only, so the second step used to fail with a misleading "re-run score --ablation"."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from depthprune.cli import app
from depthprune.ranking.methods import check_request, rank, rescoring
from depthprune.ranking.plan import RankError, RankRequest
from depthprune.scoring.scores import Scores

L, N = 6, 4


def _scores(ablation: bool) -> Scores:
    sums = torch.zeros(N, 2, 4, L, 1, dtype=torch.float64)
    sums[:, 0, :, :, 0] = torch.linspace(0.5, 0.9, L, dtype=torch.float64)
    extra = {"base_nll": torch.ones(N, dtype=torch.float64),
             "ablation_nll": 1 + torch.rand(N, L, generator=torch.Generator().manual_seed(0),
                                            dtype=torch.float64)} if ablation else {}
    return Scores(model_id="t", num_layers=L, max_span=1, sample_ids=[f"s{i}" for i in range(N)],
                  sample_domains=["math", "general"] * (N // 2), sums=sums,
                  counts=torch.ones(N, 4, dtype=torch.int64), **extra)


def test_iterative_with_ablation_base_is_refused_before_any_rescoring():
    with pytest.raises(RankError, match="iterative cannot use base 'ablation'.*--method ablation"):
        check_request(RankRequest("iterative", 2, base="ablation", domain="math"))
    calls = []

    def score_fn(removed: list[int]) -> Scores:  # the model's re-scoring pass: cosines, no ablation
        calls.append(removed)
        return _scores(ablation=False)

    with pytest.raises(RankError, match="iterative cannot use base 'ablation'"):
        rank(_scores(ablation=True), RankRequest("iterative", 2, base="ablation", domain="math"), measured=rescoring(score_fn))
    assert calls == []
    check_request(RankRequest("iterative", 2, base="mixed"))  # the other bases stay allowed
    check_request(RankRequest("spaced", 2, base="ablation", domain="math"))  # spaced reads the damage once


def test_prune_refuses_it_before_the_model_loads(tmp_path):
    data = tmp_path / "data" / "calib.jsonl"  # outputs may not go into the data's folder
    data.parent.mkdir()
    data.write_text('{"id": "a", "domain": "math", "prompt": "1+1?", "answer": "2"}\n')
    res = CliRunner().invoke(app, ["prune", "toy", "--method", "iterative", "--base", "ablation", "--domain", "math",
                                   "--budget", "1", "--data", str(data), "--out", str(tmp_path / "out")])
    assert res.exit_code == 2, res.output
    assert "iterative cannot use base 'ablation'" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "out").exists()
