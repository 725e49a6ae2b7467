"""End to end on the bundled toy Qwen3-VL: score the calib split, prune 25% math-aware and
general-aware, evaluate the original and both pruned models on both domains."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from depthprune.cli import app


@pytest.mark.slow
def test_demo_domain_aware_pruning_on_toy(tmp_path):
    from depthprune.toy import MODEL_DIR
    if not (MODEL_DIR / "model.safetensors").is_file():
        pytest.fail(f"bundled toy weights missing in {MODEL_DIR}; run python -m depthprune.toy.train")
    res = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "demo")])
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert set(summary) == {"original", "math-aware", "general-aware"}
    original = summary["original"]["domains"]
    assert original["general"]["accuracy"] >= 0.90 and original["math"]["accuracy"] >= 0.80
    n_layers = json.loads((tmp_path / "demo" / "pruned-math-aware" / "pruning.json").read_text())
    assert n_layers["budget"] == round(0.25 * n_layers["original_num_layers"])
    for name in ("math-aware", "general-aware"):
        removed = summary[name]["removed_layers"]
        assert removed and not set(removed) & {0, 1, 2}  # deepstack layers protected
        for domain in ("math", "general"):
            assert summary[name]["domains"][domain]["n"] == original[domain]["n"]
    # the four numbers of the study, printed for the record
    print(json.dumps({name: {d: summary[name]["domains"][d]["accuracy"] for d in ("math", "general")}
                      for name in summary}))
