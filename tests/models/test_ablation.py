"""Single-layer ablation on tiny real models: equal to the pruned model, answers checked before
loading, and `score --ablation` / `diagnose` through the CLI."""

from __future__ import annotations

import copy
import json

import pytest
from typer.testing import CliRunner

from depthprune.cli import app
from depthprune.data.records import DataError, load_records
from depthprune.evaluation.generation import answer_nll
from depthprune.models.loading import load_model
from depthprune.pruning import prune_layers
from depthprune.scoring.ablation import ablation_nll
from depthprune.scoring.scores import Scores
from tests.helpers.scores import scores_with


def test_cli_diagnose_and_error_without_ablation(tmp_path):
    s = scores_with({"math": [0.9, 0.5, 0.7, 0.8], "general": [0.5, 0.9, 0.7, 0.6]},
                    {"math": [0.1, 0.9, 0.3, 0.2], "general": [0.2, 0.1, 0.4, 0.3]})
    path = s.save(tmp_path / "s.json")
    runner = CliRunner()
    result = runner.invoke(app, ["diagnose", str(path), "--out", str(tmp_path / "d.json")])
    assert result.exit_code == 0, result.output
    assert "rho" in result.output and json.loads((tmp_path / "d.json").read_text())["layers"] == [0, 1, 2, 3]
    plain = Scores(model_id="m", num_layers=4, max_span=1, sample_ids=["a"], sample_domains=["math"],
                   sums=s.sums[:1], counts=s.counts[:1]).save(tmp_path / "p.json")
    result = runner.invoke(app, ["diagnose", str(plain)])
    assert result.exit_code == 2 and "score --ablation" in result.output


# ---------------------------------------------------------------------- ablation on a real class
@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    from tests.helpers.tiny_models import save_tiny
    return save_tiny("llama", tmp_path_factory.mktemp("llama") / "m")


def test_ablation_nll_equals_the_pruned_model(tiny_llama, calib_dir):
    model, tok = load_model(tiny_llama, dtype="float32")
    records = load_records(calib_dir / "text.jsonl")
    base, ablated = ablation_nll(model, tok, records, batch_size=3, progress=False)
    assert ablated.shape == (len(records), 6)
    assert base.tolist() == pytest.approx([nll for nll, _ in answer_nll(model, tok, records)], abs=1e-5)
    for layer in (0, 3, 5):
        pruned = prune_layers(copy.deepcopy(model), [layer])
        want = [nll for nll, _ in answer_nll(pruned, tok, records)]
        assert ablated[:, layer].tolist() == pytest.approx(want, abs=1e-5)
    assert len(list(model.model.layers)) == 6  # the model is restored


def test_score_ablation_needs_answers_before_loading(tmp_path, calib_dir):
    from depthprune import api
    rows = [json.loads(line) for line in (calib_dir / "text.jsonl").read_text().splitlines()]
    rows[2].pop("answer")
    data = tmp_path / "noanswer.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match=r"noanswer.jsonl:3: .*--ablation"):
        api.score(tmp_path / "not-a-model", data, ablation=True)  # fails before the model is looked at


def test_cli_score_ablation_then_rank(tiny_llama, calib_dir, tmp_path):
    runner = CliRunner()
    out = tmp_path / "s.json"
    result = runner.invoke(app, ["score", str(tiny_llama), "--data", str(calib_dir / "text.jsonl"),
                                 "--out", str(out), "--ablation", "--dtype", "float32"])
    assert result.exit_code == 0, result.output
    scores = Scores.load(out)
    assert scores.has_ablation and scores.ablation_nll.shape == (7, 6)
    result = runner.invoke(app, ["rank", str(out), "--method", "ablation", "--domain", "math",
                                 "--budget", "2", "--bootstrap", "10"])
    assert result.exit_code == 0, result.output
    damage = scores.ablation_damage("math")
    want = sorted(sorted(range(6), key=lambda i: (float(damage[i]), i))[:2])
    assert f"remove 2 of 6 layers (0-based): {want[0]}, {want[1]}" in result.output
