"""Which signal predicts which domain's damage: rank correlations, the ablation and contrast
ranking methods, and the diagnosis, on synthetic scores with known damage."""

from __future__ import annotations

import json

import pytest
import torch

from depthprune.ranking.methods import rank
from depthprune.ranking.plan import RankError, RankRequest
from depthprune.scoring.scores import Scores, ScoresError
from depthprune.scoring.signals import diagnose, rankdata, spearman
from tests.helpers.scores import scores_with


# ---------------------------------------------------------------------- rank correlation
def test_rankdata_averages_ties_and_spearman_matches_hand_values():
    assert rankdata(torch.tensor([10.0, 20.0, 20.0, 5.0])).tolist() == [2.0, 3.5, 3.5, 1.0]
    # scipy.stats.spearmanr([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]) = 0.8207826816681233
    assert spearman(torch.tensor([1.0, 2, 3, 4, 5]), torch.tensor([5.0, 6, 7, 8, 7])) == pytest.approx(0.8207826816681233)
    assert spearman(torch.tensor([1.0, 2, 3]), torch.tensor([3.0, 2, 1])) == pytest.approx(-1.0)
    assert spearman(torch.tensor([1.0, 1, 1]), torch.tensor([3.0, 2, 1])) is None


# ---------------------------------------------------------------------- Scores with ablation
def test_scores_ablation_round_trip_merge_select(tmp_path):
    s = scores_with({"math": [0.9, 0.5, 0.7], "general": [0.6, 0.8, 0.95]},
                    {"math": [0.1, 0.9, 0.3], "general": [0.5, 0.2, 0.05]})
    assert s.ablation_damage("math").tolist() == pytest.approx([0.1, 0.9, 0.3])
    path = s.save(tmp_path / "s.json")
    back = Scores.load(path)
    assert back.fingerprint() == s.fingerprint()
    assert torch.equal(back.ablation_nll, s.ablation_nll) and torch.equal(back.base_nll, s.base_nll)
    assert json.loads(path.read_text())["ablation_damage"]["general"] == pytest.approx([0.5, 0.2, 0.05])
    merged = Scores.merge([s, s])
    assert merged.ablation_nll.shape == (8, 3)
    assert merged.select(torch.tensor([0, 0])).ablation_damage().tolist() == pytest.approx([0.1, 0.9, 0.3])
    plain = Scores(model_id="m", num_layers=3, max_span=1, sample_ids=["a"], sample_domains=["math"],
                   sums=s.sums[:1], counts=s.counts[:1])
    with pytest.raises(ScoresError, match="with and without ablation"):
        Scores.merge([s, plain])
    with pytest.raises(ScoresError, match="score --ablation"):
        plain.ablation_damage()
    back_plain = Scores.load(plain.save(tmp_path / "p.json"))  # files without ablation still load
    assert not back_plain.has_ablation


# ---------------------------------------------------------------------- ablation method
def test_ablation_method_per_domain_and_weighted():
    s = scores_with({"math": [0.9] * 5, "general": [0.9] * 5},
                    {"math": [0.5, 0.01, 0.3, 0.02, 0.9], "general": [0.04, 0.6, 0.03, 0.5, 0.2]},
                    protected=[0])
    assert rank(s, RankRequest("ablation", 2, domain="math")).remove == [1, 3]
    assert rank(s, RankRequest("ablation", 2, domain="general")).remove == [2, 4]  # 0 is protected
    # weighted: general 3x math -> 0.25*m + 0.75*g = [.., .4525, .0975, .38, .6]
    assert rank(s, RankRequest("ablation", 1, weights={"math": 1, "general": 3})).remove == [2]
    assert rank(s, RankRequest("spaced", 2, base="ablation", domain="math")).remove == [1, 3]
    plain = Scores(model_id="m", num_layers=5, max_span=1, sample_ids=["a"], sample_domains=["math"],
                   sums=s.sums[:1], counts=s.counts[:1])
    with pytest.raises(RankError, match="score --ablation"):
        rank(plain, RankRequest("ablation", 1, domain="math"))
    with pytest.raises(RankError, match="not in the scores"):
        rank(s, RankRequest("ablation", 1, domain="code"))


# ---------------------------------------------------------------------- diagnosis
def test_diagnose_finds_the_signal_that_predicts_damage():
    # math's cosine orders layers exactly as math's damage; general's is reversed
    s = scores_with({"math": [0.9, 0.5, 0.7, 0.95, 0.6], "general": [0.6, 0.9, 0.7, 0.5, 0.8]},
                    {"math": [0.1, 0.9, 0.3, 0.05, 0.6], "general": [0.2, 0.2, 0.2, 0.3, 0.1]},
                    protected=[])
    result = diagnose(s)
    rows = {(r["group"], r["signal"]): r for r in result["signals"]}
    assert rows[("all", "cos[math]")]["rho"]["math"] == pytest.approx(1.0)
    assert rows[("all", "cos[general]")]["rho"]["math"] == pytest.approx(-1.0)
    assert ("all", "contrast[math]") in rows and ("image", "cos[math]") not in rows  # no image tokens
    assert result["damage"]["math"] == pytest.approx([0.1, 0.9, 0.3, 0.05, 0.6])
    assert diagnose(s, layers=[1, 2, 3])["layers"] == [1, 2, 3]


def test_contrast_prefers_layers_the_other_domain_uses():
    # math's cosine ties layers 1 and 3; general transforms its tokens in layer 3 (low
    # cosine) but not in layer 1, so math-aware contrast removes 3: redundant for math AND
    # used by general; plain `domain` takes the lower layer of the tie
    s = scores_with({"math": [0.5, 0.9, 0.6, 0.9, 0.7], "general": [0.6, 0.95, 0.7, 0.5, 0.8]},
                    {"math": [0.0] * 5, "general": [0.0] * 5})
    assert rank(s, RankRequest("contrast", 1, domain="math")).remove == [3]
    assert rank(s, RankRequest("domain", 1, domain="math")).remove == [1]  # tie -> lower layer
    assert rank(s, RankRequest("contrast", 1, domain="general")).remove == [1]
    single = scores_with({"math": [0.5, 0.9, 0.6]}, {"math": [0.0] * 3})
    with pytest.raises(RankError, match="at least two domains"):
        rank(single, RankRequest("contrast", 1, domain="math"))
