"""`depthprune prune` reports parameters before/after and the expected speed-up, and records
them in pruning.json; the counts match the models actually loaded from disk."""

from __future__ import annotations

import json

import pytest
from transformers import AutoModelForImageTextToText
from typer.testing import CliRunner

from depthprune.cli import app
from depthprune.speed import count_parameters, expected_speedup
from tests.helpers.tiny_models import save_tiny


def test_prune_records_and_prints_expected_speedup(tmp_path):
    src = save_tiny("qwen3_vl", tmp_path / "src")
    res = CliRunner().invoke(app, ["prune", str(src), "--method", "last", "--budget", "2",
                                   "--out", str(tmp_path / "pruned")])
    assert res.exit_code == 0, res.output
    info = json.loads((tmp_path / "pruned" / "pruning.json").read_text())["expected_speedup"]
    before = count_parameters(AutoModelForImageTextToText.from_pretrained(src))
    after = count_parameters(AutoModelForImageTextToText.from_pretrained(tmp_path / "pruned"))
    n = json.loads((tmp_path / "pruned" / "pruning.json").read_text())["original_num_layers"]
    assert (info["parameters_before"], info["parameters_after"]) == (before, after)
    assert info["decoder_ideal"] == round(n / (n - 2), 4)
    assert info["parameter_ratio"] == round(before / after, 4)
    # the embeddings, head and vision tower stay: the whole model shrinks less than the decoder
    assert 1 < info["parameter_ratio"] < info["decoder_ideal"]
    assert "expected speed-up" in res.output and f"{info['decoder_ideal']:.3f}x" in res.output


def test_expected_speedup_refuses_impossible_budgets():
    with pytest.raises(ValueError, match="cannot remove 4 of 4"):
        expected_speedup(4, 4, 10, 1)
